"""docs/hardware.md's wiring table for the button and the light: the configuration's defaults,
on the header pins gpiozero's own map of a Pi 4 and a Pi 5 gives."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from diemcau.config import Panel, PanelLight

DOCS = Path(__file__).resolve().parents[1] / "docs"
HARDWARE = (DOCS / "hardware.md").read_text(encoding="utf-8")
SECTION = HARDWARE[HARDWARE.index("## Button and status light"):]
SECTION = SECTION[:SECTION.index("\n## ")]
BOARDS = {"Pi 4": "d03114", "Pi 5": "d04170"}  # gpiozero's revision codes


def wiring_rows() -> list[list[str]]:
    after = SECTION[SECTION.index("<!-- wiring -->"):].splitlines()[1:]
    table = [line for line in after if line.strip()]
    table = table[:next((i for i, line in enumerate(table) if not line.startswith("|")),
                        len(table))]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]


def header_of(board: str) -> dict[str, int]:
    """The 40-pin header of ``board`` as gpiozero knows it: pin name to pin number."""
    pins = MockFactory(revision=BOARDS[board]).board_info.headers["J8"].pins
    numbers: dict[str, list[int]] = {}
    for number, pin in pins.items():
        numbers.setdefault(pin.name, []).append(number)
    return {name: found[0] for name, found in numbers.items() if len(found) == 1} | {
        f"{name}:{n}": n for name, found in numbers.items() for n in found}


def defaults() -> dict[str, int]:
    light, panel = PanelLight(), Panel()
    # The mute button has no default pin: the one room-controls.md's example gives it.
    example = (DOCS / "room-controls.md").read_text(encoding="utf-8")
    mute = re.search(r"\[panel\.mute_button\][^\[]*?pin = (\d+)", example)
    assert mute is not None
    return {"panel.join_button.pin": panel.join_button.pin, "panel.mute_button.pin": int(mute[1]),
            "panel.light.red_pin": light.red_pin, "panel.light.green_pin": light.green_pin,
            "panel.light.blue_pin": light.blue_pin}


def test_the_table_has_every_default_pin_once() -> None:
    keys = [row[4].strip("`") for row in wiring_rows() if row[1] != "-"]
    assert sorted(keys) == sorted(defaults())
    assert len(set(defaults().values())) == len(defaults())  # no pin used twice


@pytest.mark.parametrize("board", list(BOARDS))
def test_each_gpio_is_on_the_header_pin_the_table_says_and_grounds_are_grounds(board: str
                                                                             ) -> None:
    header = header_of(board)
    expected = defaults()
    rows = wiring_rows()
    assert len(rows) == 6
    for part, gpio, pin, other, key in rows:
        if gpio != "-":
            assert int(gpio) == expected[key.strip("`")], part
            assert header[f"GPIO{gpio}"] == int(pin), part
        for ground in re.findall(r"ground, pin (\d+)", f"{pin} {other}"):
            assert f"GND:{ground}" in header, (part, ground)


@pytest.mark.parametrize("board", list(BOARDS))
def test_pins_named_in_the_notes_match_the_header(board: str) -> None:
    header = header_of(board)
    named = re.findall(r"GPIO (\d+) \(pin (\d+)\)", SECTION)
    assert len(named) >= 3
    for gpio, pin in named:
        assert header[f"GPIO{gpio}"] == int(pin), gpio
    grounds = re.findall(r"ground \(pin (\d+)(?: or (\d+))?\)", SECTION)
    supplies = re.findall(r"3\.3 V, pin (\d+)(?: or (\d+))?", SECTION)
    assert grounds and supplies
    for pins in grounds:
        assert all(f"GND:{p}" in header for p in pins if p), pins
    for pins in supplies:
        assert all(f"3V3:{p}" in header for p in pins if p), pins
