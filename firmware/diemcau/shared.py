"""What the box and the centre both need besides the protocol: atomic files, and how an
MQTT client reads ``[mqtt.tls]`` and guards its paho callbacks.

The centre imports this module, ``diemcau.protocol`` and ``diemcau.config``
and nothing else of the box. Standard library only.

    write_atomic(Path("/var/lib/diemcau/counters.json"), b"{}")  # whole or not at all
    client.tls_set_context(tls_context(cfg.mqtt.tls))           # None when TLS is off
"""

from __future__ import annotations

import functools
import logging
import os
import re
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Tls

# ---------------------------------------------------------------- atomic files

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


# ---------------------------------------------------------------- MQTT clients

def tls_context(tls: Tls) -> ssl.SSLContext | None:
    """The TLS context an ``[mqtt.tls]`` section asks for; None when TLS is off.

    No ``ca_file``: the system's trusted CAs. ``insecure_skip_verify`` (a lab
    only) turns off every check, as its name says.
    """
    if not tls.enabled:
        return None
    context = ssl.create_default_context(cafile=tls.ca_file or None)
    if tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file or None)
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def no_delay(sock: Any) -> None:
    """Turn Nagle off: a small reply would otherwise wait tens of ms for the last ACK."""
    import socket

    if hasattr(sock, "setsockopt"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def guarded(logger: logging.Logger) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A paho callback that logs its exceptions: one escaping kills paho's thread silently."""

    def decorate(callback: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(callback)
        def wrapper(*args: Any) -> None:
            try:
                callback(*args)
            except Exception:  # noqa: BLE001 - the connection must outlive any bug in a handler
                logger.exception("error in MQTT callback %s", callback.__name__)

        return wrapper

    return decorate
