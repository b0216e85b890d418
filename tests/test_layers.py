"""Who may import whom, read from the source with ``ast`` (no module is imported).

- ``protocol/`` imports nothing of diemcau outside ``protocol/``: the wire format stands alone;
- ``shared.py`` (what the box and the centre both need) imports at most ``config``;
- ``config.py`` imports at most ``protocol`` and ``shared``: the centre reads it too;
- ``core/`` imports only ``core``, ``protocol`` and ``config``: no adapter, no supervisor,
  no app, nothing that does I/O (``shared`` included);
- ``adapters/`` and ``media/`` import no supervisor, app or command line; ``parts/`` no
  supervisor (a part is given ports); ``ports.py`` no supervisor;
- the centre (``provisioning/diemcau_centre``) imports from diemcau only ``diemcau.protocol``,
  ``diemcau.shared`` and ``diemcau.config``;
- the web console (``diemcau_centre/web``): its state keeping (``store``, ``service``)
  imports no web framework, so it runs and is tested without one; its web app (``app``)
  reaches the broker and the database only through them (no paho, no SQLAlchemy); the
  rest of the centre loads none of the console's libraries at import time, so ``send``
  and ``watch`` start as fast as before.

Imports inside functions and under ``TYPE_CHECKING`` count like any other. That the
core reads no clock is checked in tests/core/test_purity.py; which libraries it loads, too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIRMWARE = REPO / "firmware"
CENTRE = REPO / "provisioning"

# A module's layer is its first name under diemcau: "core", "adapters", "protocol", "shared",
# "config", "supervisor", "app", "cli", ...  Allowed: only these layers (None: anything).
ALLOWED: dict[str, set[str] | None] = {
    "protocol": {"protocol"},
    "shared": {"shared", "config"},
    "config": {"config", "protocol", "shared"},
    "core": {"core", "protocol", "config"},
    "ports": {"ports", "core", "protocol", "config", "adapters"},  # adapters: data types only
}
FORBIDDEN: dict[str, set[str]] = {
    "adapters": {"supervisor", "app", "cli", "release_cli", "__main__"},
    "media": {"supervisor", "parts", "app", "cli", "release_cli", "__main__"},
    # A part is given ports and callbacks, never the supervisor.
    "parts": {"supervisor", "app", "cli", "release_cli", "__main__"},
}
CENTRE_ALLOWED = {"protocol", "shared", "config"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str, root: Path) -> bool:
    base = root.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imported(source: str, module: str, is_package: bool, root: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) for every import in ``source``, relative ones resolved."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for alias in node.names:
                # "from . import update" imports the module diemcau.core.update.
                full = f"{base}.{alias.name}"
                yield node.lineno, full if is_module(full, root) else base


def layer(name: str) -> str | None:
    """The layer of a diemcau module; None for anything else (the standard library, PyPI)."""
    parts = name.split(".")
    if parts[0] != "diemcau":
        return None
    return parts[1] if len(parts) > 1 else ""


def problems_in(path: Path, source: str, root: Path = FIRMWARE) -> list[str]:
    """What ``source`` (the text of the firmware module at ``path``) imports that its layer
    may not."""
    module = module_name(path, root)
    own = layer(module)
    allowed = ALLOWED.get(own or "")
    forbidden = FORBIDDEN.get(own or "", set())
    found = []
    for line, name in imported(source, module, path.name == "__init__.py", root):
        target = layer(name)
        if target is None or target == own:
            continue
        if (allowed is not None and target not in allowed) or target in forbidden:
            found.append(f"{path.relative_to(REPO)}:{line}: {own} imports {name}")
    return found


def centre_problems_in(path: Path, source: str) -> list[str]:
    module = module_name(path, CENTRE)
    found = []
    for line, name in imported(source, module, path.name == "__init__.py", CENTRE):
        target = layer(name)
        if target is not None and target not in CENTRE_ALLOWED:
            found.append(f"{path.relative_to(REPO)}:{line}: the centre imports {name}")
    return found


FIRMWARE_FILES = sorted((FIRMWARE / "diemcau").rglob("*.py"))
CENTRE_FILES = sorted((CENTRE / "diemcau_centre").rglob("*.py"))


WEB_LIBRARIES = ("starlette", "sse_starlette", "uvicorn", "jinja2", "multipart")
CONSOLE_LIBRARIES = WEB_LIBRARIES + ("sqlalchemy", "argon2")
# Centre module -> the packages it may not import (a prefix matches its submodules).
CENTRE_WEB_FORBIDDEN: dict[str, tuple[str, ...]] = {
    "diemcau_centre.web.store": WEB_LIBRARIES + ("diemcau_centre.web.app", "paho"),
    "diemcau_centre.web.service": WEB_LIBRARIES + ("diemcau_centre.web.app",),
    "diemcau_centre.web.app": ("paho", "sqlalchemy", "diemcau_centre.mqtt"),
}


def _top_level_imports(source: str, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """Like :func:`imported`, for the imports run when the module loads (not in functions)."""
    tree = ast.parse(source)
    body = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    yield from imported(ast.unparse(ast.Module(body=body, type_ignores=[])), module,
                        is_package, CENTRE)


def centre_web_problems_in(path: Path, source: str) -> list[str]:
    module = module_name(path, CENTRE)
    is_package = path.name == "__init__.py"
    where = path.relative_to(REPO)
    found = []
    forbidden = CENTRE_WEB_FORBIDDEN.get(module, ())
    for line, name in imported(source, module, is_package, CENTRE):
        if any(name == f or name.startswith(f + ".") for f in forbidden):
            found.append(f"{where}:{line}: {module} imports {name}")
    if not module.startswith("diemcau_centre.web"):
        for line, name in _top_level_imports(source, module, is_package):
            if name.split(".")[0] in CONSOLE_LIBRARIES or (
                    name.startswith("diemcau_centre.web.") and name != "diemcau_centre.web.run"):
                found.append(f"{where}: {module} loads {name} on import (line numbers "
                             f"counted without the rest of the file: {line})")
    return found


def test_there_are_files_in_every_layer() -> None:
    layers = {layer(module_name(p, FIRMWARE)) for p in FIRMWARE_FILES}
    assert {"protocol", "core", "adapters", "shared", "config", "supervisor", "app"} <= layers
    assert len(CENTRE_FILES) > 10


def test_the_firmware_layers_import_only_what_they_may() -> None:
    found = [p for path in FIRMWARE_FILES
             for p in problems_in(path, path.read_text(encoding="utf-8"))]
    assert not found, "\n".join(found)


def test_the_centre_imports_only_protocol_shared_and_config() -> None:
    found = [p for path in CENTRE_FILES
             for p in centre_problems_in(path, path.read_text(encoding="utf-8"))]
    assert not found, "\n".join(found)


# The checks themselves: each sees the import it is there to catch.

CORE_FILE = FIRMWARE / "diemcau" / "core" / "meeting.py"


@pytest.mark.parametrize(("path", "source"), [
    (CORE_FILE, "from ..adapters.mqtt import MqttLink\n"),
    (CORE_FILE, "from .. import supervisor\n"),
    (CORE_FILE, "import diemcau.app\n"),
    (CORE_FILE, "from ..shared import write_atomic\n"),
    (CORE_FILE, "def f():\n    from ..adapters import health\n"),
    (FIRMWARE / "diemcau" / "adapters" / "mqtt.py", "from ..supervisor import Supervisor\n"),
    (FIRMWARE / "diemcau" / "protocol" / "topics.py", "from ..core.meeting import Room\n"),
    (FIRMWARE / "diemcau" / "protocol" / "__init__.py", "from ..config import Config\n"),
    (FIRMWARE / "diemcau" / "config.py", "from .core import meeting\n"),
    (FIRMWARE / "diemcau" / "shared.py", "from .adapters.statefile import Counters\n"),
])
def test_a_bad_import_is_seen(path: Path, source: str) -> None:
    assert problems_in(path, source)


@pytest.mark.parametrize(("path", "source"), [
    (CORE_FILE, "from ..protocol.arguments import ARGS\nfrom .button import ButtonName\n"),
    (CORE_FILE, "from . import update\nimport msgspec\n"),
    (FIRMWARE / "diemcau" / "adapters" / "mqtt.py", "from ..core.events import LinkUp\n"),
    (FIRMWARE / "diemcau" / "protocol" / "__init__.py", "from .messages import Reply\n"),
])
def test_a_good_import_passes(path: Path, source: str) -> None:
    assert not problems_in(path, source)


@pytest.mark.parametrize("source", [
    "from diemcau.adapters.statefile import Counters\n",
    "from diemcau.core.meeting import ARGS\n",
    "import diemcau.supervisor\n",
    "def f():\n    from diemcau.core import identity\n",
])
def test_a_bad_import_in_the_centre_is_seen(source: str) -> None:
    assert centre_problems_in(CENTRE / "diemcau_centre" / "send.py", source)


def test_what_the_centre_may_import_passes() -> None:
    source = ("from diemcau.protocol.arguments import ARGS\nfrom diemcau.shared import guarded\n"
              "from diemcau.config import Mqtt\nfrom .files import locked\n")
    assert not centre_problems_in(CENTRE / "diemcau_centre" / "send.py", source)


def test_the_web_console_keeps_its_parts_apart() -> None:
    assert {module_name(p, CENTRE) for p in CENTRE_FILES} >= set(CENTRE_WEB_FORBIDDEN)
    found = [p for path in CENTRE_FILES
             for p in centre_web_problems_in(path, path.read_text(encoding="utf-8"))]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(("name", "source"), [
    ("store.py", "from starlette.requests import Request\n"),
    ("service.py", "def f():\n    import jinja2\n"),
    ("app.py", "from ..mqtt import Session\n"),
    ("app.py", "import sqlalchemy as sa\n"),
])
def test_a_bad_import_in_the_web_console_is_seen(name: str, source: str) -> None:
    assert centre_web_problems_in(CENTRE / "diemcau_centre" / "web" / name, source)


def test_the_console_commands_do_not_load_the_web_libraries() -> None:
    cli = CENTRE / "diemcau_centre" / "cli.py"
    assert centre_web_problems_in(cli, "import uvicorn\n")
    assert centre_web_problems_in(cli, "from .web.app import make_app\n")
    assert not centre_web_problems_in(cli, "from .web import run\ndef f():\n    import uvicorn\n")
