"""Who may use the console: users, sign-in, sessions, CSRF and roles.

* Users live in ``console_users`` (hub/storage/schema.py): the password only as
  werkzeug's salted hash (scrypt), a role and, for maintenance, the groups whose
  stations they act on.
* The session is Flask's signed cookie (``HttpOnly``, ``SameSite=Strict``,
  ``Secure`` with ``console.secure_cookies``), holding the user's name and the
  user's ``session_epoch``: signing out, a new password or disabling the user
  grows the epoch, so a copied cookie is void with it. A session unused for
  ``console.idle_minutes`` is signed out (on the hub's clock).
* Every POST carries the session's CSRF token (yizhan/sessions.py, shared with
  the kiosk); without it the answer is 400.
* Sign-in failures are counted per name and per address *before* the password
  is hashed: a locked name costs the hub no scrypt, and a guesser learns nothing
  from timing (an unknown name is hashed against a dummy all the same).
* Every view says who may open it with ``@requires(role, ...)``; the roles are
  ranked (admin ⊇ ops ⊇ maintenance), so ``@requires("maintenance")`` lets all
  three in. ``ROUTE_ROLES`` records each endpoint's set, for the table-driven
  test over every route (tests/test_console_auth.py); an endpoint that never
  declared one is refused to everyone (:func:`check_declared`).
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.security import check_password_hash, generate_password_hash

from hub.alerting.texts import N_
from hub.fleet.directory_fields import GROUP_MAX, BadField, text
from hub.storage.schema import console_users

log = logging.getLogger(__name__)

__all__ = ["MAX_ADDRESS_FAILURES", "MAX_FAILURES", "PUBLIC", "ROLES", "ROUTE_ROLES",
           "ConsoleUser", "UserError", "Users", "bp", "current_user", "may_act_on", "public",
           "requires"]

#: Ranked lowest first: a role may do everything the roles before it may.
ROLES = ("maintenance", "ops", "admin")
#: The roles as the nav shows them (marked for the catalogue).
ROLE_WORDS = (N_("maintenance"), N_("ops"), N_("admin"))
#: ``ROUTE_ROLES[endpoint]`` is the set of roles that may open it; PUBLIC (empty)
#: for the pages anyone may open (sign-in, the language switch, the stylesheet).
ROUTE_ROLES: dict[str, frozenset[str]] = {}
PUBLIC: frozenset[str] = frozenset()
#: Failed sign-ins within FAILURE_WINDOW_MS that lock a name for LOCK_MS.
MAX_FAILURES = 5
#: ... and that lock an address: higher, because a depot's phones behind one NAT
#: (or every user behind a proxy) share it, and one guesser must not lock them all out.
MAX_ADDRESS_FAILURES = 50
FAILURE_WINDOW_MS = 15 * 60_000
LOCK_MS = 15 * 60_000
#: Names and addresses whose failures are remembered (the oldest are forgotten).
FAILURES_KEPT = 10_000
MAX_NAME = 64
MAX_PASSWORD = 1024  # hashing a megabyte "password" is a denial of service
MIN_PASSWORD = 10
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")
# Hashed when the name is unknown, so a wrong name takes as long as a wrong password.
_DUMMY_HASH = generate_password_hash("not a password of anyone")

bp = Blueprint("console_auth", __name__, url_prefix="/console")


class UserError(ValueError):
    """A user that cannot be added or changed (bad name, role, groups, password);
    ``code`` for the console's words (hub/console/refusals.py), the message for the
    command line."""


    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ConsoleUser:
    name: str
    role: str
    groups: tuple[str, ...] = ()

    def has(self, role: str) -> bool:
        """At least ``role`` (admin has ops and maintenance)."""
        return ROLES.index(self.role) >= ROLES.index(role)


# -- users -----------------------------------------------------------------------------


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME or not set(name) <= _NAME_CHARS:
        raise UserError(f"a user name is 1 to {MAX_NAME} of a-z 0-9 . _ -", "bad_name")
    return name


def check_role(role: Any) -> str:
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}", "bad_role")
    return role


def check_groups(groups: Iterable[str]) -> tuple[str, ...]:
    out = []
    for group in groups:
        try:
            text(group, "groups", GROUP_MAX)  # as the Directory's staff groups
        except BadField as err:
            raise UserError(err.message, "bad_groups") from err
        if group not in out:
            out.append(group)
    return tuple(out)


def check_password(password: Any) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise UserError(f"a password is {MIN_PASSWORD} to {MAX_PASSWORD} characters",
                        "bad_password")
    return password


class Users:
    """The ``console_users`` table of one hub's store."""

    def __init__(self, store, clock) -> None:
        self.store = store
        self.clock = clock

    def add(self, name: str, password: str, role: str, groups: Iterable[str] = ()) -> ConsoleUser:
        name, role = check_name(name), check_role(role)
        groups = check_groups(groups)
        if role == "maintenance" and not groups:
            raise UserError("a maintenance user acts on stations of their groups: give --groups",
                            "needs_groups")
        hashed = generate_password_hash(check_password(password))
        try:
            with self.store.engine.begin() as conn:
                conn.execute(console_users.insert().values(
                    name=name, password=hashed, role=role, groups=json.dumps(list(groups)),
                    session_epoch=0, created_ms=self.clock.ms(), disabled_ms=None))
        except sa.exc.IntegrityError as err:
            raise UserError(f"there is already a user {name!r}", "exists") from err
        log.info("console user %s added (%s)", name, role)
        return ConsoleUser(name, role, groups)

    def _row(self, name: str) -> Any:
        with self.store.engine.connect() as conn:
            return conn.execute(sa.select(console_users).where(
                console_users.c.name == name)).first()

    @staticmethod
    def _user(row: Any) -> ConsoleUser:
        try:
            groups = tuple(g for g in json.loads(row.groups) if isinstance(g, str))
        except ValueError:
            groups = ()
        return ConsoleUser(row.name, row.role, groups)

    def get(self, name: str, epoch: int | None = None) -> ConsoleUser | None:
        """The enabled user ``name`` (and of session ``epoch`` when given)."""
        row = self._row(name)
        if row is None or row.disabled_ms is not None or row.role not in ROLES:
            return None
        if epoch is not None and row.session_epoch != epoch:
            return None
        return self._user(row)

    def list(self) -> list[dict[str, Any]]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(sa.select(console_users).order_by(console_users.c.name)).all()
        return [{"name": r.name, "role": r.role, "groups": list(self._user(r).groups),
                 "created": r.created_ms, "disabled": r.disabled_ms} for r in rows]

    def verify(self, name: str, password: str) -> tuple[ConsoleUser, int] | None:
        """(user, session epoch) when ``password`` is ``name``'s; always one hash."""
        row = self._row(name) if len(name) <= MAX_NAME else None
        ok = check_password_hash(row.password if row is not None else _DUMMY_HASH,
                                 password[:MAX_PASSWORD])
        if not ok or row is None or row.disabled_ms is not None or row.role not in ROLES:
            return None
        return self._user(row), row.session_epoch

    def end_sessions(self, name: str) -> None:
        """Void every session of ``name`` (sign-out, new password, disabled)."""
        with self.store.engine.begin() as conn:
            conn.execute(console_users.update().where(console_users.c.name == name).values(
                session_epoch=console_users.c.session_epoch + 1))

    def set_password(self, name: str, password: str) -> None:
        hashed = generate_password_hash(check_password(password))
        with self.store.engine.begin() as conn:
            found = conn.execute(console_users.update().where(
                console_users.c.name == name).values(
                password=hashed, session_epoch=console_users.c.session_epoch + 1)).rowcount
        if not found:
            raise UserError(f"no user {name!r}", "not_found")

    def change(self, name: str, *, role: str | None = None,
               groups: Iterable[str] | None = None, disabled: bool | None = None) -> None:
        values: dict[str, Any] = {}
        if role is not None:
            values["role"] = check_role(role)
        if groups is not None:
            values["groups"] = json.dumps(list(check_groups(groups)))
        if disabled is not None:
            values["disabled_ms"] = self.clock.ms() if disabled else None
        values["session_epoch"] = console_users.c.session_epoch + 1
        with self.store.engine.begin() as conn:
            found = conn.execute(console_users.update().where(
                console_users.c.name == name).values(**values)).rowcount
        if not found:
            raise UserError(f"no user {name!r}", "not_found")


