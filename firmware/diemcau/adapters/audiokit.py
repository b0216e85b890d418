"""The room's sound kit, read from ALSA's /proc/asound (core/audiokit.py decides).

    kit = detect()                       # Kit("speakerphone", Card(...), ...)
    meta = audio_meta(cfg.media)         # {"audio_kit": ..., "echo_canceller": ..., "device": ...}
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..core.audiokit import Card, Kit, classify, echo_plan, parse_cards, stream_directions

if TYPE_CHECKING:
    from ..config import Media

ASOUND = Path("/proc/asound")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cards(root: Path = ASOUND) -> list[Card]:
    """The ALSA cards under ``root``: their directions from the pcm devices (pcmNp/pcmNc),
    and a USB card's id from usbid."""
    found = []
    for index, card_id, driver, name in parse_cards(_read(root / "cards")):
        folder = root / f"card{index}"
        playback = any(folder.glob("pcm*p"))
        capture = any(folder.glob("pcm*c"))
        stream0 = _read(folder / "stream0")
        if stream0:
            playback, capture = stream_directions(stream0)
        found.append(Card(index, card_id, driver, name, playback, capture,
                          _read(folder / "usbid").strip()))
    return found


def detect(root: Path = ASOUND) -> Kit:
    return classify(cards(root))


def audio_meta(cfg: Media, root: Path = ASOUND) -> dict[str, str]:
    """What ``meta`` says of the room's sound (docs/audio.md)."""
    return echo_plan(detect(root), cfg.audio_kit, cfg.echo_canceller)
