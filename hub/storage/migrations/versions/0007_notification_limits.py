"""notifications: what the rate limits need — the station a delivery is about,
its alert's severity, when it was held back, what a digest says of it, the digest that carried it
(hub/alerting/notify/limits.py).

Existing rows were all sent as usual: the new columns are NULL for them.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(sa.Column("sid", sa.String(32), nullable=True))
        batch.add_column(sa.Column("severity", sa.String(16), nullable=True))
        batch.add_column(sa.Column("held_ms", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("about", sa.Text, nullable=True))
        batch.add_column(sa.Column("digest_id", sa.String(40), nullable=True))
        batch.create_index("notifications_recent", ["notifier", "created_ms"])


def downgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.drop_index("notifications_recent")
        batch.drop_column("digest_id")
        batch.drop_column("about")
        batch.drop_column("held_ms")
        batch.drop_column("severity")
        batch.drop_column("sid")
