"""The room's sound kit from /proc/asound text as real cards show it (a Raspberry Pi's HDMI,
USB speakerphones, a USB microphone, a webcam's microphone), laid out in a temporary tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from diemcau.adapters.audiokit import audio_meta, cards, detect
from diemcau.config import Media
from diemcau.core.audiokit import echo_plan

HDMI = (" 0 [vc4hdmi0       ]: vc4-hdmi - vc4-hdmi-0\n"
        "                      vc4-hdmi-0\n")


def usb_card(index: int, card_id: str, name: str, where: str, playback: bool,
             capture: bool) -> tuple[str, str]:
    """A USB card's line in /proc/asound/cards and its stream0, in the kernel's layout."""
    line = (f" {index} [{card_id:<15}]: USB-Audio - {name}\n"
            f"                      {name} at {where}, full speed\n")
    direction = ("    Status: Stop\n    Interface {i}\n      Altset 1\n      Format: S16_LE\n"
                 "      Channels: {c}\n      Endpoint: 0x{e:02x} ({e} {d}) (ADAPTIVE)\n"
                 "      Rates: 8000, 16000, 48000\n      Data packet interval: 1000 us\n")
    stream = f"{name} at {where}, full speed : USB Audio\n\n"
    if playback:
        stream += "Playback:\n" + direction.format(i=1, c=2, e=3, d="OUT")
    if capture:
        stream += ("\n" if playback else "") + "Capture:\n" + direction.format(
            i=2, c=1, e=0x81, d="IN")
    return line, stream


SPEAKERPHONES = {
    "Jabra Speak 410": ("USB", "Jabra SPEAK 410 USB", "0b0e:0412"),
    "Jabra Speak 510": ("USB", "Jabra SPEAK 510 USB", "0b0e:0422"),
    "Anker PowerConf": ("PowerConf", "Anker PowerConf", ""),
    "Poly Sync 20": ("Sync20", "Poly Sync 20", ""),
    "eMeet M0": ("M0", "EMEET OfficeCore M0", ""),
}


def lay_out(root: Path, usb: list[tuple[str, str, str, bool, bool]]) -> Path:
    """/proc/asound with the Pi's HDMI as card 0 and ``usb`` cards after it."""
    text = HDMI
    (root / "card0").mkdir(parents=True)
    (root / "card0" / "pcm0p").mkdir()
    for index, (card_id, name, usb_id, playback, capture) in enumerate(usb, start=1):
        line, stream = usb_card(index, card_id, name, f"usb-0000:01:00.0-1.{index}",
                                playback, capture)
        text += line
        folder = root / f"card{index}"
        folder.mkdir()
        (folder / "stream0").write_text(stream)
        (folder / "usbid").write_text(usb_id + "\n")
        for sub, present in (("pcm0p", playback), ("pcm0c", capture)):
            if present:
                (folder / sub).mkdir()
    (root / "cards").write_text(text)
    return root


@pytest.mark.parametrize("model", sorted(SPEAKERPHONES))
def test_a_usb_speakerphone_is_used_for_both_directions(tmp_path: Path, model: str) -> None:
    card_id, name, usb_id = SPEAKERPHONES[model]
    root = lay_out(tmp_path, [(card_id, name, usb_id, True, True)])
    kit = detect(root)
    assert kit.kit == "speakerphone"
    assert kit.card is not None and kit.card.name == name and kit.card.usb_id == usb_id
    assert audio_meta(Media(), root) == {"audio_kit": "speakerphone",
                                         "echo_canceller": "device", "device": name}


def test_hdmi_and_a_usb_microphone_need_the_software_canceller(tmp_path: Path) -> None:
    root = lay_out(tmp_path, [("Webcam", "C922 Pro Stream Webcam", "046d:085c", False, True)])
    kit = detect(root)
    assert kit.kit == "separate"
    assert kit.speaker is not None and kit.speaker.driver == "vc4-hdmi"
    assert audio_meta(Media(), root) == {"audio_kit": "separate",
                                         "echo_canceller": "speex",
                                         "device": "C922 Pro Stream Webcam"}
    assert audio_meta(Media(echo_canceller="webrtc"), root)["echo_canceller"] == "webrtc"


def test_no_microphone(tmp_path: Path) -> None:
    root = lay_out(tmp_path, [])
    assert [c.name for c in cards(root)] == ["vc4-hdmi-0"]
    assert audio_meta(Media(), root) == {"audio_kit": "none", "echo_canceller": "none",
                                         "device": ""}


def test_the_setting_forces_the_kit(tmp_path: Path) -> None:
    root = lay_out(tmp_path, [("Device", "USB PnP Sound Device", "0d8c:0014", True, True),
                              ("Webcam", "C922 Pro Stream Webcam", "046d:085c", False, True)])
    kit = detect(root)
    assert kit.kit == "speakerphone"  # a USB card with both directions, the first
    assert echo_plan(kit, "software")["echo_canceller"] == "speex"
    assert echo_plan(kit, "off")["echo_canceller"] == "none"
    separate = detect(lay_out(tmp_path / "b", [("Webcam", "C922", "", False, True)]))
    assert echo_plan(separate, "speakerphone")["echo_canceller"] == "device"
    with pytest.raises(ValueError, match="media.audio_kit"):
        echo_plan(kit, "loud")


def test_an_unreadable_tree_is_no_kit(tmp_path: Path) -> None:
    assert detect(tmp_path / "missing").kit == "none"


def test_a_speakerphone_serves_both_directions_unless_the_config_names_devices() -> None:
    from diemcau.core.audiokit import Card, Kit, echo_plan, sound_devices

    jabra = Card(1, "USB", "USB-Audio", "Jabra SPEAK 510 USB", playback=True, capture=True,
                 usb_id="0b0e:0422")
    kit = Kit("speakerphone", jabra)
    plan = echo_plan(kit)
    assert sound_devices(plan, kit, microphone="default", speaker="default") == (
        "plughw:CARD=USB,DEV=0", "plughw:CARD=USB,DEV=0")
    assert sound_devices(plan, kit, microphone="hw:2", speaker="default") == (
        "hw:2", "plughw:CARD=USB,DEV=0")
    separate = Kit("separate", jabra)
    assert sound_devices(echo_plan(separate), separate, microphone="default",
                         speaker="default") == ("default", "default")
