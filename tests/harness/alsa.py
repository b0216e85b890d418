"""A simulated microphone: ALSA's ``file`` plugin over ``null`` reading a known tone.

Real ALSA, no sound card: a PCM (``diemcau_mic`` by default) whose capture
returns the samples of a raw S16_LE file. Two quirks of the plugin shape it:
it returns audio as fast as it is read (the box paces itself), and after the
end of the file it keeps returning stale data, so the tone is made longer
than any test or demo that reads it.

    mic = make_microphone(tmp_path)
    monkeypatch.setenv("ALSA_CONFIG_PATH", mic.env["ALSA_CONFIG_PATH"])
    # ... Media(microphone=mic.pcm, sample_rate_hz=mic.sample_rate_hz, ...)

For a child process: ``subprocess.run(..., env={**os.environ, **mic.env})``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# alsa.conf must come first in ALSA_CONFIG_PATH: it defines the ``null`` PCM
# and the plugin types; our file only adds a PCM. ALSA_CONFIG_DIR, when set,
# is where alsa-lib looks for it instead of its built-in directory.
_ALSA_DIR = Path(os.environ.get("ALSA_CONFIG_DIR", "/usr/share/alsa"))


@dataclass(frozen=True, slots=True)
class SimulatedMicrophone:
    """A PCM that captures a sine tone; ``env`` makes ALSA see it."""

    pcm: str
    frequency_hz: float
    sample_rate_hz: int
    channels: int
    seconds: float
    tone_path: Path
    config_path: Path

    @property
    def env(self) -> dict[str, str]:
        """Environment variables for a process that should see ``pcm``."""
        return {"ALSA_CONFIG_PATH": f"{_ALSA_DIR / 'alsa.conf'}:{self.config_path}"}


def write_tone(path: Path, *, frequency_hz: float, sample_rate_hz: int, channels: int,
               seconds: float, level_dbfs: float) -> None:
    """Write a raw interleaved S16_LE sine tone, in one-second chunks to keep memory flat."""
    amplitude = 32767 * 10 ** (level_dbfs / 20)
    with path.open("wb") as out:
        done = 0
        total = int(seconds * sample_rate_hz)
        while done < total:
            n = min(sample_rate_hz, total - done)
            t = (np.arange(done, done + n) / sample_rate_hz).astype(np.float64)
            mono = np.round(amplitude * np.sin(2 * np.pi * frequency_hz * t)).astype("<i2")
            out.write(np.repeat(mono, channels).tobytes())
            done += n


def make_microphone(directory: Path, *, pcm: str = "diemcau_mic", frequency_hz: float = 1000.0,
                    sample_rate_hz: int = 48000, channels: int = 1, seconds: float = 180.0,
                    level_dbfs: float = -12.0) -> SimulatedMicrophone:
    """Write the tone and the ALSA configuration into ``directory``.

    The tone must be read with the same rate, channels and format (S16_LE) it
    was written with: the ``file`` plugin hands over the bytes as they are.
    ``seconds`` of tone cost ``2 * channels * sample_rate_hz`` bytes each.
    """
    directory.mkdir(parents=True, exist_ok=True)
    tone = directory / f"{pcm}.s16le"
    write_tone(tone, frequency_hz=frequency_hz, sample_rate_hz=sample_rate_hz,
               channels=channels, seconds=seconds, level_dbfs=level_dbfs)
    config = _write_pcm_config(directory, pcm, tone)
    return SimulatedMicrophone(pcm, frequency_hz, sample_rate_hz, channels, seconds, tone, config)


def _write_pcm_config(directory: Path, pcm: str, infile: Path) -> Path:
    config = directory / f"{pcm}.asoundrc"
    # What the plugin "records" is also written to `file`; nobody needs it.
    config.write_text(
        f"pcm.{pcm} {{\n"
        f"    type file\n"
        f"    slave.pcm \"null\"\n"
        f"    file \"/dev/null\"\n"
        f"    infile \"{infile}\"\n"
        f"    format \"raw\"\n"
        f"}}\n",
        encoding="utf-8",
    )
    return config


def microphone_from_samples(directory: Path, samples: np.ndarray, *, pcm: str = "diemcau_mic",
                            sample_rate_hz: int = 48000, frequency_hz: float = 0.0,
                            ) -> SimulatedMicrophone:
    """A microphone that captures exactly ``samples`` (float, -1..1; 1-D mono or frames x 2).

    For sound that is not one steady tone: silence then speech, beeps at
    chosen instants. ``frequency_hz`` is only recorded, for the test's own use.
    """
    directory.mkdir(parents=True, exist_ok=True)
    frames = samples.reshape(len(samples), -1)
    channels = frames.shape[1]
    raw = directory / f"{pcm}.s16le"
    pcm16 = np.clip(np.round(frames * 32767), -32768, 32767).astype("<i2")
    raw.write_bytes(pcm16.tobytes())
    config = _write_pcm_config(directory, pcm, raw)
    return SimulatedMicrophone(pcm, frequency_hz, sample_rate_hz, channels,
                               len(frames) / sample_rate_hz, raw, config)


@dataclass(frozen=True, slots=True)
class SimulatedSpeaker:
    """A playback PCM whose output lands in ``out_path`` (raw samples, as played, appended)."""

    pcm: str
    out_path: Path
    config_path: Path

    @property
    def env(self) -> dict[str, str]:
        return {"ALSA_CONFIG_PATH": f"{_ALSA_DIR / 'alsa.conf'}:{self.config_path}"}

    def openings(self) -> list[bytes]:
        """What was played each time the PCM was opened, in order (one prompt each)."""
        # With "truncate false" the plugin never overwrites: each opening after the first
        # writes to the next free name, out.0001, out.0002, ...
        paths = [self.out_path] if self.out_path.exists() else []
        paths += sorted(self.out_path.parent.glob(self.out_path.name + ".[0-9][0-9][0-9][0-9]"))
        return [path.read_bytes() for path in paths]

    def played(self) -> bytes:
        """Everything played, in order."""
        return b"".join(self.openings())

    def clear(self) -> None:
        for path in self.out_path.parent.glob(self.out_path.name + "*"):
            path.unlink()


def make_speaker(directory: Path, *, pcm: str = "diemcau_speaker",
                 also: SimulatedMicrophone | None = None) -> SimulatedSpeaker:
    """A speaker: ALSA's ``file`` plugin over ``null`` writes what is played to a file.

    Like the microphone it is not paced: playing takes no real time. ``also``
    puts a microphone's PCM in the same configuration, for a process that needs both.
    """
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{pcm}.s16le"
    config = directory / f"{pcm}.asoundrc"
    text = (f"pcm.{pcm} {{\n"
            f"    type file\n"
            f"    slave.pcm \"null\"\n"
            f"    file \"{out}\"\n"
            f"    format \"raw\"\n"
            f"    truncate false\n"  # each opening writes a new file: nothing is overwritten
            f"}}\n")
    if also is not None:
        text += also.config_path.read_text(encoding="utf-8")
    config.write_text(text, encoding="utf-8")
    return SimulatedSpeaker(pcm, out, config)
