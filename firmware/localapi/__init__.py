"""The kiosk's HTTP API on the station itself (docs/agent-api.md).

The touchscreen kiosk talks only to this API, never to the hub, so a rider can
borrow while the station is offline. It listens on loopback (the agent serves
it with waitress on ``127.0.0.1:8701``) or on a Unix socket, and refuses any
caller that is not on this machine, or that calls it by any other name than
loopback's (a ``Host`` of ``evil.example`` is DNS rebinding: 421).

    app = create_local_api(lending, state_provider, directory)
    waitress.serve(app, host="127.0.0.1", port=8701)            # or unix_socket=...

    POST /v1/borrow {"rider": "r:5e8f0c1d2e3f4a5b6c7d8e9f"}  -> 202 {"attempt": {...}}
    GET  /v1/borrow/b-1f2e3d4c5b6a7988                       -> 200 {"attempt": {...}}
    GET  /v1/openapi.json                                    -> this API in OpenAPI 3.1

Riders are named by rider id only (contract §1): the kiosk hashes the phone
number before it calls, and a phone number sent here is refused. Every bad
request gets a 4xx with ``{"error": {"code", "message"}}`` and changes nothing.

An app factory and one blueprint per resource, as the kiosk is built:
``station`` (what the home screen shows), ``borrow``, ``returns`` and
``maintenance`` (the staff screens); ``errors`` turns every refusal into the
error body, ``fields`` reads and checks request bodies, ``context`` holds what
the views share (the agent's Lending, its PIN directory, its state).
"""

from __future__ import annotations

import ipaddress
import logging

from flask import Flask, g, jsonify, request

from firmware.directory import DirectoryStore
from firmware.lending import Lending
from firmware.localapi import borrow, errors, maintenance, openapi, returns, station
from firmware.localapi.context import LocalApi, StateProvider
from firmware.localapi.errors import ApiError, error_response
from yizhan.hosts import loopback_host

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_PORT", "ApiError", "StateProvider", "create_local_api"]

DEFAULT_PORT = 8701
_MAX_BODY = 16 * 1024


def create_local_api(lending: Lending, state_provider: StateProvider,
                     directory: DirectoryStore, *, unix_socket: bool = False,
                     port: int | None = None) -> Flask:
    """The kiosk's API as a Flask app; serve it on loopback or a Unix socket.

    ``unix_socket=True`` accepts every caller: the socket file's permissions
    are then the gate (and no browser page can reach it). Otherwise a caller
    whose address is not loopback gets 403, and one whose ``Host`` is not
    127.0.0.1, localhost or [::1] (with ``port``, when given) gets 421.
    """
    app = Flask("yizhan.localapi")
    app.config["MAX_CONTENT_LENGTH"] = _MAX_BODY
    app.json.ensure_ascii = False  # station names are Chinese
    app.json.sort_keys = False
    LocalApi(lending=lending, state_provider=state_provider, directory=directory).install(app)

    @app.before_request
    def only_this_machine():
        # Logged with the counts (firmware/localapi/refusals.py), not once a call.
        if not unix_socket and not _is_local(request.remote_addr):
            g.yizhan_refused_detail = f" from {request.remote_addr}"
            return error_response(403, "forbidden", "the local API answers this machine only")
        if not unix_socket and not loopback_host(request.host, port):
            # A page rebound to 127.0.0.1 by its DNS: the browser calls us by its name.
            g.yizhan_refused_detail = f" for host {request.host[:80]!r}"
            return error_response(421, "bad_host",
                                  "the local API answers to 127.0.0.1 or localhost only")
        return None

    errors.init_app(app)
    for resource in (station, borrow, returns, maintenance):
        app.register_blueprint(resource.bp)

    @app.get(openapi.PATH)
    def openapi_json():
        # What tests/test_agent_localapi_fuzz.py holds the running agent to.
        return jsonify(openapi.document())

    return app


def _is_local(addr: str | None) -> bool:
    if not addr:
        return False
    if addr == "localhost":  # waitress names a Unix-socket peer so
        return True
    try:
        ip = ipaddress.ip_address(addr.split("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)
