"""LockerBoard against the YZ-LB1 board simulator, through real pyserial on a pty.

Every answer crosses a real pseudo-terminal; faults are scripted on the
simulator (garbage, garbled CRCs, silence, an unplugged adapter), never mocked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from firmware.hardware.board import BoardOffline, BoardRefused, LockerBoard, LockerError, PortInUse
from firmware.sim import BoardSimulator
from protocol.errors import BoardError, FrameError
from protocol.frames import (
    ChargeResult,
    Cmd,
    ErrorCode,
    UnlockResult,
    encode_frame,
    error_response,
    info_response,
)


@pytest.fixture
def lb(board: BoardSimulator) -> Iterator[LockerBoard]:
    b = LockerBoard(board.port)
    yield b
    b.close()


def during_answer(board: BoardSimulator, request: Callable[[], Any], cmd: int,
                  inject: bytes) -> Any:
    """Run ``request`` while the board holds its answer back 150 ms, and put
    ``inject`` on the line once the board has seen the request: bytes that land
    between our request and the real answer (the input flush cannot eat them)."""
    seen = len(board.frames_received)
    board.delay_next(0.15)
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = request()
        except Exception as err:
            out["error"] = err

    t = threading.Thread(target=run)
    t.start()
    board.wait_for_frame(cmd, after=seen)
    board.inject_garbage(inject)
    t.join(5)
    assert not t.is_alive()
    if "error" in out:
        raise out["error"]
    return out["result"]


# -- the four requests -------------------------------------------------------------


def test_info_and_status(board: BoardSimulator, lb: LockerBoard) -> None:
    assert lb.info() == (12, "YZ-SIM-1.0")
    records = lb.status()
    assert [r.slot for r in records] == list(range(1, 13))
    assert records == [board.slot(n) for n in range(1, 13)]
    assert records[0].present and records[0].locked and records[0].bank_id == "PB0012A1"


def test_status_request_is_the_contract_vector(board: BoardSimulator, lb: LockerBoard) -> None:
    lb.status()
    got = board.wait_for_frame(Cmd.STATUS).frame.encode()
    assert got == bytes.fromhex("a55a0102002160")


def test_unlock_releases_the_lock(board: BoardSimulator, lb: LockerBoard) -> None:
    assert lb.unlock(3, pulse_ms=300) is UnlockResult.RELEASED
    assert board.slot(3).locked is False
    sent = board.wait_for_frame(Cmd.UNLOCK)
    assert sent.payload == bytes([3, 0x2C, 0x01])  # slot 3, 300 ms little-endian


def test_charge_switches_the_charger(board: BoardSimulator, lb: LockerBoard) -> None:
    assert board.slot(2).charging
    assert lb.charge(2, False) is ChargeResult.OK
    assert lb.status()[1].charging is False
    assert lb.charge(2, True) is ChargeResult.OK
    assert board.slot(2).charging


def test_bad_slot_jammed_and_busy(board: BoardSimulator, lb: LockerBoard) -> None:
    assert lb.unlock(13) is UnlockResult.BAD_SLOT
    assert lb.charge(99, True) is ChargeResult.BAD_SLOT
    board.jam(4)
    assert lb.unlock(4) is UnlockResult.JAMMED
    assert lb.status()[3].fault == "lock_jammed"
    board.busy(5)
    assert lb.unlock(5) is UnlockResult.BUSY
    with pytest.raises(FrameError):  # a slot no frame can carry is refused before sending
        lb.unlock(300)


# -- noise on the line ----------------------------------------------------------------


def test_garbage_before_and_inside_the_answer_is_skipped(
    board: BoardSimulator, lb: LockerBoard
) -> None:
    # Noise, a half frame that claims 64 bytes (it swallows the start of the real
    # answer until its CRC fails), and a valid answer of another board.
    junk = b"\x00\xffnoise\xa5" + b"\xa5\x5a\x01\x82\x40" + info_response(2, 4, "OTHER")
    records = during_answer(board, lb.status, Cmd.STATUS, junk)
    assert len(records) == 12
    assert lb.bad_frames >= 1 and lb.garbage_bytes >= len(junk) - 15
    assert lb.timeouts == 0
    # and again, with garbage between two answers on the same open port
    board.inject_garbage(b"\xa5\x5a\xa5 more noise")
    assert lb.info() == (12, "YZ-SIM-1.0")


def test_a_garbled_answer_is_retried(board: BoardSimulator, lb: LockerBoard) -> None:
    board.garble_next(1)
    started = time.monotonic()
    assert lb.info() == (12, "YZ-SIM-1.0")
    assert time.monotonic() - started >= 0.2  # one full timeout, then the retry
    assert lb.bad_frames == 1 and lb.timeouts == 1
    assert len([f for f in board.frames_received if f.cmd == Cmd.INFO]) == 2


def test_three_garbled_answers_make_the_board_offline(
    board: BoardSimulator, lb: LockerBoard
) -> None:
    board.garble_next(3)
    with pytest.raises(BoardOffline, match="did not answer INFO"):
        lb.info()
    assert lb.bad_frames == 3 and lb.timeouts == 3
    assert lb.info()[0] == 12  # the line itself is fine


def test_a_malformed_answer_is_counted_and_retried(
    board: BoardSimulator, lb: LockerBoard
) -> None:
    # A valid CRC around a STATUS payload of the wrong length (firmware bug).
    bad = encode_frame(1, Cmd.STATUS | 0x80, bytes([12, 0, 0]))
    records = during_answer(board, lb.status, Cmd.STATUS, bad)
    assert len(records) == 12
    assert lb.bad_frames == 1


def test_an_error_frame_raises_board_refused(board: BoardSimulator, lb: LockerBoard) -> None:
    with pytest.raises(BoardRefused) as caught:
        during_answer(board, lb.status, Cmd.STATUS,
                      error_response(1, Cmd.STATUS, ErrorCode.UNKNOWN_COMMAND))
    err = caught.value
    assert isinstance(err, BoardError) and isinstance(err, LockerError)
    assert err.code is ErrorCode.UNKNOWN_COMMAND and err.request_cmd == Cmd.STATUS


def test_a_bad_crc_error_frame_sends_the_request_again(
    board: BoardSimulator, lb: LockerBoard
) -> None:
    # The board says our request arrived corrupt: noise hit it, so send it again.
    seen = len(board.frames_received)
    records = during_answer(board, lb.status, Cmd.STATUS,
                            error_response(1, Cmd.STATUS, ErrorCode.BAD_CRC))
    assert len(records) == 12
    # The simulator is still holding back its first answer when the request comes
    # again, and the client may take that answer and return before the simulator
    # reads the second request: wait for it rather than count what has arrived.
    board.wait_for_frame(Cmd.STATUS, after=seen + 1)
    assert [f.cmd for f in board.frames_received[seen:]] == [Cmd.STATUS, Cmd.STATUS]


# -- a silent board, a pulled adapter ---------------------------------------------------


def test_a_silent_board_is_offline_after_the_retries(
    board: BoardSimulator, lb: LockerBoard
) -> None:
    board.silent()
    with pytest.raises(BoardOffline) as caught:
        lb.status()
    assert isinstance(caught.value, ConnectionError)
    assert lb.timeouts == 3  # three attempts, each given up after its timeout
    assert len([f for f in board.frames_received if f.cmd == Cmd.STATUS]) == 3
    assert lb.is_open  # the port is fine; the board is mute
    board.silent(False)
    assert len(lb.status()) == 12


def test_unplug_then_replug_reopens_the_port(board: BoardSimulator, lb: LockerBoard) -> None:
    assert lb.info()[0] == 12
    board.unplug()
    with pytest.raises(BoardOffline, match="failed"):
        lb.status()
    assert not lb.is_open
    with pytest.raises(BoardOffline, match="does not exist"):
        lb.status()
    board.replug()
    assert len(lb.status()) == 12
    assert lb.reopen_count == 1


# -- opening the port ---------------------------------------------------------------------


def test_exclusive_open(board: BoardSimulator, lb: LockerBoard) -> None:
    lb.open()
    second = LockerBoard(board.port)
    with pytest.raises(PortInUse, match="in use by another process"):
        second.open()
    with pytest.raises(BoardOffline):  # PortInUse is a BoardOffline
        second.info()
    lb.close()
    assert second.info()[0] == 12
    second.close()


def test_close_is_idempotent_and_final_until_open(lb: LockerBoard) -> None:
    assert lb.info()[0] == 12
    lb.close()
    lb.close()
    with pytest.raises(LockerError, match="closed"):
        lb.info()
    lb.open()
    assert lb.info()[0] == 12


def test_a_missing_port(tmp_path: Any) -> None:
    b = LockerBoard(str(tmp_path / "no-such-tty"))
    with pytest.raises(BoardOffline, match="does not exist"):
        b.open()
    assert not b.is_open


def test_a_pyserial_url_and_our_own_echo(tmp_path: Any) -> None:
    # loop:// hands our request straight back, as a half-duplex adapter with
    # echo does: that is not an answer, so the request times out.
    b = LockerBoard("loop://", timeout=0.05, retries=0)
    with pytest.raises(BoardOffline, match="1 attempt,"):
        b.info()
    assert b.timeouts == 1 and b.bad_frames == 0
    b.close()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        LockerBoard("loop://", address=0)
    with pytest.raises(ValueError):
        LockerBoard("loop://", timeout=0)
