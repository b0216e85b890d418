"""The core stays pure, and starting the box does not load the media stack.

Each import check imports modules in a fresh interpreter and looks at
``sys.modules`` there: in the test process itself everything is long since
imported. That the core reads no clock is read from its source (``ast``); which
parts of diemcau each layer may import, in tests/test_layers.py.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import diemcau.core

CORE_MODULES = sorted(f"diemcau.core.{m.name}" for m in pkgutil.iter_modules(diemcau.core.__path__))

# What adapters wrap: the core must never need one of them.
ADAPTER_LIBRARIES = ["paho", "av", "alsaaudio", "gpiozero", "psutil", "numpy", "picamera2"]
# I/O and concurrency from the standard library.
IO_MODULES = ["sqlite3", "socket", "ssl", "threading", "subprocess"]
# Reading a clock: the core is given the time as an argument instead.
CLOCK_MODULES = {"time", "datetime"}
CLOCK_READS = {"time", "time_ns", "monotonic", "monotonic_ns", "perf_counter",
               "perf_counter_ns", "process_time", "now", "utcnow", "today", "localtime", "gmtime"}
# What makes the box slow to come online; loaded only in the media and screen children.
MEDIA_STACK = ["av", "numpy", "alsaaudio", "picamera2", "PIL", "segno"]


# The child interpreters start without the machine's site set-up (-S) and add only our
# virtual environment: a .pth file the machine itself installs (one here loads threading
# through certifi at every start) must not count as something the core imported.
OWN_SITE = f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n"


def modules_after_import(*names: str) -> dict[str, list[str]]:
    """For each forbidden-looking top-level module loaded by importing ``names``: who asked."""
    script = OWN_SITE + f"""
import json, sys
for name in {list(names)!r}:
    __import__(name)
print(json.dumps(sorted({{m.partition(".")[0] for m in sys.modules}})))
"""
    done = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def import_chain(module: str, target: str) -> str:
    """Which imports led to ``target``, from ``python -X importtime`` (for failure messages)."""
    done = subprocess.run([sys.executable, "-S", "-X", "importtime", "-c",
                           OWN_SITE + f"import {module}"],
                          capture_output=True, text=True, timeout=60, check=False)
    lines = [line.rsplit("|", 1)[-1] for line in done.stderr.splitlines() if "|" in line]
    for n, line in enumerate(lines):
        if line.strip() == target:
            # importtime prints a module after what it imported: the chain follows it,
            # each step less indented than the one before.
            chain, depth = [line.strip()], len(line) - len(line.lstrip())
            for later in lines[n + 1:]:
                indent = len(later) - len(later.lstrip())
                if indent < depth:
                    chain.append(later.strip())
                    depth = indent
            return " <- ".join(chain)
    return f"{target}: not found in the import times"


def test_there_are_core_modules_to_check() -> None:
    assert {"diemcau.core.meeting", "diemcau.core.backoff"} <= set(CORE_MODULES)


@pytest.mark.parametrize("module", CORE_MODULES)
def test_the_core_imports_no_adapter_library(module: str) -> None:
    loaded = set(modules_after_import(module))
    bad = sorted(loaded & set(ADAPTER_LIBRARIES))
    assert not bad, [import_chain(module, m) for m in bad]


@pytest.mark.parametrize("module", ["diemcau.core.meeting", "diemcau.core.backoff",
                                    "diemcau.core.events"])
def test_the_state_machine_imports_no_io(module: str) -> None:
    loaded = set(modules_after_import(module))
    bad = sorted(loaded & set(IO_MODULES))
    assert not bad, [import_chain(module, m) for m in bad]


def test_the_whole_core_imports_no_io() -> None:
    loaded = set(modules_after_import(*CORE_MODULES))
    bad = sorted(loaded & set(IO_MODULES))
    assert not bad, [import_chain("diemcau.core.alerts", m) for m in bad]


@pytest.mark.parametrize("module", ["diemcau.supervisor", "diemcau.app", "diemcau.cli"])
def test_starting_the_box_does_not_load_the_media_stack(module: str) -> None:
    loaded = set(modules_after_import(module))
    bad = sorted(loaded & set(MEDIA_STACK))
    assert not bad, [import_chain(module, m) for m in bad]


def test_the_check_itself_sees_an_imported_library() -> None:
    # json and sqlite3 are in every Python: a check that cannot see them proves nothing.
    assert "sqlite3" in modules_after_import("sqlite3")
    assert "sqlite3" in import_chain("sqlite3", "sqlite3")


def clock_reads(source: str) -> list[str]:
    """Where ``source`` imports a clock module or calls a function that reads a clock."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {a.name}" for a in node.names
                      if a.name.partition(".")[0] in CLOCK_MODULES]
        elif isinstance(node, ast.ImportFrom) and not node.level and (
                (node.module or "").partition(".")[0] in CLOCK_MODULES):
            found.append(f"{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in CLOCK_READS:
                found.append(f"{node.lineno}: {ast.unparse(func)}()")
    return found


CORE_FILES = sorted(Path(diemcau.core.__file__).parent.glob("*.py"))


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.name)
def test_the_core_reads_no_clock(path: Path) -> None:
    found = clock_reads(path.read_text(encoding="utf-8"))
    assert not found, f"core/{path.name}: {found}"


@pytest.mark.parametrize("source", [
    "import time\n", "from datetime import datetime\n", "import datetime as dt\n",
    "def f(clock):\n    return clock.monotonic()\n", "def f(dt):\n    return dt.now()\n",
])
def test_the_clock_check_sees_a_clock_read(source: str) -> None:
    assert clock_reads(source)
