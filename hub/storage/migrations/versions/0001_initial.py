"""The hub's first schema: stations, states, events, uptime ledger, loans,
commands, alerts and the notifier outbox (hub/storage/schema.py as of issue 5).

Written out in full rather than imported from hub/storage/schema.py: a migration is a
record of what the schema was at that revision, so later edits to schema.py
must not change what this one creates.

Revision ID: 0001
Revises:
Create Date: 2025-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL wants BIGINT.
BigId = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "stations",
        sa.Column("sid", sa.String(32), primary_key=True),
        sa.Column("name", sa.Text, nullable=True),
        sa.Column("grp", sa.String(64), nullable=True),
        sa.Column("epoch", sa.String(32), nullable=True),
        sa.Column("birth", sa.BigInteger, nullable=True),
        sa.Column("online", sa.Boolean, nullable=False),
        sa.Column("since_ms", sa.BigInteger, nullable=True),
        sa.Column("last_seen_ms", sa.BigInteger, nullable=True),
        sa.Column("offline_reason", sa.String(16), nullable=True),
        sa.Column("events_through", sa.BigInteger, nullable=False),
        sa.Column("last_seq", sa.BigInteger, nullable=True),
    )
    op.create_table(
        "station_state",
        sa.Column("sid", sa.String(32), primary_key=True),
        sa.Column("epoch", sa.String(32), nullable=False),
        sa.Column("rev", sa.BigInteger, nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("received_ms", sa.BigInteger, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
    )
    op.create_table(
        "events",
        sa.Column("sid", sa.String(32), primary_key=True),
        sa.Column("epoch", sa.String(32), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("synced", sa.Boolean, nullable=False),
        sa.Column("received_ms", sa.BigInteger, nullable=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
    )
    op.create_index("events_sid_at", "events", ["sid", "at_ms"])
    op.create_index("events_type_at", "events", ["type", "at_ms"])

    op.create_table(
        "status_log",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("sid", sa.String(32), nullable=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.Column("online", sa.Boolean, nullable=False),
        sa.Column("reason", sa.String(16), nullable=True),
        sa.Column("epoch", sa.String(32), nullable=True),
        sa.Column("birth", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_status_log_sid", "status_log", ["sid"])

    op.create_table(
        "ledger",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("sid", sa.String(32), nullable=False),
        sa.Column("component", sa.String(16), nullable=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
    )
    op.create_index("ledger_sid_component_at", "ledger", ["sid", "component", "at_ms"])

    op.create_table(
        "hub_runs",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("started_ms", sa.BigInteger, nullable=False),
        sa.Column("alive_ms", sa.BigInteger, nullable=False),
        sa.Column("stopped_ms", sa.BigInteger, nullable=True),
    )

    op.create_table(
        "loans",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("sid", sa.String(32), nullable=False),
        sa.Column("bank", sa.String(16), nullable=False),
        sa.Column("rider", sa.String(32), nullable=True),
        sa.Column("slot", sa.Integer, nullable=True),
        sa.Column("charge", sa.Integer, nullable=True),
        sa.Column("borrowed_ms", sa.BigInteger, nullable=False),
        sa.Column("due_ms", sa.BigInteger, nullable=False),
        sa.Column("returned_ms", sa.BigInteger, nullable=True),
        sa.Column("returned_sid", sa.String(32), nullable=True),
        sa.Column("borrow_event", sa.String(80), nullable=False),
        # Named, though schema.py leaves it unnamed: a later batch migration on
        # SQLite can only drop or change a constraint it can name.
        sa.UniqueConstraint("borrow_event", name="uq_loans_borrow_event"),
    )
    op.create_index("loans_open_bank", "loans", ["bank", "returned_ms"])
    op.create_index("loans_due", "loans", ["returned_ms", "due_ms"])

    op.create_table(
        "commands",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("sid", sa.String(32), nullable=False),
        sa.Column("cmd", sa.String(32), nullable=False),
        sa.Column("args", sa.Text, nullable=False),
        sa.Column("by", sa.String(64), nullable=True),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("expires_ms", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("error", sa.String(32), nullable=True),
        sa.Column("result", sa.Text, nullable=True),
        sa.Column("answered_ms", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_commands_sid", "commands", ["sid"])

    op.create_table(
        "alerts",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("rule", sa.String(40), nullable=False),
        sa.Column("sid", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(64), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("value", sa.Text, nullable=True),
        sa.Column("started_ms", sa.BigInteger, nullable=False),
        sa.Column("acked_ms", sa.BigInteger, nullable=True),
        sa.Column("acked_by", sa.String(64), nullable=True),
        sa.Column("resolved_ms", sa.BigInteger, nullable=True),
        sa.Column("resolved_by", sa.String(64), nullable=True),
        sa.Column("escalation", sa.Integer, nullable=False),
        sa.Column("last_notified_ms", sa.BigInteger, nullable=True),
    )
    op.create_index("alerts_open", "alerts", ["rule", "sid", "subject", "state"])
    op.create_index("alerts_sid_state", "alerts", ["sid", "state"])

    op.create_table(
        "notifications",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("alert_id", sa.String(40), nullable=True),
        sa.Column("notifier", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_ms", sa.BigInteger, nullable=False),
        sa.Column("delivered_ms", sa.BigInteger, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
    )
    op.create_index("ix_notifications_alert_id", "notifications", ["alert_id"])
    op.create_index("notifications_due", "notifications", ["delivered_ms", "next_attempt_ms"])


def downgrade() -> None:
    for table in ("notifications", "alerts", "commands", "loans", "hub_runs", "ledger",
                  "status_log", "events", "station_state", "stations"):
        op.drop_table(table)  # its indexes go with it
