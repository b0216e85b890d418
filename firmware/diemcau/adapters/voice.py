"""Spoken prompts through the room's speaker: espeak-ng renders, pyalsaaudio plays.

The supervisor calls :meth:`Voice.say` and returns at once: one thread
renders and plays, from a small queue. When prompts come faster than they
can be spoken, the oldest waiting one is dropped (the newest says the true
state) and counted. Playback goes to its own ALSA PCM (``voice.pcm``), never
into the microphone the media path captures, so a prompt never reaches the
meeting.

Rendering runs ``espeak-ng`` (Debian package ``espeak-ng``, voice ``vi``) at
run time, once per text: the rendered samples are kept in memory, so each
prompt costs one render per start. Run time and not recordings made at build
time, because ``device.identify`` speaks the site's own name, which only the
box's configuration knows; the fixed prompts then cost nothing extra.

A box with a screen (``[screen]``) hands each rendered prompt to ``sink``
instead: the screen process owns the speaker there (HDMI audio takes one
client at a time) and mixes the prompt into the programme, ducking it
(docs/farend.md). The voice's thread then waits the prompt's length, so
``on_done`` still comes when it has been spoken.

    voice = Voice(pcm="default", on_done=lambda key: supervisor.post(PromptSpoken(key)))
    voice.start()
    voice.say("joined", "đã vào cuộc họp")
"""

from __future__ import annotations

import io
import logging
import subprocess
import threading
import wave
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("diemcau.voice")

QUEUE_SIZE = 2
RENDER_TIMEOUT_S = 10.0
PERIOD_FRAMES = 1024


class VoiceError(Exception):
    """A prompt could not be rendered or played."""


@dataclass(frozen=True, slots=True)
class Rendered:
    """One rendered prompt: mono S16_LE samples at ``rate_hz``."""

    pcm: bytes
    rate_hz: int

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / self.rate_hz


def render(text: str, *, voice: str = "vi", words_per_minute: int = 150,
           timeout_s: float = RENDER_TIMEOUT_S) -> Rendered:
    """``text`` spoken by espeak-ng, as mono 16-bit samples."""
    try:
        proc = subprocess.run(["espeak-ng", "-v", voice, "-s", str(words_per_minute), "--stdout",
                               "--", text], capture_output=True, timeout=timeout_s, check=False)
    except FileNotFoundError:
        raise VoiceError("espeak-ng is not installed (Debian package espeak-ng)") from None
    except subprocess.TimeoutExpired:
        raise VoiceError(f"espeak-ng took more than {timeout_s} s") from None
    if proc.returncode != 0:
        raise VoiceError(f"espeak-ng failed ({proc.returncode}): "
                         f"{proc.stderr.decode(errors='replace')[-200:]}")
    # Writing to a pipe, espeak-ng cannot go back to fill in the sizes: read what is there.
    with wave.open(io.BytesIO(proc.stdout)) as wav:
        if wav.getsampwidth() != 2 or wav.getnchannels() != 1:
            raise VoiceError("espeak-ng gave audio other than mono 16-bit")
        rate = wav.getframerate()
        data = wav.readframes(wav.getnframes())
    return Rendered(data[: len(data) // 2 * 2], rate)


def scaled(samples: bytes, volume_percent: int) -> bytes:
    """``samples`` (S16_LE) at ``volume_percent`` of full scale (a linear gain)."""
    import numpy as np

    pcm = np.frombuffer(samples, dtype="<i2").astype(np.float32)
    return np.clip(pcm * (volume_percent / 100), -32768, 32767).astype("<i2").tobytes()


class Voice:
    """The room's voice: renders and plays prompts on its own thread.

    ``pcm``: the ALSA playback device; ``volume_percent``: 0-100, changed at
    run time with :meth:`set_volume`; ``on_done(key)`` is called from the
    voice's thread after each prompt, spoken or not (it must not block).
    ``sink(samples, rate_hz)``: where prompts go instead of ``pcm`` (mono
    S16_LE, the volume applied), when another process owns the speaker.
    """

    def __init__(self, *, pcm: str = "default", voice: str = "vi", words_per_minute: int = 150,
                 volume_percent: int = 80, on_done: Callable[[str], None] | None = None,
                 renderer: Callable[[str], Rendered] | None = None,
                 sink: Callable[[bytes, int], None] | None = None) -> None:
        self.pcm = pcm
        self._sink = sink
        self._render = renderer or (lambda text: render(text, voice=voice,
                                                        words_per_minute=words_per_minute))
        self._volume = volume_percent
        self._on_done = on_done
        self._cache: dict[str, Rendered] = {}
        self._waiting: deque[tuple[str, str]] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.spoken = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="voice", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop at the end of the current period; prompts still waiting are dropped."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None

    def set_volume(self, percent: int) -> None:
        self._volume = max(0, min(100, percent))

    def say(self, key: str, text: str) -> None:
        """Speak ``text`` soon; never blocks. A full queue drops its oldest prompt."""
        dropped = None
        with self._cond:
            if len(self._waiting) >= QUEUE_SIZE:
                dropped = self._waiting.popleft()
                self.dropped += 1
            self._waiting.append((key, text))
            self._cond.notify()
        if dropped is not None:
            log.info("voice busy: dropped prompt %r for a newer one", dropped[0])
            self._done(dropped[0])

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                key, text = self._waiting.popleft()
            try:
                self._speak(text)
                self.spoken += 1
                log.info("said %s: %s", key, text)
            except Exception as exc:  # noqa: BLE001 - a broken speaker must not end the voice
                log.error("voice: could not say %r: %s", key, exc)
            self._done(key)

    def _done(self, key: str) -> None:
        if self._on_done is not None:
            try:
                self._on_done(key)
            except Exception:  # noqa: BLE001
                log.exception("voice: on_done failed")

    def _speak(self, text: str) -> None:
        rendered = self._cache.get(text)
        if rendered is None:
            rendered = self._cache[text] = self._render(text)
        samples = scaled(rendered.pcm, self._volume)
        if self._sink is None:
            self._play(samples, rendered.rate_hz)
            return
        self._sink(samples, rendered.rate_hz)
        with self._cond:  # as long as it takes the speaker to say it; a stop ends the wait
            self._cond.wait_for(lambda: self._stopping, timeout=rendered.seconds)

    def _play(self, samples: bytes, rate_hz: int) -> None:
        import alsaaudio

        try:
            pcm = alsaaudio.PCM(type=alsaaudio.PCM_PLAYBACK, mode=alsaaudio.PCM_NORMAL,
                                device=self.pcm, rate=rate_hz, channels=1,
                                format=alsaaudio.PCM_FORMAT_S16_LE, periodsize=PERIOD_FRAMES)
        except alsaaudio.ALSAAudioError as exc:
            raise VoiceError(f"cannot open the speaker {self.pcm!r}: {exc}") from None
        try:
            step = PERIOD_FRAMES * 2
            for start in range(0, len(samples), step):
                if self._stopping:
                    return
                chunk = samples[start:start + step]
                if len(chunk) < step:  # a whole period, so the last words are not cut
                    chunk += bytes(step - len(chunk))
                pcm.write(chunk)
        finally:
            pcm.close()
