"""loans: the pending claim of a return elsewhere — who claims it, when, and by
when a State of that station must show the bank (hub/fleet/loans.py, ``Claim``).

Until now the claims lived in memory only: a hub restart lost them, and the
loan then stayed open with no alert, or the alert came a day late. Issue 14,
finding 6.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("loans") as batch:
        batch.add_column(sa.Column("claim_sid", sa.String(32), nullable=True))
        batch.add_column(sa.Column("claim_ms", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("confirm_by_ms", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("loans") as batch:
        batch.drop_column("confirm_by_ms")
        batch.drop_column("claim_ms")
        batch.drop_column("claim_sid")
