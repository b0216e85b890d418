"""Process-wide settings at start: glibc's malloc arenas and BLAS threads (adapters/process.py)."""

from __future__ import annotations

import os
import subprocess
import sys

# Eight threads each allocate once and stay alive together: glibc gives each a
# new arena unless told otherwise. malloc_stats() prints one "Arena N:" each.
ARENAS = """
import ctypes, os, sys, threading
from diemcau.adapters.process import settle
if sys.argv[1] == "settle":
    settle()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
allocated = threading.Barrier(9)
def work():
    libc.malloc(4096)
    allocated.wait()
    allocated.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
allocated.wait()
libc.malloc_stats()
allocated.wait()
print(os.environ.get("OPENBLAS_NUM_THREADS"))
"""


def run(mode: str, **env: str) -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("MALLOC_ARENA_MAX", "OPENBLAS_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", ARENAS, mode], env={**clean, **env},
                          capture_output=True, text=True, timeout=30, check=True)
    return done.stderr.count("Arena "), done.stdout.strip()


def test_settle_limits_malloc_to_two_arenas_and_blas_to_one_thread() -> None:
    assert run("as-is")[0] >= 4  # the check can fail: without settle() threads spread out
    arenas, blas = run("settle")
    assert arenas == 2
    assert blas == "1"


def test_an_operators_own_settings_win() -> None:
    arenas, blas = run("settle", MALLOC_ARENA_MAX="3", OPENBLAS_NUM_THREADS="2")
    assert arenas == 3
    assert blas == "2"
