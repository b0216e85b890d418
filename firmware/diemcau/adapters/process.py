"""Process-wide settings the box makes once at start, before any thread exists.

Both are about resident memory on a 1-2 GB Pi, measured with ``make bench``
(docs/media.md, "Budgets"):

- glibc gives each thread that allocates its own malloc arena (up to eight
  per core), and memory freed in one arena is not reused by the others.
  The box has a dozen threads while live (encoding, network, x264's slice
  threads, SRT's); two arenas cut about 6 MB at 720p30 for no measurable
  CPU cost.
- numpy (imported by picamera2 and the voice's volume scaling, not by the
  media path itself) starts an OpenBLAS thread pool of one thread per core,
  each with its own buffers, for work the box never gives it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # <malloc.h>
MALLOC_ARENAS = 2


def settle() -> None:
    """Limit glibc's malloc arenas and BLAS threads; safe to call more than once."""
    # An operator's own setting (the systemd unit's environment) wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.debug("no glibc mallopt here (%s): malloc arenas left as they are", name)
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(M_ARENA_MAX, MALLOC_ARENAS) != 1:
        log.debug("mallopt(M_ARENA_MAX) refused: malloc arenas left as they are")
