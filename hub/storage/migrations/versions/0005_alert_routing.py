"""alerts: what the router has told — the state announced, the route, when the
current tier was told (hub/alerting/routing.py).

``escalation`` (the highest tier told) and ``last_notified_ms`` (the last message,
for reminders) exist since 0001; these three complete the router's state, so that
after a restart it neither repeats nor forgets a notice.

Revision ID: 0005
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("notified", sa.String(16), nullable=True))
        batch.add_column(sa.Column("route", sa.String(64), nullable=True))
        batch.add_column(sa.Column("tier_ms", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("tier_ms")
        batch.drop_column("route")
        batch.drop_column("notified")
