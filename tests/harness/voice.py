"""What a box said through its speaker (ALSA's ``file`` plugin), recognised prompt by prompt."""

from __future__ import annotations

from diemcau.adapters.voice import render, scaled
from diemcau.core.prompts import PROMPTS

from .alsa import SimulatedSpeaker


def prompts_said(speaker: SimulatedSpeaker, volume_percent: int,
                 site_name: str | None = None) -> list[str]:
    """The keys of the prompts the speaker played, in order; ``?N`` for N unknown bytes.

    Each prompt is one opening of the PCM; it is recognised by its samples,
    rendered again here as the box renders them (``identify``: the site's name).
    """
    texts = {**PROMPTS, **({"identify": site_name} if site_name else {})}
    known = {key: scaled(render(text).pcm, volume_percent) for key, text in texts.items()}
    said = []
    for played in speaker.openings():
        match = [key for key, samples in known.items() if played.startswith(samples)]
        said.append(match[0] if len(match) == 1 else f"?{len(played)}")
    return said
