"""The room's speaker, one owner: the programme's sound and the box's prompts, mixed.

HDMI audio on a Pi takes one client and has no software mixing (no dmix), so
the screen process owns the speaker and nothing else opens it. The player
(mpv, ``ao=sdl`` with SDL's ``disk`` driver, :func:`player_sound_env`) writes
the programme as S16_LE stereo into a FIFO. :class:`Speaker`'s thread reads what that
FIFO holds, mixes in the prompt waiting (ducking the programme under it) and
writes the real speaker with pyalsaaudio, what one read gave in one write. The programme comes at its
volume already (mpv's ``volume``, see :func:`mpv_volume`): with no prompt
playing, a period goes to the speaker untouched.

The speaker's pace is the player's clock: mpv's writes block while the small
FIFO (``F_SETPIPE_SZ``) is full, and the FIFO empties only as fast as the
speaker plays. So the player's audio clock, which its pictures follow, runs
at the speaker's clock: no drift between picture and sound, whatever the
HDMI clock does. What sits between mpv and the ear (the FIFO, this thread,
the speaker's buffer) is measured as ``delay_s``; the screen process gives it
to mpv as a negative ``audio-delay``, so the pictures wait for the sound. On a
device that takes samples faster than real time (ALSA's ``null``/``file``
plugins in a lab) this thread keeps real time itself.

``on_played(samples, heard_at)`` is the tap for an echo canceller: it gets
every period exactly as written to the speaker, with the wall-clock time it
is expected to be heard.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import os
import select
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("diemcau.media.speaker")

CHANNELS = 2
BYTES_PER_FRAME = 2 * CHANNELS
PERIOD_S = 0.010
PIPE_BYTES = 4096  # the smallest a pipe gets: ~21 ms at 48 kHz stereo
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux), not named by Python 3.11


def mpv_volume(percent: int) -> float:
    """mpv's ``volume`` for a linear programme gain of ``percent`` % (``audio.volume``).

    mpv's software volume is cubic (gain = (volume/100)³): 50 % here is 79.4 there, -6 dB.
    """
    return 100 * (max(0, min(100, percent)) / 100) ** (1 / 3)


def player_sound_env(fifo: str) -> dict[str, str]:
    """The environment that makes the player's sound (mpv ``ao=sdl``) go into ``fifo``.

    SDL's ``disk`` audio driver writes what the player's callback gives it into a
    file; with no delay of its own it is paced by the FIFO's blocking writes, that
    is by the speaker.
    """
    return {"SDL_AUDIODRIVER": "disk", "SDL_DISKAUDIOFILE": fifo, "SDL_DISKAUDIODELAY": "0"}


def make_fifo(path: str) -> None:
    """A FIFO at ``path`` (an existing one is reused)."""
    try:
        os.mkfifo(path, 0o600)
    except FileExistsError:
        if not stat.S_ISFIFO(os.stat(path).st_mode):
            raise


class Speaker:
    """Reads the programme from ``fifo``, mixes prompts in, writes the ALSA PCM ``device``."""

    def __init__(self, device: str, fifo: str, *, rate_hz: int = 48000, buffer_ms: int = 40,
                 duck_db: float = -18.0, reopen_s: float = 5.0,
                 on_played: Callable[[bytes, float], None] | None = None) -> None:
        self.device = device
        self.reopen_s = reopen_s  # a speaker missing or unplugged: tried again this often
        self.rate_hz = rate_hz
        self.period_frames = int(rate_hz * PERIOD_S)
        self.period_bytes = self.period_frames * BYTES_PER_FRAME
        self.periods = max(2, buffer_ms // int(PERIOD_S * 1000))
        self._buffer_s = self.periods * PERIOD_S
        self._fifo_s = PIPE_BYTES / BYTES_PER_FRAME / rate_hz  # the FIFO stays full: mpv waits on it
        self.duck = 10 ** (duck_db / 20)
        self.on_played = on_played
        self.error = ""
        self.underruns = 0
        self.delay_s = 0.0  # what the speaker held after the last write
        self._fifo_fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # RDWR: never an EOF
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._fifo_fd, F_SETPIPE_SZ, PIPE_BYTES)
        self._prompts: collections.deque[bytes] = collections.deque()
        self._prompt_left = bytearray()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="speaker")
        self._pcm: Any = None
        self._reopen_at = 0.0
        self._anchor = 0.0
        self._written = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():  # stopped before it started: nothing to wait for
            self._thread.join(2)
        with contextlib.suppress(OSError):
            os.close(self._fifo_fd)

    def prompt(self, samples: bytes, rate_hz: int, channels: int) -> None:
        """Queue S16_LE PCM (any rate, 1 or 2 channels), converted to the speaker's format."""
        converted = _to_speaker(samples, rate_hz, channels, self.rate_hz)
        with self._lock:
            self._prompts.append(converted)

    @property
    def prompting(self) -> bool:
        """A prompt is waiting or playing."""
        with self._lock:
            return bool(self._prompt_left or self._prompts)

    # -- the thread

    def _open(self) -> Any:
        import alsaaudio

        self._reopen_at = time.monotonic() + self.reopen_s
        try:
            pcm = alsaaudio.PCM(type=alsaaudio.PCM_PLAYBACK, mode=alsaaudio.PCM_NORMAL,
                                device=self.device, rate=self.rate_hz, channels=CHANNELS,
                                format=alsaaudio.PCM_FORMAT_S16_LE,
                                periodsize=self.period_frames, periods=self.periods)
        except alsaaudio.ALSAAudioError as exc:
            error = f"cannot open the speaker {self.device!r}: {exc}"
            if error != self.error:  # said once, not at every try
                log.error("%s; trying again every %g s", error, self.reopen_s)
            self.error = error
            return None
        if self.error:
            log.warning("the speaker %r is back (it was: %s)", self.device, self.error)
            self.error = ""
        return pcm

    def _run(self) -> None:
        self._pcm = self._open()
        self._anchor = time.monotonic()
        self._written = 0  # frames since the anchor
        quiet_since = self._anchor
        fd = self._fifo_fd
        # One buffer for every read: no allocation per pass. It starts with what is left of a
        # frame cut by the last read (``kept`` bytes; a FIFO hands over any number of bytes).
        buffer = bytearray(BYTES_PER_FRAME + PIPE_BYTES)
        view = memoryview(buffer)
        kept = 0
        while not self._stopping.is_set():
            # Back from the speaker (a blocking write, or the lab's sleep) the FIFO is full
            # again, mpv blocked on it: read first, and wait on it only when it is empty. A
            # FIFO's worth goes to the speaker in one write, as it came: one pass per 21 ms.
            try:
                got = kept + os.readv(fd, [view[kept:kept + PIPE_BYTES]])
            except BlockingIOError:
                got = 0
            if got > kept:
                whole = got - got % BYTES_PER_FRAME
                if whole:
                    samples: bytes | memoryview = view[:whole]
                    if self._prompts or self._prompt_left:  # unlocked look: a deque's truth is atomic
                        samples = self._mix(bytes(samples), True)
                    quiet_since = self._write(samples)
                kept = got - whole
                buffer[:kept] = buffer[whole:got]
            elif select.select([fd], [], [], PERIOD_S)[0]:
                continue
            elif (self._prompts or self._prompt_left) and \
                    time.monotonic() - quiet_since > 2 * PERIOD_S:
                self._write(self._mix(bytes(self.period_bytes), False))  # a prompt on its own
            else:
                self._anchor, self._written = time.monotonic(), 0  # silence: start afresh
                if self._pcm is None and self._anchor >= self._reopen_at:
                    self._pcm = self._open()  # plugged in meanwhile: ready for a prompt
        if self._pcm is not None:
            with contextlib.suppress(Exception):
                self._pcm.close()  # the speaker is free for whoever owns it next

    def _mix(self, programme: bytes, has_programme: bool) -> bytes:
        """The period for the speaker: the programme as it came, or ducked under a prompt."""
        prompt = self._take_prompt(len(programme))
        if prompt is None:
            return programme if has_programme else bytes(len(programme))
        return mix_prompt(programme if has_programme else None, prompt, self.duck)

    def _take_prompt(self, size: int) -> bytes | None:
        with self._lock:
            if not self._prompt_left and not self._prompts:
                return None
            while len(self._prompt_left) < size and self._prompts:
                self._prompt_left += self._prompts.popleft()
            piece = bytes(self._prompt_left[:size])
            del self._prompt_left[:size]
        return piece + bytes(size - len(piece))

    def _write(self, samples: bytes | memoryview) -> float:
        """Hand ``samples`` to the speaker, keeping real time; the monotonic time it returned.

        With no speaker (missing, unplugged) the samples are dropped but real time is
        kept all the same, so the player's pictures go on at their pace; the speaker is
        tried again every ``reopen_s``.
        """
        began = time.monotonic()
        if self._pcm is None and began >= self._reopen_at:
            self._pcm = self._open()
        if self._pcm is not None:
            try:
                written = self._pcm.write(samples)
            except Exception as exc:  # noqa: BLE001 - an unplugged speaker must not end the mixer
                self.error = f"the speaker {self.device!r} failed: {exc}"
                log.error("%s; trying again every %g s", self.error, self.reopen_s)
                self._pcm, self._reopen_at = None, began + self.reopen_s
            else:
                if written < 0:
                    self.underruns += 1
        now = time.monotonic()
        buffer_s = self._buffer_s
        if now - began > PERIOD_S / 4:
            # The device blocked: it is full and sets the pace; keep the clock out of it.
            self._anchor, self._written = now + buffer_s, 0
        self._written += len(samples) // BYTES_PER_FRAME
        ahead = self._written / self.rate_hz - (now - self._anchor)
        if ahead > buffer_s:  # a device that never blocks: real time is kept here
            time.sleep(ahead - buffer_s)
            ahead = buffer_s
        held = max(self._held_s(), ahead, 0.0)
        self.delay_s = held + self._fifo_s
        if self.on_played is not None and self._pcm is not None:  # only what was heard
            try:
                self.on_played(bytes(samples), time.time() + held)  # its own copy
            except Exception:  # noqa: BLE001
                log.exception("the speaker's tap failed")
        return now

    def _held_s(self) -> float:
        """What the speaker still holds to play, in seconds (0 when it cannot say)."""
        if self._pcm is None:
            return 0.0
        try:
            free = self._pcm.avail()
        except Exception:  # noqa: BLE001
            return 0.0
        held = self.period_frames * self.periods - free
        return max(0.0, held / self.rate_hz)


