"""The hub's durable store: one code path for SQLite (default) and PostgreSQL.

SQLAlchemy Core, not the ORM: the ingest path writes plain rows.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

metadata = sa.MetaData()

stations = sa.Table(
    "stations", metadata,
    sa.Column("sid", sa.String(32), primary_key=True),
    sa.Column("name", sa.Text, nullable=True),
    sa.Column("grp", sa.String(64), nullable=True),
    sa.Column("epoch", sa.String(32), nullable=True),
    sa.Column("birth", sa.BigInteger, nullable=True),
    sa.Column("online", sa.Boolean, nullable=False, default=False),
    sa.Column("since_ms", sa.BigInteger, nullable=True),
    sa.Column("last_seen_ms", sa.BigInteger, nullable=True),
    sa.Column("offline_reason", sa.String(16), nullable=True),
    sa.Column("state_rev", sa.BigInteger, nullable=True),
    sa.Column("state_json", sa.Text, nullable=True),
)

status_log = sa.Table(
    "status_log", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("sid", sa.String(32), nullable=False, index=True),
    sa.Column("at_ms", sa.BigInteger, nullable=False),
    sa.Column("online", sa.Boolean, nullable=False),
    sa.Column("reason", sa.String(16), nullable=True),
    sa.Column("epoch", sa.String(32), nullable=True),
    sa.Column("birth", sa.BigInteger, nullable=True),
)


def make_engine(url: str) -> sa.Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - per connection
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=5000")
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


class Store:
    """Rows in, rows out; the meaning lives in ``hub.fleet``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._lock = threading.Lock()
        metadata.create_all(self.engine)

    def load_stations(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(stations)).mappings().all()
        out = []
        for row in rows:
            d = dict(row)
            d["state"] = json.loads(d.pop("state_json")) if d.get("state_json") else None
            out.append(d)
        return out

    def save_station(self, row: dict[str, Any], transition: dict[str, Any] | None = None) -> None:
        values = dict(row)
        state = values.pop("state", None)
        values["state_json"] = json.dumps(state, ensure_ascii=False) if state is not None else None
        with self._lock, self.engine.begin() as conn:
            updated = conn.execute(
                stations.update().where(stations.c.sid == values["sid"]).values(**values)
            ).rowcount
            if not updated:
                conn.execute(stations.insert().values(**values))
            if transition is not None:
                conn.execute(status_log.insert().values(**transition))

    def transitions(self, sid: str) -> Iterable[dict[str, Any]]:
        with self.engine.connect() as conn:
            q = sa.select(status_log).where(status_log.c.sid == sid).order_by(status_log.c.id)
            return [dict(r) for r in conn.execute(q).mappings()]

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            return True
        except sa.exc.SQLAlchemyError:
            return False

    def close(self) -> None:
        self.engine.dispose()
