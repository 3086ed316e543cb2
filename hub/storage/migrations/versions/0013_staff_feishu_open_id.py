"""staff: the Feishu open id a Feishu alert @-mentions a person by (issue 19).

Hub-side only: the Directory a station gets carries no such field. Existing staff
have none (NULL): Feishu messages name them without an @-mention until one is given.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("staff") as batch:
        batch.add_column(sa.Column("feishu_open_id", sa.String(80), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("staff") as batch:
        batch.drop_column("feishu_open_id")
