"""Small run-time state under the state directory, written atomically.

Write to a temporary file, fsync, rename over the old one, fsync the
directory: a power cut leaves either the old value or the new one.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

# The temporary names write_atomic makes: "." + the file's name + "." + mkstemp's 8 characters.
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}$")


def remove_stray_temp_files(directory: Path) -> int:
    """Remove what write_atomic left behind when the process was killed mid-write.

    Call at start, before anything writes; looks in ``directory`` and below.
    Returns how many files went.
    """
    removed = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            if _TEMP_NAME.match(name):
                Path(root, name).unlink(missing_ok=True)
                removed += 1
    return removed


def write_atomic(path: Path, data: bytes, mode: int = 0o644, *, replace: bool = True) -> None:
    """Write ``data`` to ``path`` whole or not at all.

    The file has ``mode`` before a byte is written (a private key is never
    readable by others, not even for a moment). With ``replace=False`` an
    existing file is left alone and FileExistsError raised, checked by the
    kernel with no window between check and write.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path exists
            os.unlink(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
