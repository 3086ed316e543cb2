"""console_users: the people who sign in to the hub's console (hub/console/auth.py),
passwords only as salted hashes.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "console_users",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("password", sa.Text, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("groups", sa.Text, nullable=False),
        sa.Column("session_epoch", sa.Integer, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("disabled_ms", sa.BigInteger, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("console_users")
