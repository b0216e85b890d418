"""The far end's sound, from the speaker's owner to the microphone: the echo canceller's reference.

The screen process owns the speaker (:mod:`diemcau.media.speaker`); the uplink
process reads the microphone. For the software echo canceller
(:mod:`diemcau.media.echo`) the microphone's side needs, for every period the
speaker played, the very samples and the moment they were handed to ALSA. The
speaker sends each period as one datagram on a Unix socket: a header (the
monotonic time it was written, the sample rate) and the samples, mono S16_LE.
Datagrams keep the periods whole and never block the speaker: when no uplink
is listening (no meeting, or a box without a canceller) the send fails at once
and is counted, nothing more.

    receiver = ReferenceReceiver(path)        # the uplink binds first
    sender = ReferenceSender(path)            # the speaker sends whenever it plays
    sender.send(samples, at=time.monotonic(), rate_hz=48000)
    for at, rate_hz, samples in receiver.drain():   # non-blocking, on each microphone period
        aligner.push(samples, at)

Both processes run as the same user; the socket lives in the box's state
directory (``farend.sock``), which only that user can reach.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct

HEADER = struct.Struct("<dI")  # monotonic seconds when played, sample rate
MAX_DATAGRAM = 64 * 1024  # a period is a few kB; the header and 30 ms at 48 kHz fit many times
RECEIVE_BUFFER = 1 << 20  # ~10 s of 48 kHz mono: the microphone drains every 20 ms
SOCKET_NAME = "farend.sock"


class ReferenceSender:
    """The speaker's end: one datagram per period played; never blocks, never raises."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self.sent = 0
        self.dropped = 0  # nobody listening, or the listener's buffer full

    def send(self, samples: bytes, *, at: float, rate_hz: int) -> bool:
        try:
            self._sock.sendto(HEADER.pack(at, rate_hz) + samples, self.path)
        except OSError:  # no such socket, refused, full: the uplink does not want it now
            self.dropped += 1
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        self._sock.close()


class ReferenceReceiver:
    """The microphone's end: binds the socket (replacing a stale one) and drains it."""

    def __init__(self, path: str) -> None:
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by a process that was killed
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        self._sock.bind(path)
        self._sock.setblocking(False)
        self.malformed = 0

    def drain(self) -> list[tuple[float, int, bytes]]:
        """Every period waiting: (monotonic time played, sample rate, mono S16_LE samples)."""
        got = []
        while True:
            try:
                data = self._sock.recv(MAX_DATAGRAM)
            except BlockingIOError:
                return got
            if len(data) < HEADER.size or (len(data) - HEADER.size) % 2:
                self.malformed += 1
                continue
            at, rate_hz = HEADER.unpack_from(data)
            got.append((at, rate_hz, data[HEADER.size:]))

    def close(self) -> None:
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
