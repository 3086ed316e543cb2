"""robot_pace: each chat robot's pace, shared by the hub workers that send to it
(hub/alerting/notify/shared_pace.py, docs/alerting-internals.md).

One row per robot (the opaque key of hub/alerting/notify/pacing.robot_key, never
the address): the attempts answered in the last window (JSON list of ms), the
attempts in flight (JSON {token: until ms}), until when the robot refused us for
speed, and how many times it did. Workers read and change it under a row lock.
Empty at first; a worker starting fills it from the deliveries of the last minute.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "robot_pace",
        sa.Column("robot", sa.String(40), primary_key=True),
        sa.Column("stamps", sa.Text, nullable=False),
        sa.Column("flights", sa.Text, nullable=False),
        sa.Column("paused_until_ms", sa.BigInteger, nullable=False),
        sa.Column("refusals", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("robot_pace")
