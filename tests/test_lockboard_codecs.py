"""The lock boards' frame codecs, bytes in and bytes out: the known-good frames
of the public drivers as test vectors, round trips through both sides (the
driver's and the simulator's), and hostile bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware.hardware.lockboards import kerong, lock8a, modbus_io
from firmware.hardware.lockboards.base import Found

H = bytes.fromhex


# -- 8A/80 ---------------------------------------------------------------------------


def test_8a_known_good_frames():
    assert lock8a.unlock_request(1, 1) == H("8A 01 01 11 9B")
    assert lock8a.query_request(1) == H("80 01 00 33 B2")
    # Open-Locker's vectors: board 2, channel 1; and its captured 8-channel answer.
    assert lock8a.unlock_request(2, 1) == H("8A 02 01 11 98")
    assert lock8a.query_request(2) == H("80 02 00 33 B1")
    captured = H("80 01 00 00 00 33 B2")
    found = lock8a.find_query_answer(captured, 1, 1)
    assert found == Found([False] * 24, 0, 7)
    assert lock8a.query_answer(1, [False] * 24) == captured


def test_8a_status_bytes_are_highest_group_first_bit0_lowest_lock():
    # Open-Locker's test: s16-9 = 0b0101, s8-1 = 0b0000_0011.
    body = [0x80, 0x02, 0b0101, 0b0000_0011, 0x33]
    frame = bytes([*body, lock8a.bcc(body)])
    contacts = lock8a.find_query_answer(frame, 2, 1).value
    assert contacts[:4] == [True, True, False, False]
    assert contacts[8:12] == [True, False, True, False]
    assert lock8a.query_answer(2, contacts, groups=2) == frame


def test_8a_unlock_answer_reports_the_contact():
    assert lock8a.unlock_answer(1, 1, True) == H("8A 01 01 11 9B")
    assert lock8a.unlock_answer(1, 1, False) == H("8A 01 01 00 8A")
    assert lock8a.find_unlock_answer(H("8A 01 01 00 8A"), 1, 1).value is False
    # Another lock's, another board's, a bad BCC, an unknown status: not our answer.
    assert lock8a.find_unlock_answer(H("8A 01 02 11 98"), 1, 1) is None
    assert lock8a.find_unlock_answer(H("8A 02 01 11 98"), 1, 1) is None
    assert lock8a.find_unlock_answer(H("8A 01 01 11 9C"), 1, 1) is None
    body = [0x8A, 1, 1, 0x22]
    assert lock8a.find_unlock_answer(bytes([*body, lock8a.bcc(body)]), 1, 1) is None


def test_8a_answer_found_behind_noise():
    noise = H("FF 00 8A 01 8A 01 03")
    frame = lock8a.unlock_answer(1, 3, False)
    found = lock8a.find_unlock_answer(noise + frame + H("00"), 1, 3)
    assert found == Found(False, len(noise), len(noise) + 5)


def test_8a_contact_made_answer_is_the_request_itself():
    # Why the bus can drop an adapter's echo only by position (Bus(echo=True)):
    # byte for byte, nothing tells the echo from the answer.
    assert lock8a.unlock_answer(4, 9, True) == lock8a.unlock_request(4, 9)


def test_8a_a_short_query_answer_cannot_cut_a_24_lock_one():
    # Status byte 0x33 followed by the BCC of the first four bytes would end a
    # one-group frame early; a 24-lock board's answer is read at its length.
    bcc_looking = lock8a.bcc([0x80, 0x01, 0x33, 0x33])  # s24-17=0x33, then a "BCC"
    body = [0x80, 0x01, 0x33, bcc_looking, 0x00, 0x33]
    frame = bytes([*body, lock8a.bcc(body)])
    assert len(lock8a.find_query_answer(frame, 1, 3).value) == 24
    assert len(lock8a.find_query_answer(frame, 1, 1).value) == 24  # the longest fit wins


def test_8a_events_and_requests():
    ev = lock8a.event_frame(3, 7, True)
    assert ev == bytes([0x82, 3, 7, 0x11, 0x82 ^ 3 ^ 7 ^ 0x11])
    found = lock8a.find_events(H("00") + ev + lock8a.event_frame(3, 8, False))
    assert [f.value for f in found] == [(3, 7, True), (3, 8, False)]
    req = lock8a.find_request(H("12 34") + lock8a.unlock_request(5, 9))
    assert req.value == lock8a.Request(0x8A, 5, 9, 0x11) and req.start == 2


@given(
    board=st.integers(1, 32),
    contacts=st.lists(st.booleans(), min_size=1, max_size=24),
    noise=st.binary(max_size=12),
)
def test_8a_query_round_trip(board, contacts, noise):
    frame = lock8a.query_answer(board, contacts)
    found = lock8a.find_query_answer(noise + frame, board, 3)
    assert found is not None
    assert found.value[: len(contacts)] == contacts
    assert not any(found.value[len(contacts):])


@given(board=st.integers(0, 255), lock=st.integers(0, 255), contact=st.booleans())
def test_8a_unlock_round_trip(board, lock, contact):
    req = lock8a.find_request(lock8a.unlock_request(board, lock)).value
    assert (req.board, req.channel) == (board, lock)
    assert lock8a.find_unlock_answer(lock8a.unlock_answer(board, lock, contact), board,
                                     lock).value is contact


@given(st.binary(max_size=64))
def test_8a_scanners_take_any_bytes(data):
    lock8a.find_query_answer(data, 1, 1)
    lock8a.find_unlock_answer(data, 1, 1)
    lock8a.find_events(data)
    lock8a.find_request(data)


@pytest.mark.parametrize("args", [(1, 256), (-1, 1), (10**30, 1), (1, 10**30), (True, 1)])
def test_8a_refuses_values_that_are_no_byte(args):
    with pytest.raises(ValueError, match=r"0\.\.255"):
        lock8a.unlock_request(*args)


# -- Kerong KR-CU16 --------------------------------------------------------------------


def test_kerong_known_good_frames():
    assert kerong.unlock_request(0, 1) == H("02 00 31 03 36")
    assert kerong.read_request(0) == H("02 00 30 03 35")
    assert kerong.unlock_request(2, 16) == H("02 2F 31 03") + bytes([(2 + 0x2F + 0x31 + 3) & 0xFF])


def test_kerong_state_answer_is_nine_bytes_latches_then_infrared():
    frame = kerong.state_answer(1, [True] + [False] * 8 + [True], [False, True])
    assert frame[:3] == H("02 10 35") and frame[3:7] == H("01 02 02 00") and frame[7] == 0x03
    assert frame[8] == sum(frame[:8]) & 0xFF and len(frame) == 9
    state = kerong.find_state(frame, 1).value
    assert state.latches[0] and state.latches[9] and not state.latches[1]
    assert state.infrared[1] and not state.infrared[0]


def test_kerong_state_matches_the_board_nibble_only():
    frame = bytearray(kerong.state_answer(3, [], []))
    frame[1] |= 0x05  # an answer that echoes the lock in the low nibble
    frame[8] = sum(frame[:8]) & 0xFF
    assert kerong.find_state(bytes(frame), 3) is not None
    assert kerong.find_state(bytes(frame), 2) is None
    frame[8] ^= 1
    assert kerong.find_state(bytes(frame), 3) is None


@given(
    board=st.integers(0, 15),
    latches=st.lists(st.booleans(), min_size=16, max_size=16),
    infrared=st.lists(st.booleans(), min_size=16, max_size=16),
    noise=st.binary(max_size=12),
)
def test_kerong_state_round_trip(board, latches, infrared, noise):
    state = kerong.find_state(noise + kerong.state_answer(board, latches, infrared), board)
    assert state is not None
    assert list(state.value.latches) == latches and list(state.value.infrared) == infrared


@given(board=st.integers(0, 15), lock=st.integers(1, 16))
def test_kerong_request_round_trip(board, lock):
    got = kerong.find_request(kerong.unlock_request(board, lock)).value
    assert got == kerong.Request(board, lock - 1, kerong.CMD_UNLOCK)


@given(st.binary(max_size=64))
def test_kerong_scanners_take_any_bytes(data):
    kerong.find_state(data, 0)
    kerong.find_request(data)


@pytest.mark.parametrize("args", [(16, 1), (0, 0), (0, 17), (10**30, 1), (0, 10**30)])
def test_kerong_refuses_what_the_address_byte_cannot_hold(args):
    with pytest.raises(ValueError, match="KR-CU16"):
        kerong.unlock_request(*args)


# -- Modbus RTU ---------------------------------------------------------------------------


def test_modbus_known_good_frames():
    # The textbook frames: write coil 0 on, read 8 coils of unit 1.
    assert modbus_io.write_coil_request(1, 0, True) == H("01 05 00 00 FF 00 8C 3A")
    read = modbus_io.read_bits_request(1, modbus_io.READ_COILS, 0, 8)
    assert read == H("01 01 00 00 00 08 3D CC")
    assert modbus_io.exception_answer(1, 0x05, 2) == H("01 85 02 C3 51")


@given(
    unit=st.integers(1, 247),
    bits=st.lists(st.booleans(), min_size=1, max_size=64),
    function=st.sampled_from([modbus_io.READ_COILS, modbus_io.READ_INPUTS]),
)
def test_modbus_bits_round_trip(unit, bits, function):
    frame = modbus_io.bits_answer(unit, function, bits)
    assert modbus_io.find_answer(H("00 FF") + frame, unit, function, len(bits)).value == bits
    req = modbus_io.find_request(modbus_io.read_bits_request(unit, function, 0, len(bits))).value
    assert req == modbus_io.Request(unit, function, 0, len(bits))


def test_modbus_exception_and_echo_are_told_apart():
    ref = modbus_io.find_answer(modbus_io.exception_answer(1, 5, 2), 1, 5).value
    assert ref.code == 2
    echo = modbus_io.write_coil_answer(1, 3, False)
    assert modbus_io.find_answer(echo, 1, 5).value == echo
    assert modbus_io.find_answer(echo[:-1] + bytes([echo[-1] ^ 1]), 1, 5) is None


@given(st.binary(max_size=64))
def test_modbus_scanners_take_any_bytes(data):
    modbus_io.find_answer(data, 1, 1, 8)
    modbus_io.find_answer(data, 1, 5)
    modbus_io.find_request(data)


@pytest.mark.parametrize("args", [(0, 1, True), (248, 1, True), (1, 10**30, True),
                                  (10**30, 0, False)])
def test_modbus_refuses_out_of_range_values(args):
    with pytest.raises(ValueError, match="must be"):
        modbus_io.write_coil_request(*args)


# -- YZ-LB1 (contract §10): the scanner the YZLB1 driver hands the bus -------------------


def test_yzlb1_contract_vectors_through_the_scanner():
    from firmware.hardware.lockboards.yzlb1 import find_answer
    from protocol.frames import Cmd, parse_info, parse_unlock, status_request, unlock_request

    assert status_request(1) == H("A5 5A 01 02 00 21 60")
    assert unlock_request(1, 3, 500) == H("A5 5A 01 03 03 03 F4 01 32 8E")
    info = H("A5 5A 01 81 08 02 41 43 43 2D 31 2E 30 ED 03")
    assert parse_info(find_answer(b"\x00\xa5" + info, 1, Cmd.INFO).value) == (2, "ACC-1.0")
    released = H("A5 5A 01 83 02 03 00 91 74")
    refused = H("A5 5A 01 FF 02 03 04 89 27")  # error: UNLOCK, bad slot
    found = find_answer(unlock_request(1, 3, 500) + released, 1, Cmd.UNLOCK)  # our echo first
    assert (parse_unlock(found.value), found.start, found.end) == ((3, 0), 10, 19)
    assert find_answer(refused, 1, Cmd.UNLOCK).value.payload == b"\x03\x04"
    assert find_answer(refused, 1, Cmd.STATUS) is None  # an error about another request
    assert find_answer(released, 2, Cmd.UNLOCK) is None  # another board's answer
    corrupt = released[:-1] + b"\x00"
    assert find_answer(corrupt + released, 1, Cmd.UNLOCK).start == len(corrupt)


@given(st.binary(max_size=64), st.integers(0, 255))
def test_yzlb1_scanner_takes_any_bytes(data, address):
    from firmware.hardware.lockboards.yzlb1 import find_answer
    from protocol.frames import Cmd

    for cmd in (Cmd.STATUS, Cmd.UNLOCK):
        found = find_answer(data, address, cmd)
        assert found is None or 0 <= found.start < found.end <= len(data)


@given(noise=st.binary(max_size=40).filter(lambda b: b"\xa5\x5a" not in b),
       slot=st.integers(1, 15), result=st.integers(0, 3), address=st.integers(1, 15))
def test_yzlb1_unlock_answer_round_trip_behind_noise(noise, slot, result, address):
    from firmware.hardware.lockboards.yzlb1 import find_answer
    from protocol.frames import Cmd, parse_unlock, unlock_response

    frame = unlock_response(address, slot, result)
    found = find_answer(noise + frame, address, Cmd.UNLOCK)
    assert parse_unlock(found.value) == (slot, result)
    assert (found.start, found.end) == (len(noise), len(noise) + len(frame))
