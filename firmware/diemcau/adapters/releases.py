"""Release directories on the box: install, switch, commit, roll back, download.

    <root>/releases/<version>/   one release: a virtual environment, never changed once made
    <root>/current  -> releases/<version>   what the service runs
    <root>/committed -> releases/<version>  the last release known to be healthy; the
                                            service's ExecStartPre/ExecStartPost run *its*
                                            `diemcau release check` / `release wait`
    <state_dir>/update/record.json          the update record (core/update.py), written atomically
    <state_dir>/update/lock                 flock: one writer of the record at a time

The decisions are :mod:`diemcau.core.update`'s; this module does the file
work, in an order that a power cut at any point leaves a release that starts
(see docs/updates.md). A link is switched by making a new symlink beside it
and renaming it over the old one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from ..core import update as policy
from ..core.update import Record, Trial, UpdateRefused
from ..shared import write_atomic

if TYPE_CHECKING:
    import tarfile

log = logging.getLogger("diemcau.releases")

INSTALLED_MARK = ".installed"  # written last: a release directory without it is unfinished
ARTEFACT_VERSION_FILE = "release.json"
CHUNK_BYTES = 64 * 1024


class InstallError(Exception):
    """An artefact that cannot be installed; nothing the service runs was changed."""


class ReleaseStore:
    """The release directories under ``root`` and the update record under ``state_dir``."""

    def __init__(self, root: str | Path, state_dir: str | Path,
                 python: str = "/usr/bin/python3") -> None:
        self.root = Path(root)
        self.releases = self.root / "releases"
        self.current = self.root / "current"
        self.committed = self.root / "committed"
        self.update_dir = Path(state_dir) / "update"
        self.record_file = self.update_dir / "record.json"
        self.python = python

    @classmethod
    def from_config(cls, cfg) -> ReleaseStore:  # type: ignore[no-untyped-def]
        return cls(cfg.updates.root, cfg.device.state_dir, cfg.updates.python)

    # ------------------------------------------------------------ the record

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the record's lock: the running box and `release wait` never write at once."""
        self.update_dir.mkdir(parents=True, exist_ok=True)
        with open(self.update_dir / "lock", "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def read(self) -> Record:
        try:
            return msgspec.json.decode(self.record_file.read_bytes(), type=Record)
        except FileNotFoundError:
            return Record()
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            # Written atomically, so only a damaged disk gets here: start afresh, loudly.
            log.error("update record %s unreadable (%s): starting a new one", self.record_file, exc)
            return Record()

    def write(self, record: Record) -> None:
        write_atomic(self.record_file, msgspec.json.encode(record))

    # ------------------------------------------------------------ links

    def version_of(self, link: Path) -> str | None:
        """The release a link names, or None if it names none."""
        try:
            target = os.readlink(link)
        except OSError:
            return None
        return Path(target).name

    def switch(self, link: Path, version: str) -> None:
        """Point ``link`` at ``releases/<version>`` atomically (new link, then rename)."""
        if not self.is_installed(version):
            raise InstallError(f"release {version} is not installed in {self.releases}")
        tmp = link.with_name(f".{link.name}.new")
        tmp.unlink(missing_ok=True)
        os.symlink(Path("releases") / version, tmp)
        os.replace(tmp, link)
        dir_fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        log.info("%s -> releases/%s", link.name, version)

    def is_installed(self, version: str) -> bool:
        return (self.releases / version / INSTALLED_MARK).is_file()

    # ------------------------------------------------------------ install

    def install(self, artefact: Path, expected_version: str | None = None) -> str:
        """Install an artefact beside the running release; return its version.

        The artefact is a tar holding ``release.json`` and ``wheels/*.whl``,
        nothing else. A release already installed is left as it is.
        """
        import tarfile

        with tarfile.open(artefact) as tar:
            members = _checked_members(tar)
            info = members.get(ARTEFACT_VERSION_FILE)
            if info is None:
                raise InstallError(f"{artefact.name}: no {ARTEFACT_VERSION_FILE}")
            try:
                version = json.loads(_read(tar, info))["version"]
                policy.parse_version(version)
            except (ValueError, KeyError, TypeError) as exc:
                raise InstallError(f"{ARTEFACT_VERSION_FILE}: no usable version ({exc})") from None
            except UpdateRefused as exc:
                raise InstallError(f"{ARTEFACT_VERSION_FILE}: {exc.detail}") from None
            if expected_version is not None and version != expected_version:
                raise InstallError(f"the artefact holds {version}, the manifest says "
                                   f"{expected_version}")
            if self.is_installed(version):
                log.info("release %s is already installed", version)
                return version
            self.update_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=self.update_dir, prefix="wheels.") as tmp:
                for name, member in members.items():
                    if name.endswith(".whl"):
                        (Path(tmp) / Path(name).name).write_bytes(_read(tar, member))
                self._make_release(version, Path(tmp))
        return version

    def _make_release(self, version: str, wheels: Path) -> None:
        dest = self.releases / version
        if dest.exists():
            log.warning("removing the unfinished release %s", dest)
            shutil.rmtree(dest)
        self.releases.mkdir(parents=True, exist_ok=True)
        steps = [
            [self.python, "-m", "venv", "--system-site-packages", str(dest)],
            [str(dest / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-index",
             "--no-cache-dir", "--disable-pip-version-check", "--find-links", str(wheels),
             f"diemcau=={version}"],
        ]
        for argv in steps:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
            if done.returncode != 0:
                shutil.rmtree(dest, ignore_errors=True)
                tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
                raise InstallError(f"installing {version} failed: {' | '.join(tail)}")
        if not (dest / "bin" / "diemcau").is_file():
            shutil.rmtree(dest, ignore_errors=True)
            raise InstallError(f"release {version} has no bin/diemcau")
        write_atomic(dest / INSTALLED_MARK, f"{version}\n".encode())
        log.info("installed release %s in %s", version, dest)

    def activate(self, version: str) -> None:
        """Make an installed release current and committed at once (the first install)."""
        with self.locked():
            record = self.read()
            self.switch(self.current, version)
            self.switch(self.committed, version)
            minimum = version if policy.is_newer(version, record.minimum) else record.minimum
            self.write(msgspec.structs.replace(record, committed=version, minimum=minimum,
                                               trial=None))

    # ------------------------------------------------------------ the trial

    def begin_trial(self, version: str, command_id: str, command_exp: float) -> None:
        """Switch ``current`` to ``version`` on trial; the next start of the service runs it."""
        with self.locked():
            record = self.read()
            previous = self.version_of(self.current)
            if previous is None:
                raise InstallError(f"{self.current} names no release: cannot go back from a trial")
            trial = Trial(version=version, previous=previous, command_id=command_id,
                          command_exp=command_exp)
            # Record first, then switch: stopped in between, nothing ran and it is abandoned.
            self.write(policy.begin(record, trial))
            try:
                self.switch(self.current, version)
            except BaseException:
                self.write(record)  # no trial after all
                raise

    def check_at_start(self, max_starts: int) -> policy.Decision:
        """Before each start of the service (ExecStartPre): count the start, or go back."""
        with self.locked():
            record = self.read()
            new, decision = policy.on_start(record, self.version_of(self.current), max_starts)
            if decision == "rolled_back":
                self._go_back(record)
            if new != record:
                self.write(new)
            return decision

    def give_up(self, detail: str) -> bool:
        """Abandon the release on trial (it failed a check); False if there was none."""
        with self.locked():
            record = self.read()
            if record.trial is None:
                return False
            self._go_back(record)
            self.write(policy.rolled_back(record, detail))
            return True

    def _go_back(self, record: Record) -> None:
        # Switch before the record says so: stopped in between, the next start sees
        # a trial whose release is not current and abandons it; never the reverse.
        assert record.trial is not None
        self.switch(self.current, record.trial.previous)
        log.warning("went back from %s to %s", record.trial.version, record.trial.previous)

    def commit(self, running: str) -> bool:
        """The running release is healthy: commit it if it was on trial."""
        with self.locked():
            record = self.read()
            new = policy.commit(record, running)
            if new is None:
                return False
            # The link first: stopped in between, the trial runs once more and commits again.
            self.switch(self.committed, running)
            self.write(new)
            log.info("committed release %s", running)
            assert record.trial is not None
            self.prune(keep={running, record.trial.previous})
            return True

    def prune(self, keep: set[str]) -> None:
        """Remove releases other than ``keep`` and what the links name: nobody visits the SD card."""
        keep = keep | {self.version_of(self.current), self.version_of(self.committed)}  # type: ignore[arg-type]
        for release in self.releases.iterdir() if self.releases.is_dir() else ():
            if release.name not in keep and not release.name.startswith("."):
                # The mark first: stopped midway, it is an unfinished release, never switched to.
                (release / INSTALLED_MARK).unlink(missing_ok=True)
                shutil.rmtree(release, ignore_errors=True)
                log.info("removed old release %s", release.name)

    def accept(self, version: str, command_id: str, command_exp: float) -> None:
        with self.locked():
            self.write(policy.accept(self.read(), policy.Pending(
                command_id=command_id, command_exp=command_exp, version=version)))

    def drop_pending(self) -> None:
        with self.locked():
            self.write(policy.drop_pending(self.read()))

    def take_unreported(self) -> policy.Outcome | None:
        """How the last update ended, if not reported yet (an interrupted one included)."""
        with self.locked():
            record = self.read()
            new = policy.interrupted(record)
            if new != record:
                self.write(new)
        return policy.unreported(new)

    def mark_reported(self) -> None:
        with self.locked():
            self.write(policy.reported(self.read()))

    def minimum(self) -> str | None:
        return self.read().minimum


def _checked_members(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    """The artefact's members by name, refusing anything but release.json and wheels/*.whl."""
    members: dict[str, tarfile.TarInfo] = {}
    for m in tar.getmembers():
        name = m.name.removeprefix("./")
        if m.isdir() and name in ("", ".", "wheels"):
            continue
        top, _, rest = name.partition("/")
        ok_name = name == ARTEFACT_VERSION_FILE or (
            top == "wheels" and rest.endswith(".whl") and "/" not in rest and not rest.startswith("."))
        if not (m.isfile() and ok_name):
            raise InstallError(f"the artefact holds {m.name!r}: only {ARTEFACT_VERSION_FILE} and "
                               f"wheels/*.whl files belong in it")
        members[name] = m
    return members


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(member)
    assert f is not None  # a regular file, checked above
    return f.read()


# ---------------------------------------------------------------- download


class DownloadError(Exception):
    """The artefact could not be fetched, or is not the one the manifest names."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def download(url: str, dest: Path, *, sha256: str, size_bytes: int, ca_file: str = "",
             progress: Callable[[int], None] = lambda n: None,
             stop: threading.Event | None = None, timeout_s: float = 30.0) -> None:
    """Fetch ``url`` into ``dest``; raise DownloadError unless it is exactly the named artefact.

    ``progress`` gets the byte count after each chunk. Reading stops beyond
    ``size_bytes``: a server cannot fill the disk.
    """
    import ssl  # loaded only when an update downloads: the box starts faster
    import urllib.request

    context = ssl.create_default_context(cafile=ca_file or None) if url.startswith("https") else None
    digest = hashlib.sha256()
    got = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as response, \
                open(dest, "wb") as out:
            while chunk := response.read(CHUNK_BYTES):
                if stop is not None and stop.is_set():
                    raise DownloadError(500, "stopped")
                got += len(chunk)
                if got > size_bytes:
                    raise DownloadError(500, f"more than the {size_bytes} bytes the manifest names")
                digest.update(chunk)
                out.write(chunk)
                progress(got)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:  # URLError, HTTPError, timeouts, a full disk
        raise DownloadError(500, f"download failed: {exc}") from None
    if got != size_bytes:
        raise DownloadError(500, f"got {got} bytes, the manifest names {size_bytes}")
    if digest.hexdigest() != sha256:
        raise DownloadError(500, f"sha256 {digest.hexdigest()} is not the manifest's {sha256}")


def run_update(store: ReleaseStore, manifest, command_id: str,  # type: ignore[no-untyped-def]
               post: Callable[[object], None], *, ca_file: str = "",
               stop: threading.Event | None = None) -> threading.Thread:
    """Download, verify and install in a worker thread, posting progress to the supervisor.

    Nothing here touches ``current``: the supervisor switches when it gets
    UpdateInstalled. Any failure posts UpdateFailed and leaves the box as it was.
    """
    from ..core.events import UpdateFailed, UpdateInstalled, UpdateProgress

    version, total = manifest.version, manifest.size_bytes
    step = max(total // 10, 1)  # about ten progress replies for a download
    reported = [0]

    def progress(n: int) -> None:
        if n - reported[0] >= step or n == total:
            reported[0] = n
            post(UpdateProgress(command_id, f"downloading {version}: {100 * n // total}% "
                                            f"({n / 1e6:.1f} of {total / 1e6:.1f} MB)"))

    def work() -> None:
        store.update_dir.mkdir(parents=True, exist_ok=True)
        for stale in store.update_dir.glob("wheels.*"):  # left by a box stopped mid-install
            shutil.rmtree(stale, ignore_errors=True)
        artefact = store.update_dir / f"diemcau-{version}.tar.part"
        try:
            download(manifest.url, artefact, sha256=manifest.sha256, size_bytes=total,
                     ca_file=ca_file, progress=progress, stop=stop)
            post(UpdateProgress(command_id, f"verified {version} (sha256 and signature); installing"))
            store.install(artefact, expected_version=version)
        except DownloadError as exc:
            post(UpdateFailed(command_id, exc.code, exc.detail))
        except InstallError as exc:
            post(UpdateFailed(command_id, 500, exc.args[0]))
        except Exception as exc:  # noqa: BLE001 - a worker must always report back
            log.exception("update to %s failed", version)
            post(UpdateFailed(command_id, 500, f"update failed: {exc}"))
        else:
            post(UpdateInstalled(command_id, version))
        finally:
            artefact.unlink(missing_ok=True)

    thread = threading.Thread(target=work, name=f"update-{version}", daemon=True)
    thread.start()
    return thread
