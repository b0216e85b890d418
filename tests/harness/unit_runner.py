"""Runs the box's systemd unit the way systemd would, without systemd.

The thin seam for the update tests: systemd itself cannot run here. The
runner reads ``image/systemd/diemcau.service`` itself, so it runs exactly the
unit's ``ExecStartPre=``, ``ExecStart=`` and ``ExecStartPost=`` command lines
(with ``/opt/diemcau`` and the configuration file moved to a test directory),
and restarts like ``Restart=on-failure`` with ``RestartPreventExitStatus=``:

- every ExecStartPre in turn; one that fails fails the start;
- ExecStart with a notify socket (``Type=notify``); a main process that ends
  before it says READY=1 fails the start, as does no READY=1 in
  ``START_TIMEOUT_S`` (TimeoutStartSec);
- after READY=1, the ExecStartPost commands; one that fails stops the main
  process (SIGTERM) and fails the start. A main process that ends meanwhile is
  acted on only once they are done, as systemd (since v239) does;
- a main process that exits 0 stays stopped; anything else, after a
  start that failed, is restarted after a short pause (RestartSec, shortened);
- stopping and killing reach the main process's whole group, as systemd's
  KillMode=control-group reaches its children (a pip that installs a release).

It does not emulate the rest of systemd (watchdog pings, sandboxing).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

UNIT = Path(__file__).parents[2] / "image" / "systemd" / "diemcau.service"
START_TIMEOUT_S = 120.0


@dataclass
class Unit:
    pre: list[list[str]]
    start: list[str]
    post: list[list[str]]
    prevent_exit: set[int] = field(default_factory=set)

    @classmethod
    def read(cls, path: Path, *, root: Path, config: Path) -> Unit:
        pre, start, post, prevent = [], None, [], set()
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if not sep or line.startswith("#"):
                continue
            value = value.replace("/etc/diemcau/endpoint.toml", str(config))
            value = value.replace("/opt/diemcau", str(root))
            match key.strip():
                case "ExecStartPre":
                    pre.append(shlex.split(value))
                case "ExecStart":
                    start = shlex.split(value)
                case "ExecStartPost":
                    post.append(shlex.split(value))
                case "RestartPreventExitStatus":
                    prevent = {int(v) for v in value.split()}
                case "Restart":
                    assert value.strip() == "on-failure", "the runner only knows Restart=on-failure"
        assert start is not None, "no ExecStart"
        return cls(pre, start, post, prevent)


class UnitRunner:
    def __init__(self, *, root: Path, config: Path, log_file: Path, env: dict[str, str],
                 restart_s: float = 0.3, max_starts: int = 12) -> None:
        self.unit = Unit.read(UNIT, root=root, config=config)
        self.env = env
        self.log_file = log_file
        self.restart_s = restart_s
        self.max_starts = max_starts
        self.history: list[str] = []  # what happened, for assertions and failure messages
        self.starts = 0
        self._stopping = threading.Event()
        self._main: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="unit-runner", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the main process; SIGKILL it after ``timeout_s`` (TimeoutStopSec)."""
        self._stopping.set()
        with self._lock:
            main = self._main
        if main is not None and main.poll() is None:
            _signal_group(main, signal.SIGTERM)
        # (A main process started after this point sees _stopping itself: see _one_start.)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            with self._lock:
                main = self._main
            if main is not None:
                _signal_group(main, signal.SIGKILL)
            self._thread.join(timeout_s)

    def kill_main(self) -> bool:
        """kill -9 the service's main process, as a power cut would end it."""
        with self._lock:
            main = self._main
        if main is None or main.poll() is not None:
            return False
        _signal_group(main, signal.SIGKILL)
        return True

    @property
    def stopped(self) -> bool:
        return not self._thread.is_alive()

    def _spawn(self, argv: list[str], group: bool = False,
               env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(self.log_file, "ab") as log:
            log.write(f"--- {shlex.join(argv)}\n".encode())
            return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                    env=env or self.env, start_new_session=group)

    def _run(self) -> None:
        while not self._stopping.is_set() and self.starts < self.max_starts:
            self.starts += 1
            result = self._one_start()
            self.history.append(result)
            if result in ("exited 0", "stopped") or result.startswith("prevented"):
                return
            self._stopping.wait(self.restart_s)
        self.history.append("gave up")

    def _one_start(self) -> str:
        for argv in self.unit.pre:
            if self._stopping.is_set():
                return "stopped"
            code = self._spawn(argv).wait()
            if code != 0:
                return f"pre failed {code}: {argv[0]} {argv[1:3]}"
        with tempfile.TemporaryDirectory(prefix="notify.") as tmp, \
                socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(f"{tmp}/notify")
            notify.settimeout(0.1)
            env = {**self.env, "NOTIFY_SOCKET": f"{tmp}/notify"}
            env.pop("WATCHDOG_USEC", None)
            with self._lock:
                main = self._main = self._spawn(self.unit.start, group=True, env=env)
            if self._stopping.is_set():  # stop() came during the ExecStartPre: it did not see this one
                _signal_group(main, signal.SIGTERM)
            try:
                return self._supervise(main, notify)
            finally:
                _signal_group(main, signal.SIGKILL)  # what it left behind, as systemd does
                main.wait()
                with self._lock:
                    self._main = None

    def _supervise(self, main: subprocess.Popen[bytes], notify: socket.socket) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _ready(notify):
            if main.poll() is not None:
                return self._ended(main.returncode)
            if time.monotonic() > deadline:
                return "start timed out"
        posts = [self._spawn(argv) for argv in self.unit.post]
        try:
            for post in posts:
                while post.poll() is None:
                    _ready(notify)  # keep the socket drained
                if post.returncode != 0:
                    if main.poll() is None:
                        _signal_group(main, signal.SIGTERM)
                        try:
                            main.wait(15)
                        except subprocess.TimeoutExpired:
                            _signal_group(main, signal.SIGKILL)
                    return f"post failed {post.returncode}"
        finally:
            for post in posts:
                if post.poll() is None:
                    post.terminate()
                    post.wait()
        while main.poll() is None:
            _ready(notify)
        return self._ended(main.returncode)

    def _ended(self, code: int) -> str:
        if self._stopping.is_set():
            return "stopped"
        if code in self.unit.prevent_exit:
            return f"prevented {code}"
        return f"exited {code}"


def _ready(notify: socket.socket) -> bool:
    """Wait up to the socket's timeout for a notification; True for READY=1."""
    try:
        return b"READY=1" in notify.recv(4096).split(b"\n")
    except TimeoutError:
        return False


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signum)
