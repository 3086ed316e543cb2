"""The hub's tables (SQLAlchemy Core), one definition for SQLite and PostgreSQL.

Migrations in ``hub/storage/migrations`` (Alembic) create and change these tables; the
definitions here are what the code reads and writes. Times are integer
milliseconds: ``*_ms`` on the hub's own clock, ``ts`` the station's clock.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

#: The database's clock in microseconds (PostgreSQL): stamps what hub workers
#: sharing it write, so each reads what the others wrote since it last looked.
DB_NOW_US = "(extract(epoch from clock_timestamp()) * 1000000)::bigint"

# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL wants BIGINT.
BigId = sa.BigInteger().with_variant(sa.Integer, "sqlite")

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
    # The highest seq such that every event 1..events_through of the current
    # epoch is stored: what gap detection and de-duplication start from.
    sa.Column("events_through", sa.BigInteger, nullable=False, default=0),
    sa.Column("last_seq", sa.BigInteger, nullable=True),  # as the station last said
    # When a hub worker sharing PostgreSQL last wrote the row (DB_NOW_US): what
    # the other workers read to learn of it (hub/fleet/sync.py). NULL otherwise.
    sa.Column("changed_us", sa.BigInteger, nullable=True),
    sa.Index("stations_changed", "changed_us"),
)

# The last applied State of each station (contract §5), by (epoch, rev).
station_state = sa.Table(
    "station_state", metadata,
    sa.Column("sid", sa.String(32), primary_key=True),
    sa.Column("epoch", sa.String(32), nullable=False),
    sa.Column("rev", sa.BigInteger, nullable=False),
    sa.Column("ts", sa.BigInteger, nullable=False),
    sa.Column("received_ms", sa.BigInteger, nullable=False),
    sa.Column("state", sa.Text, nullable=False),  # the State as JSON
    sa.Column("changed_us", sa.BigInteger, nullable=True),  # as stations.changed_us
    sa.Index("station_state_changed", "changed_us"),
)

# Every event once per (sid, epoch, seq) (contract §3).
events = sa.Table(
    "events", metadata,
    sa.Column("sid", sa.String(32), primary_key=True),
    sa.Column("epoch", sa.String(32), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("ts", sa.BigInteger, nullable=False),
    sa.Column("synced", sa.Boolean, nullable=False),
    sa.Column("received_ms", sa.BigInteger, nullable=False),
    # The time the event is dated by: ts when synced, else received_ms.
    sa.Column("at_ms", sa.BigInteger, nullable=False),
    sa.Column("data", sa.Text, nullable=False),  # JSON
    # When it was stored, on the database's clock (PostgreSQL's default,
    # DB_NOW_US): how the hub workers sharing it learn of each other's events.
    sa.Column("stored_us", sa.BigInteger, nullable=True),
    sa.Index("events_sid_at", "sid", "at_ms"),
    sa.Index("events_type_at", "type", "at_ms"),
    sa.Index("events_stored", "stored_us", postgresql_using="brin"),
)

# Birth and death of each station as the hub saw them (hub clock).
status_log = sa.Table(
    "status_log", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("sid", sa.String(32), nullable=False, index=True),
    sa.Column("at_ms", sa.BigInteger, nullable=False),
    sa.Column("online", sa.Boolean, nullable=False),
    sa.Column("reason", sa.String(16), nullable=True),
    sa.Column("epoch", sa.String(32), nullable=True),
    sa.Column("birth", sa.BigInteger, nullable=True),
)

# The uptime ledger: change points of each (station, component) on the hub's
# clock. component: station, lockers, dispenser, kiosk; state: up, down,
# unknown; maintenance is its own component ("maintenance": on/off).
ledger = sa.Table(
    "ledger", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("sid", sa.String(32), nullable=False),
    sa.Column("component", sa.String(16), nullable=False),
    sa.Column("at_ms", sa.BigInteger, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Index("ledger_sid_component_at", "sid", "component", "at_ms"),
)

# When the hub itself ran: outside these intervals every station is unknown.
hub_runs = sa.Table(
    "hub_runs", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("started_ms", sa.BigInteger, nullable=False),
    sa.Column("alive_ms", sa.BigInteger, nullable=False),  # last proof of life
    sa.Column("stopped_ms", sa.BigInteger, nullable=True),  # a clean stop
)

loans = sa.Table(
    "loans", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("sid", sa.String(32), nullable=False),
    # NULL where the lending cabinet cannot read bank ids: the rider's loan
    # (hub/fleet/loans.py, "Loans without a bank id").
    sa.Column("bank", sa.String(16), nullable=True),
    sa.Column("rider", sa.String(32), nullable=True),
    sa.Column("slot", sa.Integer, nullable=True),
    sa.Column("charge", sa.Integer, nullable=True),
    sa.Column("borrowed_ms", sa.BigInteger, nullable=False),
    sa.Column("due_ms", sa.BigInteger, nullable=False),
    sa.Column("returned_ms", sa.BigInteger, nullable=True),
    sa.Column("returned_sid", sa.String(32), nullable=True),
    sa.Column("borrow_event", sa.String(80), nullable=False),  # sid/epoch/seq
    # A return (or a borrow) of this open loan's bank at another station, not
    # yet shown by that station's State (hub/fleet/loans.py, ``Claim``): kept
    # here so that a hub restart neither closes nor forgets it.
    sa.Column("claim_sid", sa.String(32), nullable=True),
    sa.Column("claim_ms", sa.BigInteger, nullable=True),  # when the claim says
    sa.Column("confirm_by_ms", sa.BigInteger, nullable=True),  # hub time: overdue after
    # Named, because SQLite migrations can only change a constraint with a name.
    sa.UniqueConstraint("borrow_event", name="uq_loans_borrow_event"),
    sa.Index("loans_open_bank", "bank", "returned_ms"),
    sa.Index("loans_due", "returned_ms", "due_ms"),
)

commands = sa.Table(
    "commands", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("sid", sa.String(32), nullable=False, index=True),
    sa.Column("cmd", sa.String(32), nullable=False),
    sa.Column("args", sa.Text, nullable=False),  # JSON
    sa.Column("by", sa.String(64), nullable=True),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("expires_ms", sa.BigInteger, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # sent, ok, failed, expired
    sa.Column("error", sa.String(32), nullable=True),
    sa.Column("result", sa.Text, nullable=True),  # the CommandResult data as JSON
    sa.Column("answered_ms", sa.BigInteger, nullable=True),
)

alerts = sa.Table(
    "alerts", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("rule", sa.String(40), nullable=False),
    sa.Column("sid", sa.String(32), nullable=False),
    sa.Column("subject", sa.String(64), nullable=False, default=""),  # door, slot, bank or ""
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # firing, acked, resolved
    sa.Column("summary", sa.Text, nullable=False),
    sa.Column("value", sa.Text, nullable=True),  # JSON
    sa.Column("started_ms", sa.BigInteger, nullable=False),
    sa.Column("acked_ms", sa.BigInteger, nullable=True),
    sa.Column("acked_by", sa.String(64), nullable=True),
    sa.Column("resolved_ms", sa.BigInteger, nullable=True),
    sa.Column("resolved_by", sa.String(64), nullable=True),
    sa.Column("escalation", sa.Integer, nullable=False, default=0),
    sa.Column("last_notified_ms", sa.BigInteger, nullable=True),
    # What the router has told (hub/alerting/routing.py): the last state announced
    # (firing, acked, resolved; NULL while nobody was told), the route it was
    # told on, and when its current tier (``escalation``) was told.
    sa.Column("notified", sa.String(16), nullable=True),
    sa.Column("route", sa.String(64), nullable=True),
    sa.Column("tier_ms", sa.BigInteger, nullable=True),
    # The staff id the alert is given to from the console (hub/console/alerts.py).
    sa.Column("assignee", sa.String(64), nullable=True),
    sa.Index("alerts_open", "rule", "sid", "subject", "state"),
    sa.Index("alerts_sid_state", "sid", "state"),
)

# The notifier outbox (issue 6): one row per delivery, retried until delivered.
notifications = sa.Table(
    "notifications", metadata,
    sa.Column("id", sa.String(40), primary_key=True),  # the delivery id
    sa.Column("alert_id", sa.String(40), nullable=True, index=True),
    sa.Column("notifier", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # firing, resolved, acked, ...
    sa.Column("body", sa.Text, nullable=False),  # the exact bytes to send
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_ms", sa.BigInteger, nullable=False),
    sa.Column("delivered_ms", sa.BigInteger, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    # Rate limits (docs/alerts.md, "Rate limits"): the station it is about (its
    # notifications are counted per station), the alert's severity (critical ones
    # are counted apart), when it was held back over a limit (NULL: sent as
    # usual), what a digest says of it (JSON), and the digest that carried it.
    sa.Column("sid", sa.String(32), nullable=True),
    sa.Column("severity", sa.String(16), nullable=True),
    sa.Column("held_ms", sa.BigInteger, nullable=True),
    sa.Column("about", sa.Text, nullable=True),
    sa.Column("digest_id", sa.String(40), nullable=True),
    # Pacing (docs/notifications.md, "Pacing"): sent before lesser ones waiting and
    # never folded into a digest — a tamper, a heater lockout, or the station
    # offline that was its group's last one online. Decided as the row is stored,
    # from the fleet of that moment, so a restart and a digest judge it alike.
    sa.Column("goes_first", sa.Boolean, nullable=False, default=False,
              server_default=sa.false()),
    sa.Index("notifications_due", "delivered_ms", "next_attempt_ms"),
    sa.Index("notifications_recent", "notifier", "created_ms"),
)

# Each chat robot's pace, shared by the hub workers sending to it
# (hub/alerting/notify/shared_pace.py): attempts answered in the last window
# (JSON list of ms), attempts in flight (JSON {token: until ms}), until when it
# refused us for speed. The key is pacing.robot_key's hash, never the address.
robot_pace = sa.Table(
    "robot_pace", metadata,
    sa.Column("robot", sa.String(40), primary_key=True),
    sa.Column("stamps", sa.Text, nullable=False),
    sa.Column("flights", sa.Text, nullable=False),
    sa.Column("paused_until_ms", sa.BigInteger, nullable=False),
    sa.Column("refusals", sa.Integer, nullable=False),
)

# Silences (alert engine, docs/alerts.md): an open alert matching every given
# field (sid, group, rule; NULL matches any) is not notified in [starts, ends).
silences = sa.Table(
    "silences", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("sid", sa.String(32), nullable=True),
    sa.Column("grp", sa.String(64), nullable=True),
    sa.Column("rule", sa.String(40), nullable=True),
    sa.Column("starts_ms", sa.BigInteger, nullable=False),
    sa.Column("ends_ms", sa.BigInteger, nullable=False),  # set to now when ended early
    sa.Column("comment", sa.Text, nullable=True),
    sa.Column("created_by", sa.String(64), nullable=True),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Index("silences_ends", "ends_ms"),
)

# Planned maintenance of a station or a group: its refill alerts are held back
# in [starts, ends), as while staff are on site.
maintenance_windows = sa.Table(
    "maintenance_windows", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("sid", sa.String(32), nullable=True),
    sa.Column("grp", sa.String(64), nullable=True),
    sa.Column("starts_ms", sa.BigInteger, nullable=False),
    sa.Column("ends_ms", sa.BigInteger, nullable=False),
    sa.Column("comment", sa.Text, nullable=True),
    sa.Column("created_by", sa.String(64), nullable=True),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Index("maintenance_windows_ends", "ends_ms"),
)

# -- the Directory (contract §8; hub/fleet/directory.py, docs/security.md) -----------
# PINs are kept only as their pbkdf2_sha256 hash; riders only by their rider id.

# Staff who may sign in on the kiosks: ``groups`` a JSON list of the groups whose
# stations get them ([] every station); ``phone`` is for alerts, never published.
staff = sa.Table(
    "staff", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("phone", sa.String(16), nullable=True),
    sa.Column("pin", sa.Text, nullable=False),
    # Hub-side only, for @-mentions in Feishu (a Feishu bot cannot @ a phone number);
    # never part of a station's Directory (migration 0013).
    sa.Column("feishu_open_id", sa.String(80), nullable=True),
    sa.Column("groups", sa.Text, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
)

# Riders registered at a desk: the rider id of contract §1 and the masked number
# as the kiosk shows it (138****1234), never the number itself.
riders = sa.Table(
    "riders", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("masked", sa.String(16), nullable=False),
    sa.Column("pin", sa.Text, nullable=False),
    sa.Column("registered_ms", sa.BigInteger, nullable=False),
    sa.Column("registered_by", sa.String(64), nullable=True),
)

# Riders who may not borrow, until ``expires_ms`` (NULL: until removed).
denied = sa.Table(
    "denied", metadata,
    sa.Column("rider", sa.String(32), primary_key=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("expires_ms", sa.BigInteger, nullable=True),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("created_by", sa.String(64), nullable=True),
    sa.Index("denied_expires", "expires_ms"),
)

# Lending policy overrides: ``scope`` group or station, ``name`` the group or the
# sid; a NULL field keeps what the wider scope (then the hub's policy:) says.
policies = sa.Table(
    "policies", metadata,
    sa.Column("scope", sa.String(8), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("lending", sa.String(16), nullable=True),
    sa.Column("min_charge", sa.Integer, nullable=True),
    sa.Column("max_per_rider", sa.Integer, nullable=True),
    sa.Column("loan_hours", sa.Integer, nullable=True),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_by", sa.String(64), nullable=True),
)

# What each station was last sent: its rev (strictly increasing, kept across
# restarts), the ts it carried, and a digest of the content (rev and ts left
# out) so the hub knows whether what is retained is still right.
directory_revs = sa.Table(
    "directory_revs", metadata,
    sa.Column("sid", sa.String(32), primary_key=True),
    sa.Column("rev", sa.BigInteger, nullable=False),
    sa.Column("ts", sa.BigInteger, nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
)

# Who changed the Directory, when, what, on which entity. ``detail`` is JSON of
# the fields changed, never a PIN nor a phone number.
directory_audit = sa.Table(
    "directory_audit", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("at_ms", sa.BigInteger, nullable=False),
    sa.Column("actor", sa.String(64), nullable=True),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("entity", sa.String(16), nullable=False),
    sa.Column("entity_id", sa.String(64), nullable=False),
    sa.Column("detail", sa.Text, nullable=True),
    sa.Index("directory_audit_at", "at_ms"),
)

# The people who sign in to the hub's console (hub/console/auth.py): the password
# only as werkzeug's salted hash, the role, the groups a maintenance worker acts
# on (JSON list). ``session_epoch`` grows at every sign-out, password change or
# disabling: a session cookie signed with an older one is no longer honoured.
console_users = sa.Table(
    "console_users", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("password", sa.Text, nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("groups", sa.Text, nullable=False),
    sa.Column("session_epoch", sa.Integer, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("disabled_ms", sa.BigInteger, nullable=True),
)

# API tokens made from the console by an admin (hub/http/stored_tokens.py): only the
# SHA-256 of the secret is kept (the secret is shown once, when made); beside the
# tokens of the configuration, whose names they may not take. Revoked ones stay,
# so a name is never given to another token.
api_tokens = sa.Table(
    "api_tokens", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("scopes", sa.Text, nullable=False),  # JSON list
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("created_by", sa.String(64), nullable=True),
    sa.Column("revoked_ms", sa.BigInteger, nullable=True),
    sa.UniqueConstraint("digest", name="uq_api_tokens_digest"),
)

# A station's rider-facing facts as the console set them (hub/public/meta.py): a
# row replaces all five of the configuration's ``stations:`` values for that sid
# (NULL: not known), until the console resets it to the configuration's.
station_meta = sa.Table(
    "station_meta", metadata,
    sa.Column("sid", sa.String(32), primary_key=True),
    sa.Column("lat", sa.Float, nullable=True),  # WGS-84 degrees
    sa.Column("lon", sa.Float, nullable=True),
    sa.Column("address", sa.Text, nullable=True),
    sa.Column("host", sa.Text, nullable=True),
    sa.Column("hours", sa.String(16), nullable=True),  # 24h or HH:MM-HH:MM
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_by", sa.String(80), nullable=True),
)
