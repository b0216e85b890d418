"""The camera keys of ``[media]``: what loads, and how a mistake reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from diemcau.config import load_config, parse_config
from tests.harness.example import loadable_example
from tests.test_config import MINIMAL, problems_of

EXAMPLE = Path(__file__).parents[1] / "firmware" / "examples" / "endpoint.toml"


def media(*lines: str) -> str:
    return MINIMAL + "\n[media]\n" + "".join(f"{line}\n" for line in lines)


@pytest.mark.parametrize("lines", [
    ['camera = "auto"'],
    ['camera = "auto"', 'camera_fallback = "test_pattern"'],
    ['camera = "auto"', 'camera_device = "/dev/video2"'],
    ['camera = "usb"', 'camera_device = "/dev/v4l/by-id/usb-Logitech-video-index0"',
     'camera_input_format = "yuyv422"'],
    ['camera = "picamera2"'],
    ['camera = "test_pattern"'],
])
def test_camera_choices_load(lines: list[str]) -> None:
    cfg = parse_config(media(*lines))
    assert cfg.media.camera in ("auto", "usb", "picamera2", "test_pattern")


def test_camera_defaults() -> None:
    cfg = parse_config(MINIMAL)
    assert (cfg.media.camera, cfg.media.camera_device, cfg.media.camera_input_format,
            cfg.media.camera_fallback) == ("test_pattern", "auto", "auto", "none")


@pytest.mark.parametrize(("lines", "key", "words"), [
    (['camera = "webcam"'], "media.camera", "'auto'"),
    (['camera = "usb"', 'camera_input_format = "h265"'], "media.camera_input_format", "'mjpeg'"),
    (['camera = "usb"', 'camera_device = "video0"'], "media.camera_device", "device path"),
    (['camera = "picamera2"', 'camera_device = "/dev/video0"'], "media.camera_device",
     "only for a USB camera"),
    (['camera = "usb"', 'camera_fallback = "test_pattern"'], "media.camera_fallback",
     "only applies"),
    (['camera_devise = "/dev/video0"'], "media.camera_devise", "did you mean 'camera_device'"),
])
def test_camera_mistakes_are_named_by_key(lines: list[str], key: str, words: str) -> None:
    problems = problems_of(media(*lines))
    assert len(problems) == 1, problems
    assert problems[0].startswith(key + ":") and words in problems[0], problems


def test_a_misspelt_camera_gets_the_nearest_choice() -> None:
    (problem,) = problems_of(media('camera = "picamera"'))
    assert problem.endswith("did you mean 'picamera2'?)"), problem


def test_the_example_file_loads_with_a_camera_set_to_auto(tmp_path: Path) -> None:
    cfg = load_config(loadable_example(tmp_path))
    assert cfg.media.camera == "auto"
