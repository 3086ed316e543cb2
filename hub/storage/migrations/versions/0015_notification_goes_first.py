"""notifications: goes_first — a delivery sent before lesser ones waiting and never
folded into a digest (a tamper, a heater lockout, the station offline that was its
group's last one online; hub/alerting/notify/first.py), decided as it is stored.

Existing rows get false. The ones still waiting (not delivered, given up nor
digested) of a tamper or a heater lockout get true, read from what their digest
line says (``about``): they went first before the upgrade, and still do. Whether
a waiting station_offline was its group's last cannot be told afterwards: false.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: As in hub/alerting/notify/first.py then (a revision never imports the code).
_FIRST_RULES = ("tamper", "heater_lockout")
_NEVER = 2**62


def upgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(sa.Column("goes_first", sa.Boolean, nullable=False,
                                   server_default=sa.false()))
    rows = sa.table("notifications", sa.column("id", sa.String), sa.column("about", sa.Text),
                    sa.column("delivered_ms", sa.BigInteger),
                    sa.column("next_attempt_ms", sa.BigInteger),
                    sa.column("digest_id", sa.String), sa.column("goes_first", sa.Boolean))
    conn = op.get_bind()
    waiting = conn.execute(
        sa.select(rows.c.id, rows.c.about)
        .where(rows.c.delivered_ms.is_(None), rows.c.next_attempt_ms < _NEVER,
               rows.c.digest_id.is_(None), rows.c.about.is_not(None))).all()
    first = [r.id for r in waiting if _rule(r.about) in _FIRST_RULES]
    for i in range(0, len(first), 500):
        conn.execute(rows.update().where(rows.c.id.in_(first[i:i + 500]))
                     .values(goes_first=True))


def _rule(about: str) -> str | None:
    try:
        data = json.loads(about)
    except ValueError:
        return None
    return data.get("rule") if isinstance(data, dict) else None


def downgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.drop_column("goes_first")
