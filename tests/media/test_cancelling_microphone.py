"""The microphone with the programme's echo taken out, on real ALSA and a real Unix socket.

The room is simulated (tests/harness/room.py): the programme's speech through
a room's impulse response, captured by ALSA's ``file`` plugin as the
microphone. What the speaker played reaches the microphone's side as the
speaker sends it, through :mod:`diemcau.media.reference`, period by period,
just before the microphone reads the period in which its echo arrives.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from diemcau.config import Media
from diemcau.media.defs import MediaFault
from diemcau.media.microphone import CancellingMicrophone, Microphone
from diemcau.media.reference import HEADER, ReferenceReceiver, ReferenceSender
from tests.harness.alsa import microphone_from_samples
from tests.harness.room import erle_db, from_s16, make_room, power_db, to_s16

RATE = 48000
pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                reason="espeak-ng missing: make setup installs it")


def run_room(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, samples: np.ndarray,
             far: np.ndarray | None, canceller: str = "speex") -> tuple[np.ndarray, CancellingMicrophone]:
    """Read the whole room through a CancellingMicrophone; ``far`` is sent as it is played."""
    mic = microphone_from_samples(tmp_path / "mic", samples)
    monkeypatch.setenv("ALSA_CONFIG_PATH", mic.env["ALSA_CONFIG_PATH"])
    cancelling = CancellingMicrophone(Microphone(Media(microphone=mic.pcm)), canceller,
                                      str(tmp_path / "farend.sock"))
    speaker = ReferenceSender(str(tmp_path / "farend.sock"))
    period = cancelling.period_frames
    out = []
    cancelling.open()
    try:
        for start in range(0, len(samples) - period + 1, period):
            if far is not None:
                assert speaker.send(to_s16(far[start:start + period]), at=time.monotonic(),
                                    rate_hz=RATE)
            out.append(cancelling.read())
    finally:
        cancelling.close()
        speaker.close()
    return from_s16(b"".join(out)), cancelling


def test_the_programmes_echo_is_taken_out_of_what_the_microphone_reads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    room = make_room(RATE, 20.0)
    cleaned, _ = run_room(tmp_path, monkeypatch, room.mic, room.far)
    erle = erle_db(room, cleaned, last_s=5.0)
    print(f"\nERLE through ALSA and the reference socket, last 5 s of 20: {erle:.1f} dB")
    assert erle >= 30.0


def test_with_nothing_played_the_room_goes_through(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    room = make_room(RATE, 6.0, near_from_s=0.0, echo_dbfs=-120.0)
    cleaned, _ = run_room(tmp_path, monkeypatch, room.near + room.noise, None)
    kept = power_db(cleaned[RATE:]) - power_db((room.near + room.noise)[RATE:len(cleaned)])
    print(f"\nthe room's talker with no programme playing: {kept:+.2f} dB")
    assert kept > -1.0


def test_a_stereo_microphone_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MediaFault, match="mono microphone"):
        CancellingMicrophone(Microphone(Media(channels=2)), "speex", str(tmp_path / "s"))


def test_the_reference_socket_drops_what_it_cannot_use_and_never_blocks(tmp_path: Path) -> None:
    path = str(tmp_path / "farend.sock")
    sender = ReferenceSender(path)
    assert not sender.send(b"\0\0" * 480, at=1.0, rate_hz=RATE)  # nobody listening yet
    receiver = ReferenceReceiver(path)
    try:
        assert sender.send(b"\1\0" * 480, at=2.0, rate_hz=RATE)
        sender._sock.sendto(b"\0" * 3, path)  # noqa: SLF001 - a malformed datagram
        sender._sock.sendto(HEADER.pack(3.0, RATE) + b"\0", path)  # noqa: SLF001 - half a sample
        got = receiver.drain()
        assert [(at, rate, len(s)) for at, rate, s in got] == [(2.0, RATE, 960)]
        assert receiver.malformed == 2 and receiver.drain() == []
        assert (sender.sent, sender.dropped) == (1, 1)
    finally:
        receiver.close()
        sender.close()
    assert not Path(path).exists()
