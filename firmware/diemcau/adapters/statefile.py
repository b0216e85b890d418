"""Small run-time state under the state directory, written atomically.

Each write goes through :func:`diemcau.shared.write_atomic` (a temporary
file, fsync, rename, fsync the directory): a power cut leaves either the old
value or the new one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..shared import write_atomic


class Counters:
    """Named integers that only grow, kept in one JSON file (the link's session number;
    the event seq is in the ledger, written with its event).

    >>> c = Counters(Path("/tmp/x/counters.json")); c.bump("session")  # doctest: +SKIP
    1
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._values: dict[str, int] = {}
        try:
            loaded: Any = json.loads(path.read_text())
            if isinstance(loaded, dict):
                self._values = {k: v for k, v in loaded.items() if isinstance(v, int)}
        except (FileNotFoundError, ValueError):
            pass  # a missing or garbled file starts from zero; numbers only need to grow from here

    def get(self, name: str) -> int:
        return self._values.get(name, 0)

    def bump(self, name: str) -> int:
        self._values[name] = self.get(name) + 1
        write_atomic(self._path, json.dumps(self._values).encode())
        return self._values[name]
