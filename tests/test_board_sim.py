"""The board simulator, driven as the agent drives a real board: pyserial on the
pty, bytes built by protocol.frames, answers read off the wire."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from firmware.sim import BoardSimulator, SlotError
from protocol.frames import (
    ChargeResult,
    Cmd,
    ErrorCode,
    Frame,
    FrameDecoder,
    SlotRecord,
    UnlockResult,
    charge_request,
    encode_frame,
    info_request,
    parse_charge,
    parse_info,
    parse_status,
    parse_unlock,
    status_request,
    unlock_request,
)
from yizhan.clock import ManualClock


def open_line(port: str) -> serial.Serial:
    return serial.Serial(port, 115200, timeout=0.2)


@pytest.fixture
def line(board: BoardSimulator) -> Iterator[serial.Serial]:
    with open_line(board.port) as s:
        yield s


def ask(line: serial.Serial, request: bytes, timeout: float = 1.0) -> Frame:
    """Write one request and decode the first answer frame."""
    line.write(request)
    decoder = FrameDecoder()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frames = decoder.feed(line.read(line.in_waiting or 1))
        if frames:
            return frames[0]
    raise AssertionError(f"no answer to {request.hex(' ')} within {timeout} s")


def status(line: serial.Serial) -> dict[int, SlotRecord]:
    return {r.slot: r for r in parse_status(ask(line, status_request(1)))}


# -- the protocol, byte for byte ----------------------------------------------------


def test_info_answer_is_the_contract_test_vector(tmp_path: Path) -> None:
    with BoardSimulator(n_slots=2, firmware="ACC-1.0", link_path=tmp_path / "tty") as sim, \
            open_line(sim.port) as line:
        line.write(info_request(1))
        assert line.read(15) == bytes.fromhex("A5 5A 01 81 08 02 41 43 43 2D 31 2E 30 ED 03")


def test_info_reports_slots_and_firmware(board: BoardSimulator, line: serial.Serial) -> None:
    assert parse_info(ask(line, info_request(1))) == (12, "YZ-SIM-1.0")


def test_status_carries_one_16_byte_record_per_slot(board, line) -> None:
    answer = ask(line, status_request(1))
    assert answer.cmd == Cmd.STATUS | 0x80
    assert len(answer.payload) == 1 + 12 * 16 and answer.payload[0] == 12
    first = SlotRecord(slot=1, present=True, locked=True, charging=True, charge=57, temp_c=31,
                       cycles=10, fault=None, bank_id="PB0012A1")
    assert answer.payload[1:17] == first.pack()
    assert parse_status(answer)[0] == first == board.slot(1)


def test_an_empty_slot_reports_unknowns_and_a_zero_bank_id(board, line) -> None:
    assert parse_unlock(ask(line, unlock_request(1, 2, 500))) == (2, UnlockResult.RELEASED)
    board.take(2)
    record = ask(line, status_request(1)).payload[17:33]
    # slot 2, flags: no bank and lock still released, charge 0xFF, temp 0x7F,
    # cycles 0xFFFF, status ok, reserved, bank id all zero.
    assert record == bytes([2, 0, 0xFF, 0x7F, 0xFF, 0xFF, 0, 0]) + bytes(8)


@pytest.mark.parametrize(
    ("request_frame", "code"),
    [
        (encode_frame(1, 0x09), ErrorCode.UNKNOWN_COMMAND),
        (encode_frame(1, Cmd.INFO, b"\x00"), ErrorCode.BAD_LENGTH),
        (encode_frame(1, Cmd.UNLOCK, b"\x01\xf4"), ErrorCode.BAD_LENGTH),
        (encode_frame(1, Cmd.CHARGE, b"\x01"), ErrorCode.BAD_LENGTH),
        (status_request(1)[:-1] + b"\x00", ErrorCode.BAD_CRC),
    ],
    ids=["unknown-cmd", "info-with-payload", "short-unlock", "short-charge", "bad-crc"],
)
def test_malformed_requests_get_error_frames(board, line, request_frame, code) -> None:
    answer = ask(line, request_frame)
    assert answer.is_error
    assert (answer.request_cmd, answer.error_code) == (request_frame[3], code)
    # and the board goes on answering
    assert parse_info(ask(line, info_request(1)))[0] == 12


def test_requests_to_another_address_are_seen_but_not_answered(board, line) -> None:
    line.write(status_request(2))
    assert line.read(64) == b""  # the 200 ms timeout of the host
    assert board.wait_for_frame(Cmd.STATUS, addr=2).addr == 2
    assert parse_info(ask(line, info_request(1)))[0] == 12


def test_frames_are_dated_by_the_clock(board, line, clock: ManualClock) -> None:
    clock.advance(42)
    ask(line, info_request(1))
    assert board.wait_for_frame(Cmd.INFO).at == clock.now()


# -- locks, banks, chargers --------------------------------------------------------------


def test_unlock_releases_and_the_lock_reengages_after_the_window(board, line) -> None:
    assert parse_unlock(ask(line, unlock_request(1, 3, 500))) == (3, UnlockResult.RELEASED)
    assert status(line)[3].locked is False
    board.tick(9.9)
    assert status(line)[3].locked is False
    board.tick(0.2)
    assert status(line)[3].locked is True
    assert status(line)[3].present  # nobody took it


def test_a_shared_clock_moves_the_board_too(board, line, clock: ManualClock) -> None:
    ask(line, unlock_request(1, 3, 500))
    clock.advance(10.5)  # as the agent's tests do: one clock for everything
    assert status(line)[3].locked is True


def test_unlock_answers_bad_slot_jammed_and_busy(board, line) -> None:
    assert parse_unlock(ask(line, unlock_request(1, 0)))[1] is UnlockResult.BAD_SLOT
    assert parse_unlock(ask(line, unlock_request(1, 13)))[1] is UnlockResult.BAD_SLOT
    board.jam(4)
    assert parse_unlock(ask(line, unlock_request(1, 4)))[1] is UnlockResult.JAMMED
    assert (status(line)[4].fault, status(line)[4].locked) == ("lock_jammed", True)
    board.unjam(4)
    assert status(line)[4].fault is None
    assert parse_unlock(ask(line, unlock_request(1, 4)))[1] is UnlockResult.RELEASED
    board.busy(5)
    assert parse_unlock(ask(line, unlock_request(1, 5)))[1] is UnlockResult.BUSY
    assert status(line)[5].locked is True


def test_a_rider_takes_a_released_bank_and_returns_it(board, line) -> None:
    with pytest.raises(SlotError, match="locked"):
        board.take(6)
    ask(line, unlock_request(1, 6))
    bank = board.take(6)
    assert bank == "PB0012A6"
    emptied = status(line)[6]
    assert (emptied.present, emptied.bank_id, emptied.charge) == (False, None, None)
    with pytest.raises(SlotError, match="already"):
        board.insert(7, bank, 30)  # slot 7 is full
    board.insert(6, bank, 30)
    back = status(line)[6]
    # pushed in, the latch catches it at once, and the bank kept its cycle count
    assert (back.present, back.locked, back.bank_id, back.charge, back.cycles) == (
        True, True, bank, 30, 60)


def test_banks_charge_at_the_configured_rate_until_full(board, line) -> None:
    ask(line, unlock_request(1, 1))
    board.take(1)
    board.insert(1, "PB00FF01", 95, cycles=3)
    board.tick(60 * 3)
    assert (status(line)[1].charge, status(line)[1].charging) == (98, True)
    assert parse_charge(ask(line, charge_request(1, 1, False))) == (1, ChargeResult.OK)
    board.tick(60 * 10)
    assert (status(line)[1].charge, status(line)[1].charging) == (98, False)
    ask(line, charge_request(1, 1, True))
    board.tick(60 * 10)
    full = status(line)[1]
    assert (full.charge, full.charging, full.cycles) == (100, False, 4)
    assert parse_charge(ask(line, charge_request(1, 99, True)))[1] is ChargeResult.BAD_SLOT


def test_scripted_slot_faults_show_in_status(board, line) -> None:
    board.set_fault(8, "overheat")
    board.set_fault(9, "sensor_fault")
    board.set_fault(10, "charger_fault")
    now = status(line)
    assert (now[8].fault, now[8].temp_c, now[8].charging) == ("overheat", 65, False)
    assert (now[9].fault, now[9].temp_c, now[9].charge) == ("sensor_fault", None, None)
    assert (now[10].fault, now[10].charging) == ("charger_fault", False)
    board.set_fault(8, None)
    assert status(line)[8].fault is None
    with pytest.raises(ValueError):
        board.set_fault(8, "on_fire")


def test_simulated_riders_take_released_banks(tmp_path: Path, clock: ManualClock) -> None:
    with BoardSimulator(n_slots=3, clock=clock, link_path=tmp_path / "tty", auto_take=True,
                        realtime=True, tick_interval=0.01) as sim, open_line(sim.port) as line:
        ask(line, unlock_request(1, 2))
        clock.advance(2.5)
        # no request needed: the background ticker follows the clock
        deadline = time.monotonic() + 2
        while sim.slot(2).present and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not status(line)[2].present
        assert [(t.slot, t.bank_id) for t in sim.cabinet.taken] == [(2, "PB0012A2")]


# -- faults of the board and the line -------------------------------------------------------


def test_a_silent_board_hears_but_does_not_answer(board, line) -> None:
    board.silent(True)
    line.write(info_request(1))
    assert line.read(64) == b""
    board.wait_for_frame(Cmd.INFO)
    board.silent(False)
    assert parse_info(ask(line, info_request(1)))[0] == 12


def test_a_garbled_answer_fails_the_crc(board, line) -> None:
    board.garble_next(1)
    line.write(info_request(1))
    raw = line.read(18)
    decoder = FrameDecoder()
    assert len(raw) == 18 and decoder.feed(raw) == [] and decoder.bad_crc == 1
    assert parse_info(ask(line, info_request(1)))[0] == 12  # only the next one


def test_a_delayed_answer_misses_the_host_timeout(board, line) -> None:
    board.delay_next(0.5)
    line.write(info_request(1))
    assert line.read(64) == b""  # 200 ms: the host gives up
    late = ask(line, b"")  # and the answer turns up later
    assert late.cmd == Cmd.INFO | 0x80


def test_garbage_on_the_line_is_skipped_by_the_host(board, line) -> None:
    board.inject_garbage(b"\x00\xa5\x13\x37")
    decoder = FrameDecoder()
    line.write(info_request(1))
    frames = []
    deadline = time.monotonic() + 1
    while not frames and time.monotonic() < deadline:
        frames = decoder.feed(line.read(line.in_waiting or 1))
    assert parse_info(frames[0])[0] == 12 and decoder.garbage_bytes == 4


def test_unplug_breaks_the_open_port_and_replug_restores_the_path(board) -> None:
    link = Path(board.port)
    old = open_line(board.port)
    try:
        assert parse_info(ask(old, info_request(1)))[0] == 12
        board.unplug()
        assert not link.exists()
        with pytest.raises((serial.SerialException, OSError)):
            old.read(1)
        with pytest.raises((serial.SerialException, OSError)):
            old.write(info_request(1))
        board.replug()
        assert link.is_symlink()
        with open_line(board.port) as fresh:
            assert parse_info(ask(fresh, info_request(1)))[0] == 12
    finally:
        old.close()


def test_stop_is_idempotent_and_leaves_nothing_behind(tmp_path: Path) -> None:
    sim = BoardSimulator(link_path=tmp_path / "tty", realtime=True).start()
    slave = os.readlink(sim.port)
    sim.stop()
    sim.stop()
    assert not (tmp_path / "tty").exists()
    assert not any(t.name.startswith("board-sim") for t in threading.enumerate())
    assert not os.path.exists(slave) or not _held_by_us(slave)


def _held_by_us(device: str) -> bool:
    fds = Path("/proc/self/fd")
    return any(os.path.realpath(fd) == device for fd in fds.iterdir())


def test_several_boards_answer_on_one_line(tmp_path: Path) -> None:
    # RS-485: each board answers its own address, each with its own cabinet.
    sim = BoardSimulator(n_slots=2, address=3, addresses=(3, 5), link_path=tmp_path / "tty")
    sim.start()
    try:
        with open_line(sim.port) as line:
            assert parse_info(ask(line, info_request(5))) == (2, "YZ-SIM-1.0")
            three = parse_status(ask(line, status_request(3)))
            five = parse_status(ask(line, status_request(5)))
            assert {r.bank_id for r in three}.isdisjoint(r.bank_id for r in five)
            sim.silent(board=5)
            assert ask(line, status_request(3)).addr == 3
            with pytest.raises(AssertionError, match="no answer"):
                ask(line, status_request(5), timeout=0.3)
            sim.silent(False, board=5)
            sim.remove(3)
            with pytest.raises(AssertionError, match="no answer"):
                ask(line, unlock_request(3, 1), timeout=0.3)
            assert sim.board(3).slot(1).locked  # unpowered: it did not pulse
    finally:
        sim.stop()
    with pytest.raises(ValueError, match="share an address"):
        BoardSimulator(address=3, addresses=(3, 3))
    with pytest.raises(ValueError, match=r"1\.\.15"):
        BoardSimulator(addresses=(1, 10**30))
