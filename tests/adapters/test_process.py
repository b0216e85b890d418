"""Process-wide settings at start: glibc's malloc arenas and BLAS threads (adapters/process.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

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


HUGE_PAGES = """
import sys
from diemcau.adapters.process import settle
if sys.argv[1] == "settle":
    settle()
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("THP_enabled")))
"""


def test_settle_turns_transparent_huge_pages_off_for_the_process() -> None:
    def thp(mode: str) -> str:
        return subprocess.run([sys.executable, "-c", HUGE_PAGES, mode], capture_output=True,
                              text=True, timeout=30, check=True).stdout.strip()

    if thp("as-is") != "1":
        pytest.skip("this kernel has no transparent huge pages to turn off")
    assert thp("settle") == "0"
    # An operator's malloc setting does not keep the huge pages on.
    assert subprocess.run([sys.executable, "-c", HUGE_PAGES, "settle"],
                          env={**os.environ, "MALLOC_ARENA_MAX": "3"}, capture_output=True,
                          text=True, timeout=30, check=True).stdout.strip() == "0"
