"""Files the centre keeps: written whole or not at all, secrets never readable by others.

    write_atomic(Path("/srv/centre/ca.key"), pem, 0o600, replace=False)
    with locked(Path("/srv/centre/.fleet.lock")):
        ...  # read, change, write_atomic: no other diemcau-centre does the same meanwhile
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .keys import KeyExists


def write_atomic(path: Path, data: bytes, mode: int = 0o644, *, replace: bool = True) -> None:
    """Write ``data`` to ``path`` in one step (temporary file, fsync, rename, fsync the folder).

    The file is created with ``mode`` before a byte is written, so a private
    key is never readable by others, not even for a moment. With
    ``replace=False`` an existing file is left alone and KeyExists raised
    (checked by the kernel, with no window between check and write).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
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
    except FileExistsError:
        os.unlink(tmp)
        raise KeyExists(f"{path} already exists (use --force to replace it)") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
