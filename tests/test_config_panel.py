"""The ``[panel]`` and ``[voice]`` sections: what loads, and bad pins refused by key path.

A refused configuration makes ``diemcau check`` and ``diemcau run`` exit 2
before anything is touched (the state directory is not even made).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
from hypothesis import given
from hypothesis import strategies as st

from diemcau.config import ConfigError, effective_config, load_config, parse_config
from tests.harness.example import loadable_example
from tests.test_config import MINIMAL

PANEL = """
[panel]
gpio = "mock"

[panel.join_button]
pin = 17

[panel.light]
kind = "rgb"
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "endpoint.toml")
    return caught.value.problems


def test_no_panel_section_means_no_panel_and_the_voice_has_defaults() -> None:
    cfg = parse_config(MINIMAL)
    assert cfg.panel is None
    assert (cfg.voice.enabled, cfg.voice.pcm, cfg.voice.volume_percent, cfg.voice.voice) == (
        True, "default", 80, "vi")


def test_a_panel_with_defaults() -> None:
    cfg = parse_config(MINIMAL + '\n[panel]\n')
    panel = cfg.panel
    assert panel is not None and panel.gpio == "lgpio"
    assert (panel.debounce_ms, panel.long_press_s, panel.reset_hold_s, panel.reset_window_s,
            panel.join_early_s) == (50, 3.0, 10.0, 60.0, 900.0)
    assert (panel.join_button.pin, panel.join_button.pull_up) == (17, True)
    assert panel.mute_button is None
    assert panel.light.pins() == {"red_pin": 5, "green_pin": 6, "blue_pin": 13}
    # What `diemcau check` prints is itself a valid configuration, the panel included.
    assert parse_config(tomli_w.dumps(effective_config(cfg))) == cfg


def test_the_example_configuration_loads(tmp_path: Path) -> None:
    cfg = load_config(loadable_example(tmp_path))
    assert cfg.panel is not None and cfg.panel.mute_button is None


@pytest.mark.parametrize(("extra", "problem"), [
    ("[panel.join_button]\npin = 40", "panel.join_button.pin: 40 is not a GPIO of the Pi's "
                                      "header (0-27)"),
    ("[panel.join_button]\npin = -1", "panel.join_button.pin: -1 is not a GPIO"),
    ("[panel.join_button]\npin = 5", "panel.light.red_pin: GPIO5 is already "
                                     "panel.join_button.pin"),
    ("[panel.join_button]\npin = \"GPIO17\"", "panel.join_button.pin: expected int, got str"),
    ("[panel.join_button]\npn = 17", "panel.join_button.pn: unknown key (did you mean 'pin'?)"),
    ("[panel.mute_button]\npull_up = true", "panel.mute_button.pin: missing (required)"),
    ("[panel.mute_button]\npin = 17", "panel.mute_button.pin: GPIO17 is already "
                                      "panel.join_button.pin"),
    ("[panel.light]\nkind = \"rgbw\"", "panel.light.kind: invalid enum value 'rgbw'"),
    ("[panel.light]\nbrightness = 0.0", "panel.light.brightness: must be more than 0"),
    ("[panel.light]\nkind = \"single\"\npin = 17", "panel.light.pin: GPIO17 is already"),
    ("long_press_s = 20.0", "panel.debounce_ms/long_press_s/reset_hold_s"),
    ("gpio = \"pigpio\"", "panel.gpio: invalid enum value 'pigpio'"),
])
def test_bad_panel_settings_are_named_by_their_key(extra: str, problem: str) -> None:
    text = MINIMAL + "\n[panel]\n" + (extra if not extra.startswith("[") else "\n" + extra)
    problems = problems_of(text)
    assert any(p.startswith(problem) for p in problems), problems


def test_pins_a_light_does_not_use_may_overlap() -> None:
    cfg = parse_config(MINIMAL + '\n[panel]\n[panel.join_button]\npin = 13\n'
                                 '[panel.light]\nkind = "dual"\n')
    assert cfg.panel is not None and cfg.panel.light.pins() == {"green_pin": 6, "red_pin": 5}


def test_bad_voice_settings_are_named() -> None:
    problems = problems_of(MINIMAL + '\n[voice]\nvolume_percent = 120\nwords_per_minute = 5\n'
                                     'pcm = 3\n')
    assert "voice.pcm: expected str, got int" in problems


@given(st.integers(min_value=-1000, max_value=1000))
def test_any_pin_number_is_taken_or_refused_by_name(pin: int) -> None:
    text = MINIMAL + f"\n[panel]\n[panel.join_button]\npin = {pin}\n[panel.light]\nkind = \"none\"\n"
    if 0 <= pin <= 27:
        assert parse_config(text).panel.join_button.pin == pin  # type: ignore[union-attr]
    else:
        assert problems_of(text) == [
            f"panel.join_button.pin: {pin} is not a GPIO of the Pi's header (0-27)"]


@pytest.mark.parametrize("command", ["check", "run"])
def test_bad_pins_exit_2_before_anything_is_touched(tmp_path: Path, command: str) -> None:
    state = tmp_path / "state"
    path = tmp_path / "endpoint.toml"
    path.write_text(MINIMAL.replace('id = "c00001-r1"', f'id = "c00001-r1"\nstate_dir = "{state}"')
                    + PANEL.replace("pin = 17", "pin = 99"), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "diemcau", command, "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "panel.join_button.pin: 99 is not a GPIO of the Pi's header (0-27)" in proc.stderr
    assert not state.exists()
