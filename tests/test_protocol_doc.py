"""The bytes docs/protocol.md shows a user are the bytes the code speaks: every
YZ-LB1 frame written in §10 decodes with a good CRC, and the named vectors are
what the frame builders make (so the documented contract cannot drift from it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from protocol import frames as f

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
FRAME = re.compile(r"`(A5 5A(?: [0-9A-F]{2})+)`")


def documented_frames() -> list[bytes]:
    return [bytes.fromhex(m.group(1)) for m in FRAME.finditer(DOC.read_text(encoding="utf-8"))
            if len(m.group(1).split()) >= 7]


def test_the_page_shows_frames():
    assert len(documented_frames()) >= 5


@pytest.mark.parametrize("raw", documented_frames(), ids=lambda b: b.hex(" ")[:23])
def test_every_documented_frame_decodes_with_its_crc(raw):
    frame = f.decode_frame(raw)
    assert f.encode_frame(frame.addr, frame.cmd, frame.payload) == raw


def test_the_named_vectors_are_what_the_builders_make():
    text = DOC.read_text(encoding="utf-8")
    assert "0x4B37" in text and f.crc16_modbus(b"123456789") == 0x4B37
    for built in (f.status_request(1), f.info_response(1, 2, "ACC-1.0"),
                  f.unlock_request(1, 3, 500), f.unlock_response(1, 3, f.UnlockResult(0)),
                  f.error_response(1, f.Cmd.UNLOCK, f.ErrorCode.BAD_SLOT)):
        assert f"`{built.hex(' ').upper()}`" in text, built.hex(" ")
