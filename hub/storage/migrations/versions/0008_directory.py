"""The Directory of contract §8: staff, riders, denied riders, lending policy
overrides, each station's last published rev, and the audit log of changes
(hub/fleet/directory.py).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "staff",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("phone", sa.String(16), nullable=True),
        sa.Column("pin", sa.Text, nullable=False),
        sa.Column("groups", sa.Text, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "riders",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("masked", sa.String(16), nullable=False),
        sa.Column("pin", sa.Text, nullable=False),
        sa.Column("registered_ms", sa.BigInteger, nullable=False),
        sa.Column("registered_by", sa.String(64), nullable=True),
    )
    op.create_table(
        "denied",
        sa.Column("rider", sa.String(32), primary_key=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("expires_ms", sa.BigInteger, nullable=True),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=True),
    )
    op.create_index("denied_expires", "denied", ["expires_ms"])
    op.create_table(
        "policies",
        sa.Column("scope", sa.String(8), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("lending", sa.String(16), nullable=True),
        sa.Column("min_charge", sa.Integer, nullable=True),
        sa.Column("max_per_rider", sa.Integer, nullable=True),
        sa.Column("loan_hours", sa.Integer, nullable=True),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_by", sa.String(64), nullable=True),
    )
    op.create_table(
        "directory_revs",
        sa.Column("sid", sa.String(32), primary_key=True),
        sa.Column("rev", sa.BigInteger, nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
    )
    op.create_table(
        "directory_audit",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.Column("actor", sa.String(64), nullable=True),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("entity", sa.String(16), nullable=False),
        sa.Column("entity_id", sa.String(64), nullable=False),
        sa.Column("detail", sa.Text, nullable=True),
    )
    op.create_index("directory_audit_at", "directory_audit", ["at_ms"])


def downgrade() -> None:
    op.drop_index("directory_audit_at", "directory_audit")
    op.drop_table("directory_audit")
    op.drop_table("directory_revs")
    op.drop_table("policies")
    op.drop_index("denied_expires", "denied")
    op.drop_table("denied")
    op.drop_table("riders")
    op.drop_table("staff")
