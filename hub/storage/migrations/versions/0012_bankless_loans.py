"""loans: ``bank`` may be NULL, for a loan of a station whose cabinet cannot read
bank ids (issue 18): the loan is the rider's, and the rider's return closes it
(hub/fleet/loans.py, "Loans without a bank id").

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("loans") as batch:
        batch.alter_column("bank", existing_type=sa.String(16), nullable=True)


def downgrade() -> None:
    # A bank-less loan has no bank to keep: it cannot live in the older table.
    op.execute("DELETE FROM loans WHERE bank IS NULL")
    with op.batch_alter_table("loans") as batch:
        batch.alter_column("bank", existing_type=sa.String(16), nullable=False)
