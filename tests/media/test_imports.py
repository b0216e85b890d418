"""The media package's layering: a leaf vocabulary, no import circle, PyAV loaded only to stream.

Each check imports in a fresh interpreter (see tests/core/test_purity.py).
"""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import pytest

import diemcau.media
from tests.core.test_purity import MEDIA_STACK, import_chain, modules_after_import

MEDIA = Path(diemcau.media.__file__).parent
MODULES = sorted(f"diemcau.media.{m.name}" for m in pkgutil.iter_modules(diemcau.media.__path__))


def diemcau_imports(path: Path) -> list[str]:
    """The diemcau modules ``path`` imports, wherever in the file (functions included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(
                "diemcau")):
            found.append("." * node.level + (node.module or ""))
    return found


def test_the_vocabulary_imports_nothing_of_diemcau() -> None:
    assert diemcau_imports(MEDIA / "defs.py") == []


def test_the_modules_import_each_other_without_a_circle() -> None:
    graph = {}
    for module in MODULES:
        name = module.rpartition(".")[2]
        tree = ast.parse((MEDIA / f"{name}.py").read_text(encoding="utf-8"))
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    targets.add(node.module.partition(".")[0])
                else:  # from . import camera
                    targets.update(alias.name for alias in node.names)
        graph[name] = targets - {name}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import circle: {' -> '.join((*path, name))}"
        if name in done:
            return
        for target in sorted(graph.get(name, ())):
            visit(target, (*path, name))
        done.add(name)

    for name in sorted(graph):
        visit(name, ())


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_alone(module: str) -> None:
    # A circle shows as an ImportError when the module is the first one imported.
    loaded = set(modules_after_import(module))
    assert "diemcau" in loaded


@pytest.mark.parametrize("module", MODULES)
def test_no_module_imports_the_package_inside_a_function(module: str) -> None:
    # Lazy imports are for outside libraries (PyAV, numpy, picamera2), not for dodging a circle.
    # One exception: the media process's entry imports the rest (media/serve.py) only once its
    # Start is there, so that it can wait as the box's spare while small (media/process.py, Spare).
    if module == "diemcau.media.child":
        pytest.skip("imports media/serve.py after its Start, on purpose (the spare)")
    path = MEDIA / f"{module.rpartition('.')[2]}.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nested = [f"line {node.lineno}" for fn in ast.walk(tree)
              if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
              for node in ast.walk(fn) if isinstance(node, ast.ImportFrom) and node.level]
    assert not nested, nested


@pytest.mark.parametrize("module", ["diemcau.media.session", "diemcau.media.camera"])
def test_importing_the_media_path_does_not_load_pyav(module: str) -> None:
    loaded = set(modules_after_import(module))
    bad = sorted(loaded & set(MEDIA_STACK))
    assert not bad, [import_chain(module, m) for m in bad]
