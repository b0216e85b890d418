"""Which sound kit the room has, from its ALSA cards' descriptions (pure: the text is read by
adapters/audiokit.py).

- ``speakerphone``: a USB sound card that both plays and captures (a Jabra Speak, Anker
  PowerConf, Poly Sync, eMeet conference speaker): one clock for speaker and microphone,
  and its own echo canceller. The box plays and records through it; no software canceller.
- ``separate``: a microphone on one card and a speaker on another (the TV over HDMI and a
  USB microphone): the box's software canceller (media.echo) is needed.
- ``none``: no microphone at all.

    >>> hdmi = Card(0, "vc4hdmi0", "vc4-hdmi", "vc4-hdmi-0", playback=True, capture=False)
    >>> jabra = Card(1, "USB", "USB-Audio", "Jabra SPEAK 510 USB", playback=True,
    ...              capture=True, usb_id="0b0e:0422")
    >>> classify([hdmi, jabra]).kit, classify([hdmi, jabra]).card.name
    ('speakerphone', 'Jabra SPEAK 510 USB')
    >>> classify([hdmi]).kit
    'none'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KITS = ("speakerphone", "separate", "none")
FORCED = ("auto", "speakerphone", "software", "off")


@dataclass(frozen=True, slots=True)
class Card:
    """One ALSA card: its index, id, driver, name, and which directions it has."""

    index: int
    id: str
    driver: str
    name: str
    playback: bool
    capture: bool
    usb_id: str = ""  # vendor:product, for USB cards

    @property
    def usb(self) -> bool:
        return self.driver == "USB-Audio"


@dataclass(frozen=True, slots=True)
class Kit:
    kit: str  # one of KITS
    card: Card | None  # the speakerphone, or the microphone's card
    speaker: Card | None = None  # separate: the card that plays


_CARD_LINE = re.compile(r"^\s*(\d+)\s+\[(\S*)\s*\]:\s+(\S+)\s+-\s+(.*?)\s*$")


def parse_cards(text: str) -> list[tuple[int, str, str, str]]:
    """(index, id, driver, name) of each card in /proc/asound/cards."""
    found = []
    for line in text.splitlines():
        match = _CARD_LINE.match(line)
        if match:
            found.append((int(match[1]), match[2], match[3], match[4]))
    return found


def stream_directions(stream0: str) -> tuple[bool, bool]:
    """(playback, capture) from a USB card's /proc/asound/cardN/stream0."""
    return ("\nPlayback:" in "\n" + stream0, "\nCapture:" in "\n" + stream0)


def classify(cards: list[Card]) -> Kit:
    """The room's kit: a USB card with both directions wins (the first one), then any card
    that captures beside another that plays."""
    for card in cards:
        if card.usb and card.playback and card.capture:
            return Kit("speakerphone", card, card)
    microphones = [c for c in cards if c.capture]
    if not microphones:
        return Kit("none", None)
    speakers = [c for c in cards if c.playback and c is not microphones[0]]
    return Kit("separate", microphones[0], speakers[0] if speakers else None)


def echo_plan(kit: Kit, forced: str = "auto", canceller: str = "speex") -> dict[str, str]:
    """What ``meta`` says of the room's sound: the kit, who cancels the echo, the device.

    ``forced`` is ``media.audio_kit``: ``speakerphone`` trusts the device to cancel,
    ``software`` runs ``canceller`` whatever was found, ``off`` runs none (a room with
    headsets, or a test)."""
    if forced not in FORCED:
        raise ValueError(f"media.audio_kit: one of {', '.join(FORCED)}, not {forced!r}")
    device = kit.card.name if kit.card else ""
    if forced == "off":
        return {"audio_kit": kit.kit, "echo_canceller": "none", "device": device}
    if forced == "speakerphone" or (forced == "auto" and kit.kit == "speakerphone"):
        return {"audio_kit": "speakerphone", "echo_canceller": "device", "device": device}
    if kit.kit == "none" and forced == "auto":
        return {"audio_kit": "none", "echo_canceller": "none", "device": ""}
    return {"audio_kit": kit.kit if forced == "auto" else "separate",
            "echo_canceller": canceller, "device": device}


def alsa_device(card: Card) -> str:
    """The ALSA PCM that plays or captures on ``card`` in the format the box asks for."""
    return f"plughw:CARD={card.id},DEV=0"


def sound_devices(plan: dict[str, str], kit: Kit, *, microphone: str,
                  speaker: str) -> tuple[str, str]:
    """The microphone and the speaker the box uses: a speakerphone serves both directions
    (one clock, its own canceller) where the configuration leaves them at ``default``."""
    if plan["echo_canceller"] != "device" or kit.kit != "speakerphone" or kit.card is None:
        return microphone, speaker
    device = alsa_device(kit.card)
    return (device if microphone == "default" else microphone,
            device if speaker == "default" else speaker)
