"""The ``yizhan`` command (contract §14).

    yizhan hub --config /etc/yizhan/hub.yaml
    yizhan agent --config /etc/yizhan/station.yaml
    yizhan kiosk --config /etc/yizhan/station.yaml
    yizhan sim board --link /tmp/ttyLOCKER
    yizhan sim board --protocol lock8a --boards 2 --link /tmp/tty8A
    yizhan sim month --config hub.yaml --seed 20 --from 2026-10 --months 2
    yizhan sim fleet --host BROKER --stations 1000 --truth truth.jsonl
    yizhan demo
    yizhan console-user add NAME --role ROLE [--groups g1,g2] --config hub.yaml
    yizhan provision --secrets DIR --broker-host NAME [--inventory DIR] SID...
    yizhan provision --secrets DIR --revoke SID

A bad configuration exits with status 2 and names the file, the key and the
problem.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from yizhan import __version__
from yizhan.config import ConfigError

EXIT_CONFIG = 2


def _logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _on_terminate(stop: Callable[[], None]) -> None:
    """SIGTERM (systemd stop) and SIGINT (Ctrl-C) both ask for a clean stop."""

    def handler(signum, frame):
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def cmd_hub(args: argparse.Namespace) -> int:
    from hub.config import load_hub_config
    from hub.service import Hub
    from hub.storage.store import StoreError
    from yizhan.watchdog import Notifier

    config = load_hub_config(args.config)
    try:
        hub = Hub(config, notifier=Notifier.from_env())
    except StoreError as err:
        # The database cannot be used (unreachable, a migration failed, a
        # SQLAlchemy without what the writer needs): say so, no traceback.
        print(f"yizhan hub: cannot use the database: {err}", file=sys.stderr)
        return 1

    def stop() -> None:
        # waitress's loop ends on SystemExit raised in the main thread.
        raise SystemExit(0)

    _on_terminate(stop)
    logging.getLogger("yizhan").info("hub starting, mqtt %s", config.mqtt.redacted())
    hub.run()
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    from firmware.agent import Agent
    from firmware.config import load_station_config
    from firmware.hardware.station import build_hardware
    from yizhan.clock import SYSTEM_CLOCK

    config = load_station_config(args.config)
    hardware = build_hardware(config, SYSTEM_CLOCK)
    try:
        agent = Agent(config, SYSTEM_CLOCK, hardware)
    except BaseException:
        hardware.close()
        raise
    _on_terminate(agent.stop)
    logging.getLogger("yizhan").info("agent %s starting, mqtt %s", config.sid,
                                     config.mqtt.redacted())
    agent.run()
    return 0


def cmd_kiosk(args: argparse.Namespace) -> int:
    from waitress.server import create_server

    from kiosk import create_app
    from kiosk.config import load_kiosk_config
    from kiosk.security import PhoneRedactor

    config = load_kiosk_config(args.config)
    for handler in logging.getLogger().handlers:
        handler.addFilter(PhoneRedactor())  # belt and braces: the kiosk never logs one
    app = create_app(config)
    server = create_server(app, host=config.host, port=config.port, threads=4,
                           ident="yizhan-kiosk")

    def stop() -> None:
        # waitress's loop ends on SystemExit raised in the main thread.
        raise SystemExit(0)

    _on_terminate(stop)
    logging.getLogger("yizhan").info(
        "kiosk for %s on http://%s:%s, agent at %s", config.sid, config.host,
        server.effective_port, config.api_socket or config.api_url)
    try:
        server.run()
    finally:
        server.close()
    return 0


def cmd_sim_board(args: argparse.Namespace) -> int:
    if args.protocol == "yz-lb1":
        from firmware.sim.board import BoardSimulator

        address = 1 if args.address is None else args.address
        try:
            if args.boards < 1:
                raise ValueError(f"--boards must be at least 1, got {args.boards}")
            # Several boards answer on one line, each its own address (RS-485).
            sim = BoardSimulator(n_slots=args.slots, address=address, link_path=args.link,
                                 addresses=range(address, address + args.boards),
                                 realtime=True, auto_take=args.auto_take)
        except ValueError as err:
            print(f"yizhan sim board: {err}", file=sys.stderr)
            return EXIT_CONFIG
        what = f"YZ-LB1 address {address}, {args.slots} slots"
        if args.boards > 1:
            what = f"YZ-LB1 x{args.boards} from address {address}, {args.slots} slots each"
    else:
        from firmware.sim.lockboards import PROTOCOLS, line_sim

        try:
            sim = line_sim(args.protocol, boards=args.boards, locks=args.locks,
                           address=args.address, locked_when=args.locked_when,
                           events=args.events, link_path=args.link)
        except ValueError as err:
            print(f"yizhan sim board: {err}", file=sys.stderr)
            return EXIT_CONFIG
        first = PROTOCOLS[args.protocol][0] if args.address is None else args.address
        what = f"{args.protocol} x{args.boards} from address {first}"
    # The handler goes in before the line that says we are ready: a SIGTERM sent
    # on reading it must stop us cleanly, not kill us with the default action.
    done = threading.Event()
    _on_terminate(done.set)
    sim.start()
    try:
        print(f"board simulator: {what}, on {sim.port}", flush=True)
        # A timed wait, not signal.pause(): a signal landing between the check and
        # pause() would leave it waiting for a second one.
        while not done.wait(0.5):
            pass
    finally:
        sim.stop()
    return 0


def cmd_sim_month(args: argparse.Namespace) -> int:
    from hub.simulate import run

    return run(args.config, args.seed, args.start, args.months, args.log)


def cmd_sim_fleet(args: argparse.Namespace) -> int:
    from firmware.sim.fleet.run import run

    return run(args)


def cmd_console_user(args: argparse.Namespace) -> int:
    from hub.console.accounts import console_user

    if args.action not in ("list",) and not args.name:
        print(f"yizhan console-user {args.action}: give the user's NAME", file=sys.stderr)
        return EXIT_CONFIG
    return console_user(args.config, args.action, args.name, args.role, args.groups)


def cmd_provision(args: argparse.Namespace) -> int:
    from yizhan.provision import Fleet, ProvisionError, provision

    if bool(args.vault) != bool(args.vault_password_file):
        print("yizhan provision: --vault and --vault-password-file go together",
              file=sys.stderr)
        return EXIT_CONFIG
    made = []
    try:
        fleet = Fleet(args.secrets)
        if args.revoke:
            crl = fleet.revoke(args.revoke)
            print(f"revoked {args.revoke}; apply the playbook to give the broker {crl}")
        elif args.crl:
            print(f"CRL re-issued: {fleet.write_crl()}")
        else:
            made = provision(args.secrets, args.sids, broker_hosts=args.broker_host or [],
                             inventory=args.inventory, password=args.password,
                             name=args.name, group=args.group, reissue=args.reissue)
        if args.vault:
            print(f"vault: {fleet.write_vault(args.vault, args.vault_password_file)}")
    except ProvisionError as err:
        print(f"yizhan provision: {err}", file=sys.stderr)
        return EXIT_CONFIG
    for identity in made:
        print(f"{identity.sid}: {identity.cert_file}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from yizhan.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="yizhan",
        description="Yizhan (驿站): run a rest station's agent or kiosk, the fleet hub, "
                    "a simulation, or the whole demo.",
    )
    p.add_argument("--version", action="version", version=f"yizhan {__version__}")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"], help="default: info")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    h = sub.add_parser("hub", help="the fleet hub: ingest, uptime, alerts, API, metrics",
                       description="Run the hub: MQTT ingest, store, uptime ledger, "
                                   "HTTP API and /metrics, from a hub YAML file.")
    h.add_argument("--config", required=True, metavar="FILE", help="hub configuration (YAML)")
    h.set_defaults(func=cmd_hub)

    a = sub.add_parser("agent", help="the station agent on the station's Raspberry Pi",
                       description="Run the station agent: watch the locker board, "
                                   "dispenser and doors, keep the heater safe, report to "
                                   "the hub over MQTT.")
    a.add_argument("--config", required=True, metavar="FILE",
                   help="station configuration (YAML)")
    a.set_defaults(func=cmd_agent)

    k = sub.add_parser("kiosk", help="the touchscreen kiosk on the station's screen",
                       description="Run the station's touchscreen kiosk (borrow and return "
                                   "a power bank, staff restock) with waitress on loopback, "
                                   "from the same station YAML file as the agent; it talks "
                                   "only to the agent's local API.")
    k.add_argument("--config", required=True, metavar="FILE",
                   help="station configuration (YAML)")
    k.set_defaults(func=cmd_kiosk)

    s = sub.add_parser("sim", help="simulated hardware for development",
                       description="Simulated station hardware.")
    ssub = s.add_subparsers(dest="sim_command", required=True, metavar="PART")
    b = ssub.add_parser("board", help="a locker board on a pseudo-terminal",
                        description="Run a locker board simulator on a pseudo-terminal: "
                                    "YZ-LB1 (default), an 8A/80 bus, a Kerong KR-CU16 "
                                    "chain or a Modbus RTU relay/IO module; point the "
                                    "station's serial port at the --link path "
                                    "(docs/hardware.md).")
    b.add_argument("--protocol", default="yz-lb1",
                   choices=("yz-lb1", "lock8a", "kerong-cu16", "modbus-io"),
                   help="what the board speaks (default yz-lb1)")
    b.add_argument("--link", required=True, metavar="PATH",
                   help="symlink to create for the serial device")
    b.add_argument("--slots", type=int, default=12,
                   help="yz-lb1: number of slots (default 12)")
    b.add_argument("--address", type=int, default=None,
                   help="(first) board address: yz-lb1 1-15 (default 1), lock8a DIP 1-32 "
                        "(default 1), kerong-cu16 0-9 (default 0), modbus-io 1-247 (default 1)")
    b.add_argument("--boards", type=int, default=1,
                   help="boards on the line at consecutive addresses (default 1)")
    b.add_argument("--locks", type=int, default=None,
                   help="locks a board (lock8a 24, kerong-cu16 16) or modbus-io channels (8)")
    b.add_argument("--locked-when", choices=("closed", "open"), default="closed",
                   help="lock8a/kerong-cu16: the feedback contact that means locked")
    b.add_argument("--events", action="store_true",
                   help="lock8a: send an 0x82 frame when a contact changes")
    b.add_argument("--auto-take", action="store_true",
                   help="yz-lb1: a released bank is taken by a simulated rider")
    b.set_defaults(func=cmd_sim_board)
    mo = ssub.add_parser("month", help="months of simulated stations in a hub's database",
                         description="Run the hub's configured stations through whole "
                                     "months (visits, loans, water, outages) on a "
                                     "simulated clock, with a fixed seed, into the hub's "
                                     "database, for the service report (docs/report.md). "
                                     "Refuses a database that already holds events.")
    mo.add_argument("--config", required=True, help="hub configuration (YAML)")
    mo.add_argument("--seed", type=int, default=20, help="random seed (default 20)")
    mo.add_argument("--from", dest="start", required=True, metavar="YYYY-MM",
                    help="the first month")
    mo.add_argument("--months", type=int, default=1, help="how many months (default 1)")
    mo.add_argument("--log", metavar="FILE",
                    help="also write every event sent, and the outages, as JSON lines")
    mo.set_defaults(func=cmd_sim_month)
    fl = ssub.add_parser("fleet", help="1 to 100 000 simulated stations on any broker",
                         description="Simulated stations as MQTT clients speaking the "
                                     "contract (births, States, events, wills, replays) "
                                     "against a broker, with riders by the hour and "
                                     "scripted or random faults; a ground-truth log to "
                                     "hold against the hub; --processes N for more "
                                     "than one process holds (docs/simulator.md).")
    from firmware.sim.fleet.run import add_arguments

    add_arguments(fl)
    fl.set_defaults(func=cmd_sim_fleet)

    c = sub.add_parser("console-user", help="people who sign in to the hub's web console",
                       description="Add, change, disable or list the hub console's users "
                                   "(docs/console.md). A password is read from standard "
                                   "input (first line) or asked at the terminal, never "
                                   "given on the command line.")
    c.add_argument("action", choices=["add", "password", "change", "disable", "enable", "list"])
    c.add_argument("name", nargs="?", help="the user's name: a-z 0-9 . _ -")
    c.add_argument("--config", required=True, metavar="FILE", help="hub configuration (YAML)")
    c.add_argument("--role", choices=["admin", "ops", "maintenance"],
                   help="admin: everything; ops: all but users and tokens; "
                        "maintenance: alerts, stations and refills of their groups")
    c.add_argument("--groups", metavar="G1,G2",
                   help="the groups a maintenance user acts on, comma-separated")
    c.set_defaults(func=cmd_console_user)

    pv = sub.add_parser("provision", help="the fleet CA and one broker identity per station",
                        description="Make the fleet key, the fleet CA and the broker's "
                                    "certificate (once), then a key and certificate "
                                    "(CN = sid) for each SID and its inventory entry; or "
                                    "revoke a station. Secrets go only into --secrets, "
                                    "which must be outside any git checkout "
                                    "(docs/deploy.md).")
    pv.add_argument("sids", nargs="*", metavar="SID", help="stations to provision")
    pv.add_argument("--secrets", required=True, metavar="DIR",
                    help="the fleet's secrets directory (outside the repository)")
    pv.add_argument("--broker-host", action="append", metavar="NAME",
                    help="a name or address stations reach the broker by (repeatable; "
                         "needed on the first run)")
    pv.add_argument("--inventory", metavar="DIR",
                    help="Ansible inventory directory: host_vars/<sid>.yml is written there")
    pv.add_argument("--name", help="the station's display name (default: its sid)")
    pv.add_argument("--group", help="the station's group (default: default)")
    pv.add_argument("--password", action="store_true",
                    help="also a broker password per station (mosquitto_station_auth: "
                         "password)")
    pv.add_argument("--reissue", action="store_true",
                    help="a new identity for a revoked station (a replaced Pi)")
    pv.add_argument("--vault", metavar="FILE",
                    help="also write every secret into this ansible-vault file "
                         "(e.g. inventory/<fleet>/group_vars/all/vault.yml)")
    pv.add_argument("--vault-password-file", metavar="FILE",
                    help="the vault's password file (ansible-vault's option)")
    pv.add_argument("--revoke", metavar="SID", help="put SID's certificate on the CRL")
    pv.add_argument("--crl", action="store_true",
                    help="re-issue the CRL before its next-update date")
    pv.set_defaults(func=cmd_provision)

    d = sub.add_parser("demo", help="broker, hub and simulated stations on this machine",
                       description="Start a private MQTT broker, the hub and simulated "
                                   "stations, print the URLs, and stop everything on Ctrl-C.")
    d.add_argument("--dir", default="run/demo", help="working directory (default run/demo)")
    d.add_argument("--stations", type=int, default=3, help="simulated stations (default 3)")
    d.add_argument("--http-port", type=int, default=8080, help="hub HTTP port (default 8080)")
    d.add_argument("--mqtt-port", type=int, default=0,
                   help="broker port (default: a free one)")
    d.add_argument("--station-ports", type=int, default=8700, metavar="PORT",
                   help="station i's kiosk on PORT+10i, its local API on the next "
                        "(default 8700; 0: any free ports)")
    d.add_argument("--broker", choices=["auto", "mosquitto", "embedded"], default="auto",
                   help="auto: Mosquitto when installed, else the embedded broker")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _logging(args.log_level)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"yizhan {args.command}: bad configuration: {err}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
