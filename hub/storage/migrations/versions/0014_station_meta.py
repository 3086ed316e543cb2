"""station_meta: a station's place, address, host and hours as the console set
them (issue 20, the rider's station finder).

Hub-side only. Stations without a row take the configuration's ``stations:`` values.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "station_meta",
        sa.Column("sid", sa.String(32), primary_key=True),
        sa.Column("lat", sa.Float, nullable=True),
        sa.Column("lon", sa.Float, nullable=True),
        sa.Column("address", sa.Text, nullable=True),
        sa.Column("host", sa.Text, nullable=True),
        sa.Column("hours", sa.String(16), nullable=True),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_by", sa.String(80), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("station_meta")
