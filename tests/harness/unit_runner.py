"""Runs the box's systemd unit the way systemd would, without systemd.

The thin seam for the update tests: systemd itself cannot run here. The
runner reads ``image/systemd/diemcau.service`` itself, so it runs exactly the
unit's ``ExecStartPre=``, ``ExecStart=`` and ``ExecStartPost=`` command lines
(with ``/opt/diemcau`` and the configuration file moved to a test directory),
and restarts like ``Restart=on-failure`` with ``RestartPreventExitStatus=``:

- every ExecStartPre in turn; one that fails fails the start;
- ExecStart, then ExecStartPost beside it (systemd starts it after READY=1;
  ``release wait`` only watches the update record, so the order is immaterial);
- an ExecStartPost that fails stops the main process (SIGTERM) and fails the start;
- a main process that exits 0 stays stopped; anything else, after a
  start that failed, is restarted after a short pause (RestartSec, shortened);
- stopping and killing reach the main process's whole group, as systemd's
  KillMode=control-group reaches its children (a pip that installs a release).

It does not emulate the rest of systemd (watchdog, notify socket, sandboxing).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

UNIT = Path(__file__).parents[2] / "image" / "systemd" / "diemcau.service"


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
        self._stopping.set()
        with self._lock:
            main = self._main
        if main is not None and main.poll() is None:
            _signal_group(main, signal.SIGTERM)
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

    def _spawn(self, argv: list[str], group: bool = False) -> subprocess.Popen[bytes]:
        with open(self.log_file, "ab") as log:
            log.write(f"--- {shlex.join(argv)}\n".encode())
            return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                    start_new_session=group)

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
            code = self._spawn(argv).wait()
            if code != 0:
                return f"pre failed {code}: {argv[0]} {argv[1:3]}"
        with self._lock:
            main = self._main = self._spawn(self.unit.start, group=True)
        posts = [self._spawn(argv) for argv in self.unit.post]
        try:
            while True:
                code = main.poll()
                if code is not None:
                    if self._stopping.is_set():
                        return "stopped"
                    if code in self.unit.prevent_exit:
                        return f"prevented {code}"
                    return f"exited {code}"
                for post in posts:
                    if post.poll() not in (None, 0):
                        _signal_group(main, signal.SIGTERM)
                        try:
                            main.wait(15)
                        except subprocess.TimeoutExpired:
                            _signal_group(main, signal.SIGKILL)
                            main.wait()
                        return f"post failed {post.returncode}"
                time.sleep(0.1)
        finally:
            _signal_group(main, signal.SIGKILL)  # what the main process left behind, like systemd
            for post in posts:
                if post.poll() is None:
                    post.terminate()
                    post.wait()
            with self._lock:
                self._main = None


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signum)
