"""Real release artefacts for the update tests, and a real HTTP server to fetch them from.

The dependency wheels are built once per test session (the slow part); each
release is then the real firmware source with its version set, and for a
"bad" release one small, named change, built into a wheel and packed by the
centre's own ``pack``.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from diemcau.protocol import generate_signing_key, key_id, public_key_to_text
from diemcau.protocol.release import sign_manifest
from diemcau_centre.release import pack

FIRMWARE = Path(__file__).parents[2] / "firmware"

# Honest variations of the firmware: (file, text in it, what replaces it).
_RUN = "def run(cfg: Config, identity: Identity | None = None) -> int:\n"
CRASHES_AT_START = ("diemcau/app.py", _RUN, _RUN + "    raise RuntimeError('this release is broken')\n")
CANNOT_IMPORT = ("diemcau/__init__.py", '"""diemcau: the endpoint firmware."""\n',
                 '"""diemcau: the endpoint firmware."""\nimport no_such_module_anywhere  # noqa\n')
CRASHES_AFTER_READY = ("diemcau/supervisor.py", '            self.a.service.ready(f"device {self._dev}")\n',
                       '            self.a.service.ready(f"device {self._dev}")\n'
                       '            raise SystemExit(3)  # this release dies once it said ready\n')
NEVER_CONNECTS = ("diemcau/adapters/mqtt.py", "    def start(self) -> None:\n",
                  "    def start(self) -> None:\n        return  # this release never connects\n")


def _pip(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args, "-q", "--disable-pip-version-check"],
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


class ReleaseBuilder:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.deps = workdir / "deps"
        self.out = workdir / "out"
        _pip("wheel", "--wheel-dir", str(self.deps), str(FIRMWARE))
        for own in self.deps.glob("diemcau-*.whl"):
            own.unlink()

    @functools.cache  # noqa: B019 - one builder per session; each artefact is built once
    def artefact(self, version: str, change: tuple[str, str, str] | None = None) -> Path:
        src = self.workdir / f"src-{version}"
        shutil.copytree(FIRMWARE, src, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
        _replace(src / "pyproject.toml", r'(?m)^version = ".*"$', f'version = "{version}"')
        _replace(src / "diemcau" / "__init__.py", r'__version__ = ".*"', f'__version__ = "{version}"')
        if change is not None:
            path, old, new = change
            text = (src / path).read_text()
            assert old in text, f"{path} no longer holds {old!r}: update the variation"
            (src / path).write_text(text.replace(old, new, 1))
        wheels = self.workdir / f"wheels-{version}"
        _pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(wheels), str(src))
        for dep in self.deps.glob("*.whl"):
            shutil.copy(dep, wheels / dep.name)
        return pack(wheels, self.out)


def _replace(path: Path, pattern: str, new: str) -> None:
    text, n = re.subn(pattern, new, path.read_text(), count=1)
    assert n == 1, f"{pattern} not in {path}"
    path.write_text(text)


class ReleaseKey:
    """The centre's release key, made fresh for a test session."""

    def __init__(self) -> None:
        self.private = generate_signing_key()
        self.kid = key_id(self.private.public_key())
        self.public_text = public_key_to_text(self.private.public_key())

    def manifest(self, artefact: Path, url: str, *, data: bytes | None = None,
                 version: str | None = None) -> str:
        """Sign a manifest for ``artefact`` (or for other bytes ``data``, to test a mismatch)."""
        body = artefact.read_bytes() if data is None else data
        name = version or artefact.name.removeprefix("diemcau-").removesuffix(".tar")
        return sign_manifest(self.private, self.kid, version=name, url=url,
                             sha256=hashlib.sha256(body).hexdigest(), size_bytes=len(body))


class ArtefactServer:
    """A real HTTP server on loopback serving one directory."""

    def __init__(self, directory: Path) -> None:
        handler = functools.partial(_Handler, directory=str(directory))
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.directory = directory
        self.requests: list[str] = []
        self._server.requests = self.requests  # type: ignore[attr-defined]
        # Set: send 64 KiB every 50 ms, so a download takes a while; cleared mid-download,
        # the rest goes at full speed (a test holds a download only as long as it needs).
        self.slow = threading.Event()
        self._server.slow = self.slow  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/{name}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        self.server.requests.append(self.path)  # type: ignore[attr-defined]

    def copyfile(self, source, outputfile) -> None:  # noqa: ANN001
        if not self.server.slow.is_set():  # type: ignore[attr-defined]
            return super().copyfile(source, outputfile)
        while chunk := source.read(64 * 1024):
            outputfile.write(chunk)
            if self.server.slow.is_set():  # type: ignore[attr-defined]
                time.sleep(0.05)
        return None