class Failures:
    """Failed sign-ins per key (a name, an address), on the hub's clock."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        # key -> [first failure, failures, locked until]
        self._seen: OrderedDict[str, list[int]] = OrderedDict()

    def locked(self, *keys: str) -> bool:
        now = self.clock.ms()
        with self._lock:
            return any(key in self._seen and self._seen[key][2] > now for key in keys)

    def fail(self, *keys: str) -> None:
        now = self.clock.ms()
        with self._lock:
            for key in keys:
                entry = self._seen.pop(key, None)
                if entry is None or now - entry[0] > FAILURE_WINDOW_MS:
                    entry = [now, 0, 0]
                entry[1] += 1
                if entry[1] >= (MAX_ADDRESS_FAILURES if key.startswith("addr:") else MAX_FAILURES):
                    entry[2] = now + LOCK_MS
                self._seen[key] = entry
                while len(self._seen) > FAILURES_KEPT:
                    self._seen.popitem(last=False)

    def forget(self, key: str) -> None:
        with self._lock:
            self._seen.pop(key, None)


# -- the request's user ----------------------------------------------------------------


def _console() -> Any:
    return current_app.extensions["yizhan_console"]


def current_user() -> ConsoleUser | None:
    """The signed-in user of this request, or None (read once per request)."""
    if "console_user" in g:
        return g.console_user
    user = None
    name, epoch, seen = session.get("user"), session.get("epoch"), session.get("seen")
    if isinstance(name, str) and isinstance(epoch, int) and isinstance(seen, int):
        console = _console()
        now = console.hub.clock.ms()
        if now - seen <= console.idle_ms:
            user = console.users.get(name, epoch)
            if user is not None and now - seen > 60_000:
                session["seen"] = now  # rewritten at most once a minute
        if user is None:
            session.pop("user", None)
    g.console_user = user
    return user


def may_act_on(sid: str) -> bool:
    """Whether the signed-in user may act on station ``sid``: ops and admin on
    every station, maintenance only on stations of their groups."""
    user = current_user()
    if user is None:
        return False
    if user.has("ops"):
        return True
    view = _console().hub.fleet.get(sid)
    return view is not None and view.group is not None and view.group in user.groups


def _allowed(roles: Iterable[str]) -> frozenset[str]:
    out = set()
    for role in roles:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        out.update(ROLES[ROLES.index(role):])
    return frozenset(out)


def requires(*roles: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A view only users of at least one of ``roles`` may open: anonymous → the
    sign-in page (303), a lesser role → 403."""
    if not roles:
        raise ValueError("requires() needs a role; use @public for open pages")
    allowed = _allowed(roles)

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            user = current_user()
            if user is None:
                return redirect(url_for("console_auth.signin", next=_here()), 303)
            if user.role not in allowed:
                abort(403)
            return view(*args, **kwargs)

        wrapped.console_roles = allowed  # type: ignore[attr-defined]
        return wrapped

    return decorate


