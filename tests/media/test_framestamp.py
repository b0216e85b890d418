"""The frame stamp: what the box writes, a receiver reads back exactly, or not at all."""

from __future__ import annotations

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diemcau.media import framestamp

SIZES = [(360, 640), (480, 854), (720, 1280)]


def stamp(number: int, y: np.ndarray) -> None:
    """Stamp a whole C-contiguous plane, as the box does a frame's buffer."""
    framestamp.stamp(number, y, width=y.shape[1], height=y.shape[0])


def picture(height: int = 360, width: int = 640, seed: int = 0) -> np.ndarray:
    """A busy luma plane, like a test pattern: the stamp must not depend on what is under it."""
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_round_trip_at_every_profile_size(height: int, width: int) -> None:
    y = picture(height, width)
    stamp(4321, y)
    assert framestamp.read(y) == 4321


@settings(max_examples=300)
@given(number=st.integers(0, framestamp.MODULO - 1))
def test_any_frame_number_reads_back(number: int) -> None:
    y = picture()
    stamp(number, y)
    assert framestamp.read(y) == number


def test_numbers_wrap_at_24_bits() -> None:
    y = picture()
    stamp(framestamp.MODULO + 7, y)
    assert framestamp.read(y) == 7


def test_only_the_strip_is_touched() -> None:
    y = picture()
    before = y.copy()
    stamp(99, y)
    rows = framestamp.strip_height(y.shape[0])
    assert np.array_equal(y[rows:], before[rows:])


def test_works_on_a_plane_with_row_padding() -> None:
    # A decoded frame's plane is often wider in memory than the picture.
    padded = picture(360, 704)
    before = padded.copy()
    framestamp.stamp(12345, padded, width=640, height=360, line_size=704)
    assert framestamp.read(padded[:, :640]) == 12345
    assert np.array_equal(padded[:, 640:], before[:, 640:])  # the padding is left alone


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_a_pyav_frame_is_stamped_in_place_with_grey_chroma(height: int, width: int) -> None:
    frame = av.VideoFrame.from_ndarray(
        np.random.default_rng(1).integers(0, 256, (height * 3 // 2, width), dtype=np.uint8),
        format="yuv420p")
    framestamp.stamp_frame(777, frame)
    luma = frame.planes[0]
    y = np.frombuffer(luma, np.uint8).reshape(height, luma.line_size)[:, :width]
    assert framestamp.read(y) == 777
    rows = framestamp.strip_height(height) // 2
    for plane in frame.planes[1:]:
        chroma = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
        assert (chroma[:rows] == 128).all()
        assert not (chroma[rows:] == 128).all()


@settings(max_examples=100)
@given(number=st.integers(0, framestamp.MODULO - 1), seed=st.integers(0, 2**32 - 1))
def test_survives_mild_noise(number: int, seed: int) -> None:
    # Roughly what a low-bitrate encoder leaves: noise of sigma 20 and clipping.
    y = picture(seed=seed % 1000)
    stamp(number, y)
    noise = np.random.default_rng(seed).normal(0, 20, y.shape)
    noisy = np.clip(y.astype(np.float64) + noise, 0, 255).astype(np.uint8)
    assert framestamp.read(noisy) == number


def test_survives_blurred_edges() -> None:
    y = picture()
    stamp(0xABCDEF, y)
    blurred = y.astype(np.float64)
    blurred[:, 1:-1] = (blurred[:, :-2] + blurred[:, 1:-1] + blurred[:, 2:]) / 3
    assert framestamp.read(blurred.astype(np.uint8)) == 0xABCDEF


def test_a_picture_without_a_stamp_reads_as_none() -> None:
    assert framestamp.read(picture()) is None
    assert framestamp.read(np.full((360, 640), 128, np.uint8)) is None


def test_a_damaged_stamp_reads_as_none_not_as_another_number() -> None:
    y = picture()
    stamp(1000, y)
    cell_w = y.shape[1] // framestamp.CELLS
    rows = framestamp.strip_height(y.shape[0])
    # Flip one number bit: the check byte no longer matches.
    cell = y[:rows, 5 * cell_w:6 * cell_w]
    cell[...] = framestamp.WHITE if cell.mean() < 128 else framestamp.BLACK
    assert framestamp.read(y) is None


def test_too_small_a_picture_is_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        stamp(1, np.zeros((8, 64), np.uint8))
    with pytest.raises(ValueError, match="2-D"):
        framestamp.read(np.zeros((360, 640, 3), np.uint8))


def test_a_receiver_reads_stamps_in_order_from_pictures_no_lost_packet_touched(tmp_path) -> None:
    # A stamped stream with SRT-sized runs of TS packets (7 × 188 bytes) lost,
    # as SRT drops what comes too late: the decoder conceals from older
    # pictures, stamp strip included, until the next keyframe.
    from tests.harness.srt_listener import read_recording

    whole, cut = tmp_path / "whole.ts", tmp_path / "cut.ts"
    with av.open(str(whole), "w") as out:
        stream = out.add_stream("libx264", rate=15)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        stream.options = {"g": "30", "tune": "zerolatency", "preset": "ultrafast"}
        for number in range(1, 151):
            frame = av.VideoFrame.from_ndarray(
                np.full((360, 640, 3), number * 3 % 255, np.uint8), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            framestamp.stamp_frame(number, frame)
            frame.pts = number
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    data = whole.read_bytes()
    runs = len(data) // (7 * 188)
    lost = set(np.random.default_rng(7).choice(np.arange(3, runs), 10, replace=False).tolist())
    cut.write_bytes(b"".join(data[r * 7 * 188:(r + 1) * 7 * 188]
                             for r in range(runs + 1) if r not in lost))

    intact, damaged = read_recording(whole), read_recording(cut)
    assert intact.stamped == list(range(1, 151)) and not any(intact.concealed)
    assert any(damaged.concealed)
    everything = damaged.stamped
    assert everything != sorted(set(everything)), "some concealed picture showed an older stamp"
    clean = damaged.stamped_undamaged
    assert clean == sorted(set(clean)) and len(clean) >= 20
