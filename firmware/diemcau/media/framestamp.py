"""A frame number written into the picture as black and white blocks, and read back.

The box stamps each test-pattern frame; a receiver (a test, the demo, a person
checking a media server) reads the exact frame number from the decoded
picture, so it can tell which frames arrived.

Layout, in the luma (Y) plane only: a strip across the top, ``strip_height``
rows tall, cut into 32 equal cells from the left edge. Cells 0-23 are the
frame number (most significant bit first, modulo 2**24), cells 24-31 a check
byte (the low byte of the CRC-32 of the three number bytes). A 1 is luma 235
(white), a 0 luma 16 (black): video-range extremes. Cells are at least
4 pixels wide and 16 rows tall, so they survive H.264 at low bitrates.

The box stamps with plain buffer writes (no numpy on the encoding thread);
reading back is for receivers and uses numpy.

    >>> import numpy as np
    >>> y = np.zeros((360, 640), np.uint8)
    >>> stamp(1234, y, width=640, height=360)
    >>> read(y)
    1234
"""

from __future__ import annotations

import functools
import zlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import av
    import numpy as np

NUMBER_BITS = 24
CHECK_BITS = 8
CELLS = NUMBER_BITS + CHECK_BITS
MODULO = 1 << NUMBER_BITS

WHITE = 235
BLACK = 16
# A cell is read only when its inner mean is clearly on one side; anything
# in between is a damaged or missing stamp, not a guess.
_ZERO_AT_MOST = 96
_ONE_AT_LEAST = 160


def strip_height(height: int) -> int:
    """Rows the strip takes in a picture ``height`` rows tall: 16 per 360 rows."""
    return 16 * max(1, height // 360)


def _geometry(width: int, height: int) -> tuple[int, int]:
    """(cell width, strip height) in pixels for this picture; ValueError if too small."""
    cell_w = width // CELLS
    rows = strip_height(height)
    if cell_w < 4 or height < rows:
        raise ValueError(f"a {width}x{height} picture is too small for a frame stamp")
    return cell_w, rows


def _check(number: int) -> int:
    return zlib.crc32(number.to_bytes(3, "big")) & 0xFF


def stamp(frame_number: int, y_plane: Any, *, width: int, height: int,
          line_size: int | None = None) -> None:
    """Write ``frame_number`` (modulo 2**24) into the top strip of a luma plane, in place.

    ``y_plane``: any writable buffer of bytes holding ``height`` rows of
    ``line_size`` bytes (``width`` by default), ``width`` pixels of each used:
    a PyAV plane, a bytearray, a C-contiguous uint8 array. The strip is one
    row of bytes, built once and copied into each of its rows.
    """
    cell_w, rows = _geometry(width, height)
    line_size = line_size or width
    number = frame_number % MODULO
    word = (number << CHECK_BITS) | _check(number)
    row = b"".join(_eight_cells(byte, cell_w) for byte in word.to_bytes(CELLS // 8, "big"))
    view = memoryview(y_plane).cast("B")
    if len(row) == line_size:
        view[:rows * line_size] = row * rows  # the strip is whole rows: one copy
        return
    for start in range(0, rows * line_size, line_size):
        view[start:start + len(row)] = row


@functools.lru_cache(maxsize=1024)
def _eight_cells(byte: int, cell_w: int) -> bytes:
    """The cells of one byte of the word, most significant bit first (made once per byte)."""
    white, black = bytes([WHITE]) * cell_w, bytes([BLACK]) * cell_w
    return b"".join(white if (byte >> (7 - bit)) & 1 else black for bit in range(8))


def stamp_frame(frame_number: int, frame: av.VideoFrame) -> None:
    """Stamp a YUV 4:2:0 frame: the strip in luma, grey chroma under it.

    Grey chroma keeps the blocks plain black and white on screen too.
    """
    luma = frame.planes[0]
    stamp(frame_number, luma, width=frame.width, height=frame.height, line_size=luma.line_size)
    chroma_rows = strip_height(frame.height) // 2
    for plane in frame.planes[1:]:
        size = chroma_rows * plane.line_size
        memoryview(plane)[:size] = _grey(size)


@functools.lru_cache(maxsize=8)
def _grey(size: int) -> bytes:
    return b"\x80" * size


def read(y_plane: np.ndarray) -> int | None:
    """The frame number stamped in ``y_plane``, or None if there is no intact stamp."""
    if y_plane.ndim != 2:
        raise ValueError(f"expected a 2-D luma plane, got shape {y_plane.shape}")
    cell_w, rows = _geometry(y_plane.shape[1], y_plane.shape[0])
    # Only the middle of each cell: the edges carry the encoder's ringing.
    top, bottom = rows // 4, rows - rows // 4
    margin = cell_w // 4
    strip = y_plane[top:bottom, : CELLS * cell_w].reshape(bottom - top, CELLS, cell_w)
    means = strip[:, :, margin:cell_w - margin].mean(axis=(0, 2))
    word = 0
    for mean in means:
        if mean <= _ZERO_AT_MOST:
            word <<= 1
        elif mean >= _ONE_AT_LEAST:
            word = (word << 1) | 1
        else:
            return None
    number = word >> CHECK_BITS
    if word & 0xFF != _check(number):
        return None
    return number
