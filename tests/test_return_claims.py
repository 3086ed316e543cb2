"""Returns at a cabinet that cannot read bank ids (issue 18): the rider claims the
return, a slot opens for them, the bank that arrives in it is theirs.

Through the real parts on one ManualClock: the lock-control board simulators on
pseudo-terminals (an 8A/80 bus, whose presence is derived from the door, and a
KR-CU16 chain with its infrared occupancy sensors) with the Modbus relay module,
the real Cabinet, Locker, Lending and Journal in tmp_path. The test's hands are
the rider's (``sim.take``, ``sim.shut``, ``sim.insert``); events are read back
from the journal file, where the outbox finds them.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from firmware.config import LockerConfig
from firmware.directory import DirectoryStore
from firmware.hardware.board import BoardOffline
from firmware.hardware.cabinet import build_cabinet
from firmware.journal import Journal
from firmware.lending import Lending
from firmware.locker import Locker
from firmware.parts import RecordingReporter
from firmware.returning import ReturnClaim
from firmware.sim.cabinet import CabinetSim
from tests.test_lending import (
    RIDER,
    RIDER_2,
    StationFactory,
    directory,
    stations,  # noqa: F401  (fixture)
    wait_until,
)
from yizhan.clock import ManualClock
from yizhan.config import Section

CHARGE_TIME = 3600.0
DRIVERS = ("lock8a", "kerong-cu16")


def lockers(driver: str, slots: int = 3) -> LockerConfig:
    config = LockerConfig.from_section(Section({
        "driver": driver, "slots": slots,
        "charging": {"driver": "modbus-io", "port": "sim", "charge_time": "1h"},
    }, "lockers"), sim=True)
    assert config is not None and config.charging.charge_time == CHARGE_TIME
    return config


@dataclass
class Cabinet:
    sim: CabinetSim
    clock: ManualClock
    journal: Journal
    locker: Locker
    lending: Lending

    def sync(self) -> None:
        self.locker.refresh()

    def data(self, type_: str) -> list[dict]:
        with sqlite3.connect(self.journal.path) as db:
            rows = db.execute("SELECT type, data FROM events ORDER BY seq").fetchall()
        return [json.loads(d) for t, d in rows if t == type_]

    def claim(self, claim_id: str, *states: str) -> ReturnClaim:
        def reached():
            c = self.lending.return_desk.claim(claim_id)
            return c if c is not None and c.state in states else None

        return wait_until(reached, 3.0, f"claim {claim_id} to be {states}")

    def charged_bank_in(self, slot: int) -> None:
        """Staff push a bank into ``slot`` and it charges for the whole charge time."""
        session = self.lending.start_maintenance("li", "2468")
        session.release_slot(slot)
        self.sim.insert(slot)
        self.sync()
        session.end()
        self.sync()  # the coil switched on; counted from the next look on
        self.clock.advance(CHARGE_TIME)
        self.sync()
        [ready] = [r for r in self.locker.slots() if r.slot == slot]
        assert ready.present and ready.estimated and ready.charge == 100

    def borrow(self, rider: str) -> int:
        a = self.lending.borrow(rider)
        a = wait_until(lambda: (x := self.lending.attempt(a.id)) and x.state == "open" and x,
                       3.0, "the slot open")
        self.sim.take(a.slot)
        self.sim.shut(a.slot)
        self.sync()
        wait_until(lambda: self.lending.attempt(a.id).state == "taken", 3.0, "taken")
        return a.slot

    def close(self) -> None:
        self.lending.close()
        self.locker.close()
        self.journal.close()


@pytest.fixture
def make(clock: ManualClock, tmp_path: Path) -> Iterator:
    made: list[Cabinet] = []
    sims: list[CabinetSim] = []

    def build(driver: str, data_dir: Path | None = None, sim: CabinetSim | None = None,
              **options) -> Cabinet:
        config = lockers(driver)
        if sim is None:
            sim = CabinetSim(config, link_dir=tmp_path, clock=clock, filled=False).start()
            sims.append(sim)
        data_dir = data_dir or tmp_path / "data"
        cabinet = build_cabinet(config, data_dir, clock, bus_ports=sim.ports,
                                charging_port=sim.charging_port)
        reporter = RecordingReporter()
        journal = Journal(data_dir)
        locker = Locker(cabinet, reporter, clock)
        store = DirectoryStore(data_dir / "directory.json", clock)
        store.apply(directory())
        lending = Lending(locker, journal, reporter, clock, store, **options)
        c = Cabinet(sim, clock, journal, locker, lending)
        made.append(c)
        locker.start()
        c.sync()
        return c

    yield build
    for c in reversed(made):
        c.close()
    for s in sims:
        s.stop()


@pytest.mark.parametrize("driver", DRIVERS)
def test_the_claimed_slot_takes_the_bank_back_and_closes_the_riders_loan(make, driver) -> None:
    cab = make(driver)
    assert cab.lending.return_desk.needed  # estimated slots: no bank ids here
    cab.charged_bank_in(2)
    assert cab.borrow(RIDER) == 2
    [lent] = cab.data("bank_borrowed")
    assert lent["bank"] is None and lent["rider"] == RIDER
    [loan] = cab.lending.open_loans(RIDER)
    cab.clock.advance(600)

    claim = cab.lending.return_desk.expect(RIDER)
    assert claim.state in ("opening", "open") and claim.slot == 1  # the lowest empty slot
    assert cab.lending.return_desk.expect(RIDER).id == claim.id  # a second tap
    opened = cab.claim(claim.id, "open")
    assert opened.open_until == cab.clock.ms() + 120_000
    assert cab.data("bank_returned") == []  # open is not returned
    cab.sim.insert(1)
    cab.sync()

    done = cab.claim(claim.id, "returned")
    assert done.loan_closed and done.duration_s == 600 and done.borrowed_ts == loan.borrowed_ts
    [back] = cab.data("bank_returned")
    assert back == {"slot": 1, "bank": None, "charge": None, "rider": RIDER,
                    "borrowed_ts": loan.borrowed_ts, "duration_s": 600}
    assert cab.lending.open_loans() == []
    [r] = cab.lending.recent_returns(0)
    assert (r.slot, r.bank, r.rider, r.duration_s) == (1, None, RIDER, 600)


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_return_of_a_bank_lent_elsewhere_names_the_rider_for_the_hub(make, driver) -> None:
    cab = make(driver)
    claim = cab.lending.return_desk.expect(RIDER_2)
    cab.claim(claim.id, "open")
    cab.sim.insert(claim.slot)
    cab.sync()
    done = cab.claim(claim.id, "returned")
    assert not done.loan_closed and done.duration_s is None
    assert cab.data("bank_returned") == [
        {"slot": claim.slot, "bank": None, "charge": None, "rider": RIDER_2}]


def test_a_bankless_loan_survives_a_restart_and_the_claim_after_it_closes_it(
        make, tmp_path: Path) -> None:
    cab = make("kerong-cu16")
    cab.charged_bank_in(1)
    cab.borrow(RIDER)
    cab.close()
    again = make("kerong-cu16", data_dir=tmp_path / "data", sim=cab.sim)
    [loan] = again.lending.open_loans(RIDER)
    assert loan.bank is None
    claim = again.lending.return_desk.expect(RIDER)
    again.claim(claim.id, "open")
    again.sim.insert(claim.slot)
    again.sync()
    assert again.claim(claim.id, "returned").loan_closed
    assert again.lending.open_loans() == []
    with sqlite3.connect(again.journal.path) as db:
        assert db.execute("SELECT closed_by FROM loans").fetchall() == [("returned",)]


def test_a_bank_in_a_slot_nobody_claimed_is_a_return_without_a_rider(make) -> None:
    # KR-CU16's infrared sensor sees a bank pushed in past the latch (or through
    # a door left open): a fact, counted, with nobody to name.
    cab = make("kerong-cu16")
    cab.sim.fill(3)
    cab.sync()
    assert cab.data("bank_returned") == [{"slot": 3, "bank": None, "charge": None, "rider": None}]


@pytest.mark.parametrize("driver", DRIVERS)
def test_the_window_passes_and_the_claim_fails_not_returned(make, driver) -> None:
    cab = make(driver)
    claim = cab.lending.return_desk.expect(RIDER)
    cab.claim(claim.id, "open")
    cab.clock.advance(119)
    cab.lending.poll()
    assert cab.lending.return_desk.claim(claim.id).state == "open"
    cab.clock.advance(1)
    cab.lending.poll()
    failed = cab.lending.return_desk.claim(claim.id)
    assert (failed.state, failed.reason) == ("failed", "not_returned")
    # A bank that arrives after the window is no one's.
    cab.sim.insert(claim.slot)
    cab.sync()
    assert cab.data("bank_returned")[-1]["rider"] is None


def test_refusals(make) -> None:
    cab = make("kerong-cu16")
    with pytest.raises(ValueError):
        cab.lending.return_desk.expect("13800138000")  # a phone number, not a rider id
    with pytest.raises(ValueError):
        cab.lending.return_desk.expect("r:" + "0" * 10**6)
    for n in (1, 2, 3):
        cab.sim.fill(n)
    cab.sync()
    full = cab.lending.return_desk.expect(RIDER)
    assert (full.state, full.reason, full.slot) == ("failed", "full", None)
    assert all(cab.sim.lock(n).locked for n in (1, 2, 3))  # nothing opened


def test_a_jammed_slot_fails_the_claim_and_the_next_gets_another(make) -> None:
    cab = make("kerong-cu16")
    line, address, lock = cab.sim.where(1)
    line.jam(address, lock)
    claim = cab.lending.return_desk.expect(RIDER)
    failed = cab.claim(claim.id, "failed")
    assert (failed.reason, failed.slot) == ("jammed", 1)
    assert cab.data("unlock_failed") == [{"slot": 1, "reason": "jammed"}]
    again = cab.lending.return_desk.expect(RIDER)
    assert again.slot == 2


def test_a_cabinet_that_reads_bank_ids_needs_no_claim(stations: StationFactory) -> None:  # noqa: F811
    station = stations.make()  # the YZ-LB1 simulator
    assert not station.lending.return_desk.needed
    claim = station.lending.return_desk.expect(RIDER)
    assert (claim.state, claim.reason) == ("failed", "not_needed")


def test_the_local_api_claims_and_follows_a_return(make, stations: StationFactory) -> None:  # noqa: F811
    from firmware.localapi import create_local_api

    cab = make("lock8a")
    client = create_local_api(cab.lending, lambda: {"name": "x"},
                              cab.lending.directory).test_client()
    assert client.get("/v1/station").get_json()["return_by"] == "rider"
    for body, code in (({}, "missing_field"), ({"rider": "13800138000"}, "bad_rider"),
                       ({"rider": 10**30}, "bad_rider"), ({"rider": ["r:"]}, "bad_rider"),
                       ({"rider": "r:" + "a" * 2000}, "bad_rider")):
        r = client.post("/v1/returns/claim", json=body)
        assert r.status_code == 400 and r.get_json()["error"]["code"] == code, body
    r = client.post("/v1/returns/claim", json={"rider": "r:" + "a" * 10**6})
    assert r.status_code == 413  # the body limit, before any field is read
    r = client.post("/v1/returns/claim", json={"rider": RIDER})
    assert r.status_code == 202
    claim = r.get_json()["claim"]
    assert claim["rider"] == RIDER and claim["slot"] == 1
    wait_until(lambda: client.get(f"/v1/returns/claim/{claim['id']}")
               .get_json()["claim"]["state"] == "open", 3.0, "the slot open")
    r = client.get("/v1/returns/claim/" + "t-" + "0" * 5000)
    assert r.status_code == 404 and len(r.get_data()) < 400
    assert r.get_json()["error"]["code"] == "unknown_claim"

    yz = stations.make()
    yz_client = create_local_api(yz.lending, lambda: {"name": "x"}, yz.directory).test_client()
    assert yz_client.get("/v1/station").get_json()["return_by"] == "bank"


def test_a_silent_cabinet_fails_the_claim_and_opens_nothing(make) -> None:
    cab = make("kerong-cu16")
    line, address, _ = cab.sim.where(1)
    line.silent(address)
    for _ in range(3):  # three failed polls in a row: locker_offline
        with contextlib.suppress(BoardOffline):
            cab.sync()
    assert not cab.locker.online
    claim = cab.lending.return_desk.expect(RIDER)
    assert (claim.state, claim.reason) == ("failed", "board_offline")
    assert all(cab.sim.lock(n).locked for n in (1, 2, 3))