def mix_prompt(programme: bytes | None, prompt: bytes, duck: float) -> bytes:
    """S16_LE ``prompt`` over ``programme`` (None: silence) lowered by the gain ``duck``."""
    import numpy as np

    mixed = np.frombuffer(prompt, dtype="<i2").astype(np.float32)
    if programme is not None:
        mixed += np.frombuffer(programme, dtype="<i2").astype(np.float32) * duck
    return np.clip(mixed, -32768, 32767).astype("<i2").tobytes()


def _to_speaker(samples: bytes, rate_hz: int, channels: int, out_rate_hz: int) -> bytes:
    """S16_LE at ``rate_hz`` with ``channels`` → stereo S16_LE at ``out_rate_hz`` (linear)."""
    import numpy as np

    if channels not in (1, 2):
        raise ValueError(f"a prompt has 1 or 2 channels, not {channels}")
    usable = len(samples) // (2 * channels) * 2 * channels
    frames = np.frombuffer(samples[:usable], dtype="<i2").reshape(-1, channels).astype(np.float32)
    if rate_hz != out_rate_hz and len(frames):
        count = int(round(len(frames) * out_rate_hz / rate_hz))
        at = np.arange(count) * rate_hz / out_rate_hz
        frames = np.stack([np.interp(at, np.arange(len(frames)), frames[:, c])
                           for c in range(channels)], axis=1)
    if channels == 1:
        frames = np.repeat(frames, 2, axis=1)
    return np.clip(np.round(frames), -32768, 32767).astype("<i2").tobytes()
