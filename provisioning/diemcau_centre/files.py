"""Files the centre keeps: written whole or not at all, secrets never readable by others.

    write_atomic(Path("/srv/centre/ca.key"), pem, 0o600, replace=False)
    with locked(Path("/srv/centre/.fleet.lock")):
        ...  # read, change, write_atomic: no other diemcau-centre does the same meanwhile
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from diemcau.shared import write_atomic as box_write_atomic

from .keys import KeyExists


def write_atomic(path: Path, data: bytes, mode: int = 0o644, *, replace: bool = True) -> None:
    """Write ``data`` to ``path`` in one step, created with ``mode`` before a byte is written.

    With ``replace=False`` an existing file is left alone and KeyExists raised.
    The box's own atomic write does the work: one implementation for both.
    """
    try:
        box_write_atomic(path, data, mode, replace=replace)
    except FileExistsError:
        raise KeyExists(f"{path} already exists (use --force to replace it)") from None


@contextlib.contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (made if missing) for the ``with`` block."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
