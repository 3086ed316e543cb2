"""Alembic environment for the hub: always online, on a connection it is given.

``hub.storage.store`` opens the connection (and on PostgreSQL takes the migration lock),
then runs ``alembic upgrade head`` with it in ``config.attributes["connection"]``.
There is no ``alembic.ini`` and no URL here, so the migrations run the same way
from the hub, from the tests and from an installed wheel.
"""

from __future__ import annotations

from alembic import context

from hub.storage.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "hub migrations run on a connection passed in config.attributes['connection'];"
        " use hub.store.Store(url) or hub.store.alembic_config(connection)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things: batch mode copies the table instead. On
    # PostgreSQL batch operations are plain ALTERs, so one migration fits both.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)

with context.begin_transaction():
    context.run_migrations()
