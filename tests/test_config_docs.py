"""docs/configuration.md (and the pages its table points to) lists every key the box accepts,
with the default ``diemcau.config`` really has.

Each table row names keys in its first cell: a full path (`mqtt.host`), or, after one, a
sibling (`mqtt.port`, `green_pin`, `.pull_up`); in a section's own table (a heading
with `[media]`), a bare name is in that section. The row's default cell gives one
default per key, separated by commas (one for all when they share it).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from diemcau.config import Config, _struct_of

DOCS = Path(__file__).resolve().parents[1] / "docs"
MAIN = DOCS / "configuration.md"
# Words a page uses for "no value": an empty string, an empty table, no section.
NOTHING = ("none", "no ", "empty", "system cas", "device id", '""')


def key_paths(struct: type = Config, prefix: str = "", instance: Any = None) -> dict[str, Any]:
    """Every leaf key of the configuration, by path, with its default (UNSET: required).

    A section made by a default factory gives its keys' defaults from that instance
    (``panel.join_button.pin`` is 17 though ``PanelButton.pin`` has none).
    """
    keys: dict[str, Any] = {}
    for f in msgspec.structs.fields(struct):
        if instance is not None:
            default = getattr(instance, f.name)
        elif f.required:
            default = msgspec.UNSET
        else:
            default = f.default_factory() if f.default is msgspec.NODEFAULT else f.default
        sub = _struct_of(f.type)
        if sub is not None:
            inner = default if isinstance(default, msgspec.Struct) else None
            keys |= key_paths(sub, f"{prefix}{f.name}.", inner)
        else:
            keys[prefix + f.name] = default
    return keys


def pages() -> list[Path]:
    """configuration.md and the pages it links to."""
    text = MAIN.read_text(encoding="utf-8")
    linked = {m for m in re.findall(r"\]\(([a-z-]+\.md)(?:#[^)]*)?\)", text)}
    return [MAIN] + [DOCS / name for name in sorted(linked)]


def split_cell(cell: str) -> list[str]:
    """A cell's comma-separated parts, not splitting inside brackets."""
    parts, depth, current = [], 0, ""
    for ch in cell:
        depth += ch in "[(" and 1 or (ch in "])" and -1 or 0)
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    return parts + [current.strip()]


def documented() -> dict[str, tuple[str, str]]:
    """Key path → (its default as written, where), from every table of every page."""
    found: dict[str, tuple[str, str]] = {}
    for page in pages():
        section = ""
        header: list[str] = []
        for line in page.read_text(encoding="utf-8").splitlines():
            if line.startswith("#"):
                m = re.search(r"`\[([a-z_.]+)\]`", line)
                section = m[1] + "." if m else ""
                header = []
                continue
            if not line.startswith("|"):
                header = [] if not line.strip() else header
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not header:
                header = [c.lower() for c in cells]
                continue
            if set(cells[0]) <= set("-: ") or "key" not in header[0] or "default" not in header:
                continue
            names = re.findall(r"`([^`]+)`", cells[0])
            paths, parent = [], section
            for name in names:
                if name.startswith("."):
                    path = parent + name[1:]
                elif "." in name and not name.endswith("*"):
                    path = name
                elif name.endswith(".*"):
                    continue
                else:
                    path = parent + name
                parent = path.rsplit(".", 1)[0] + "." if "." in path else parent
                paths.append(path)
            defaults = split_cell(cells[header.index("default")])
            if len(defaults) == 1:
                defaults *= len(paths)
            for path, default in zip(paths, defaults, strict=False):
                found.setdefault(path, (default, f"{page.name}: {line[:60]}"))
            if len(defaults) != len(paths):
                found[f"(row) {line[:60]}"] = ("", f"{len(paths)} keys, {len(defaults)} defaults")
    return found


def agrees(text: str, default: Any) -> bool:
    text = text.replace("`", "").replace("−", "-").strip()
    lowered = text.lower()
    if default is msgspec.UNSET:
        return "required" in lowered or lowered.startswith(("none", "no "))
    if isinstance(default, bool):
        return lowered == str(default).lower()
    if isinstance(default, int | float):
        try:
            return float(text) == float(default)
        except ValueError:
            return False
    if isinstance(default, str):
        return text in (json.dumps(default), default) or (
            default == "" and lowered.startswith(NOTHING))
    if isinstance(default, list):
        try:
            return json.loads(text) == default
        except ValueError:
            return False
    if isinstance(default, dict) and not default:
        return lowered.startswith(NOTHING) or text == "{}"
    return default is None and lowered.startswith(NOTHING)


def test_every_row_gives_one_default_per_key() -> None:
    bad = {k: v for k, v in documented().items() if k.startswith("(row)")}
    assert not bad, bad


def test_every_documented_key_exists() -> None:
    known = key_paths()
    ghosts = [p for p in documented() if not p.startswith("(row)") and p not in known]
    assert not ghosts, f"documented but not accepted by diemcau.config: {ghosts}"


@pytest.mark.parametrize("path", sorted(key_paths()))
def test_every_key_is_documented_with_its_default(path: str) -> None:
    found = documented()
    assert path in found, f"{path} is in diemcau.config but in no table of {[p.name for p in pages()]}"
    text, where = found[path]
    default = key_paths()[path]
    assert agrees(text, default), f"{path}: the docs say {text!r} ({where}), the code {default!r}"


@pytest.mark.parametrize(("text", "default", "ok"), [
    ("`8883`", 8883, True), ("`8884`", 8883, False), ("−60.0", -60.0, True),
    ('`"auto"`', "auto", True), ('`"lgpio"`', "mock", False), ("`true`", False, False),
    ('`["srt"]`', ["srt"], True), ('`["srt", "rtsp"]`', ["srt"], False),
    ("system CAs", "", True), ("required", msgspec.UNSET, True), ("`30`", msgspec.UNSET, False),
])
def test_the_comparison_can_fail(text: str, default: Any, ok: bool) -> None:
    assert agrees(text, default) is ok
