"""``yizhan console-user``: add console users, set a password, disable, list —
from the hub's own file, on the hub's database, before anyone can sign in.

Passwords are read from standard input (first line) or asked twice at a
terminal, never from the command line (where ``ps`` and the shell history see
them).
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable
from typing import TextIO

from hub.config import load_hub_config
from hub.console.auth import UserError, Users
from hub.storage.store import Store
from yizhan.clock import SYSTEM_CLOCK

__all__ = ["console_user", "read_password"]


def read_password(stdin: TextIO = sys.stdin, ask: Callable[[str], str] = getpass.getpass
                  ) -> str:
    """The new password: asked twice at a terminal, else the first line of stdin."""
    if stdin.isatty():
        first = ask("New password: ")
        if ask("Again: ") != first:
            raise UserError("the two passwords differ")
        return first
    return stdin.readline().rstrip("\r\n")


def console_user(config_path: str, action: str, name: str | None, role: str | None = None,
                 groups: str | None = None, stdin: TextIO = sys.stdin,
                 out: TextIO = sys.stdout) -> int:
    """One ``yizhan console-user`` action; 0 done, 1 refused (said on stderr)."""
    config = load_hub_config(config_path)
    store = Store(config.database)
    try:
        users = Users(store, SYSTEM_CLOCK)
        group_list = [g.strip() for g in (groups or "").split(",") if g.strip()]
        if action == "list":
            for u in users.list():
                state = "disabled" if u["disabled"] is not None else "enabled"
                print(f"{u['name']}\t{u['role']}\t{','.join(u['groups']) or '-'}\t{state}",
                      file=out)
        elif action == "add":
            users.add(name or "", read_password(stdin), role or "", group_list)
            print(f"console user {name} added ({role})", file=out)
        elif action == "password":
            users.set_password(name or "", read_password(stdin))
            print(f"password of {name} set; their sessions are ended", file=out)
        elif action in ("disable", "enable"):
            users.change(name or "", disabled=action == "disable")
            print(f"console user {name} {action}d", file=out)
        elif action == "change":
            users.change(name or "", role=role, groups=group_list if groups is not None else None)
            print(f"console user {name} changed; their sessions are ended", file=out)
    except UserError as err:
        print(f"yizhan console-user: {err}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0
