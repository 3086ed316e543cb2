"""stations, station_state, events: when each row was last written, on the
database's own clock (microseconds) — what several hub workers sharing one
PostgreSQL read every couple of seconds to learn what the others stored
(hub/fleet/sync.py, docs/scaling.md).

On PostgreSQL the columns default to ``clock_timestamp()`` (an event is only
ever inserted), and the shared workers' upserts of stations and States set them
again. Rows written before the upgrade keep NULL: they are in every worker's
memory from its start. SQLite gets the columns only (one worker, never read).
``events_stored`` is a BRIN index: events are appended in time order, so a
range of recent ones is a few pages, and the index costs the ingest next to
nothing (a B-tree on a column of every insert would).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: As hub/storage/schema.py's DB_NOW_US (a revision never imports the code).
_NOW_US = "(extract(epoch from clock_timestamp()) * 1000000)::bigint"


def upgrade() -> None:
    pg = op.get_bind().dialect.name == "postgresql"
    default = sa.text(_NOW_US) if pg else None
    for table, column in (("stations", "changed_us"), ("station_state", "changed_us"),
                          ("events", "stored_us")):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column(column, sa.BigInteger, nullable=True,
                                       server_default=default))
    op.create_index("stations_changed", "stations", ["changed_us"])
    op.create_index("station_state_changed", "station_state", ["changed_us"])
    op.create_index("events_stored", "events", ["stored_us"], postgresql_using="brin")


def downgrade() -> None:
    op.drop_index("events_stored", table_name="events")
    op.drop_index("station_state_changed", table_name="station_state")
    op.drop_index("stations_changed", table_name="stations")
    for table, column in (("stations", "changed_us"), ("station_state", "changed_us"),
                          ("events", "stored_us")):
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column)
