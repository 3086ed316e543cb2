"""silences and maintenance windows (alert engine, docs/alerts.md).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "silences",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("sid", sa.String(32), nullable=True),
        sa.Column("grp", sa.String(64), nullable=True),
        sa.Column("rule", sa.String(40), nullable=True),
        sa.Column("starts_ms", sa.BigInteger, nullable=False),
        sa.Column("ends_ms", sa.BigInteger, nullable=False),
        sa.Column("comment", sa.Text, nullable=True),
        sa.Column("created_by", sa.String(64), nullable=True),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("silences_ends", "silences", ["ends_ms"])
    op.create_table(
        "maintenance_windows",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("sid", sa.String(32), nullable=True),
        sa.Column("grp", sa.String(64), nullable=True),
        sa.Column("starts_ms", sa.BigInteger, nullable=False),
        sa.Column("ends_ms", sa.BigInteger, nullable=False),
        sa.Column("comment", sa.Text, nullable=True),
        sa.Column("created_by", sa.String(64), nullable=True),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("maintenance_windows_ends", "maintenance_windows", ["ends_ms"])


def downgrade() -> None:
    op.drop_table("maintenance_windows")
    op.drop_table("silences")