def public(view: Callable[..., Any]) -> Callable[..., Any]:
    """A page anyone may open (sign-in, the language switch, the stylesheet)."""
    view.console_roles = PUBLIC  # type: ignore[attr-defined]
    return view


def record_roles(app) -> None:
    """Fill ROUTE_ROLES from every console view's declaration (after registering)."""
    for endpoint, view in app.view_functions.items():
        roles = getattr(view, "console_roles", None)
        if roles is not None:
            ROUTE_ROLES[endpoint] = roles


def check_declared() -> None:
    """Before every console request: a view that declared no roles is refused to
    everyone — a page added without ``@requires`` fails closed, not open."""
    endpoint = request.endpoint
    if endpoint is None or endpoint == "console_static":
        return
    if endpoint not in ROUTE_ROLES:
        log.error("console endpoint %s declares no roles: refused", endpoint)
        abort(403)


def _here() -> str:
    return request.full_path.rstrip("?") if request.query_string else request.path


def safe_next(target: str | None) -> str:
    """Only a path of this console: never an open redirect to another site."""
    if (isinstance(target, str) and target.startswith("/console")
            and not target.startswith("//") and "\\" not in target and len(target) < 2048):
        return target
    return url_for("console_fleet.fleet")


# -- sign-in and out -------------------------------------------------------------------


@bp.get("/signin")
@public
def signin():
    if current_user() is not None:
        return redirect(safe_next(request.args.get("next")), 303)
    return render_template("console/signin.html", next=request.args.get("next", ""))


@bp.post("/signin")
@public
def signin_post():
    console = _console()
    name = request.form.get("name", "").strip().lower()[:MAX_NAME + 1]
    password = request.form.get("password", "")
    address = f"addr:{request.remote_addr}"
    keys = (f"name:{name}", address)
    # Counted before hashing: a locked name or address costs no scrypt.
    if console.failures.locked(*keys):
        log.warning("console sign-in refused: %s locked out", name[:MAX_NAME] or "-")
        return render_template("console/signin.html", next=request.form.get("next", ""),
                               error="locked"), 429
    found = console.users.verify(name, password)
    if found is None:
        console.failures.fail(*keys)
        log.info("console sign-in failed for %s", name[:MAX_NAME] or "-")
        return render_template("console/signin.html", next=request.form.get("next", ""),
                               error="wrong"), 401
    user, epoch = found
    console.failures.forget(keys[0])
    lang = session.get("lang")
    session.clear()  # a new session: nothing carried over from before sign-in
    if lang is not None:
        session["lang"] = lang
    session.update(user=user.name, epoch=epoch, seen=console.hub.clock.ms())
    log.info("console sign-in: %s (%s)", user.name, user.role)
    return redirect(safe_next(request.form.get("next")), 303)


@bp.post("/signout")
@public
def signout():
    user = current_user()
    if user is not None:
        # Every copy of this session's cookie ends here, not only this browser's.
        _console().users.end_sessions(user.name)
        log.info("console sign-out: %s", user.name)
    lang = session.get("lang")
    session.clear()
    if lang is not None:
        session["lang"] = lang
    flash(N_("You are signed out."), "ok")
    return redirect(url_for("console_auth.signin"), 303)
