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
- libx264 asks for transparent huge pages for its large buffers (frames,
  lookahead), and each is then resident in whole 2 MiB pages. Turned off for
  this process: 129.5 → 123.1 MB at 720p30, with no measurable change in CPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # <malloc.h>
MALLOC_ARENAS = 2
PR_SET_THP_DISABLE = 41  # <linux/prctl.h>


def settle() -> None:
    """Limit malloc arenas and BLAS threads, no huge pages; safe to call more than once."""
    # An operator's own setting (the systemd unit's environment) wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
    except OSError:
        log.debug("no C library found (%s): process settings left as they are", name)
        return
    _no_huge_pages(libc)
    if "MALLOC_ARENA_MAX" not in os.environ:
        _two_arenas(libc)


def _no_huge_pages(libc: ctypes.CDLL) -> None:
    try:
        prctl = libc.prctl
    except AttributeError:
        return
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                      ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    if prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0:
        log.debug("prctl(PR_SET_THP_DISABLE) refused: %s", os.strerror(ctypes.get_errno()))


def _two_arenas(libc: ctypes.CDLL) -> None:
    try:
        mallopt = libc.mallopt
    except AttributeError:
        log.debug("no glibc mallopt here: malloc arenas left as they are")
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(M_ARENA_MAX, MALLOC_ARENAS) != 1:
        log.debug("mallopt(M_ARENA_MAX) refused: malloc arenas left as they are")
