"""Release directories, links and the update record on real files; downloads from a real server.

A "release" here is a directory with the ``.installed`` mark: enough for the
links and the record. Real virtual environments are made in tests/e2e/test_updates.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diemcau.adapters.releases import (
    INSTALLED_MARK,
    DownloadError,
    InstallError,
    ReleaseStore,
    download,
)
from diemcau.config import Updates
from diemcau.release_cli import check, wait
from tests.harness.releases import ArtefactServer


def made(store: ReleaseStore, *versions: str) -> None:
    for v in versions:
        (store.releases / v).mkdir(parents=True)
        (store.releases / v / INSTALLED_MARK).write_text(v)


@pytest.fixture
def store(tmp_path: Path) -> ReleaseStore:
    s = ReleaseStore(tmp_path / "opt", tmp_path / "state")
    made(s, "1.0.0", "1.1.0")
    s.activate("1.0.0")
    return s


def test_activate_sets_both_links_and_the_minimum(store: ReleaseStore) -> None:
    assert os.readlink(store.current) == "releases/1.0.0"
    assert store.version_of(store.committed) == "1.0.0"
    assert (store.read().committed, store.read().minimum) == ("1.0.0", "1.0.0")


def test_a_link_is_only_switched_to_an_installed_release(store: ReleaseStore) -> None:
    (store.releases / "2.0.0").mkdir()  # unfinished: no mark
    with pytest.raises(InstallError):
        store.switch(store.current, "2.0.0")
    assert store.version_of(store.current) == "1.0.0"
    assert not list(store.root.glob(".current.new"))


def test_trial_commit(store: ReleaseStore) -> None:
    store.accept("1.1.0", "c1", 99.0)
    store.begin_trial("1.1.0", "c1", 99.0)
    assert store.version_of(store.current) == "1.1.0"
    assert store.read().pending is None
    assert store.check_at_start(3) == "run"
    assert not store.commit("1.0.0")
    assert store.commit("1.1.0")
    assert store.version_of(store.committed) == "1.1.0"
    out = store.take_unreported()
    assert out is not None and (out.result, out.command_id) == ("committed", "c1")
    store.mark_reported()
    assert store.take_unreported() is None


def test_a_trial_of_a_release_not_installed_changes_nothing(store: ReleaseStore) -> None:
    before = store.read()
    with pytest.raises(InstallError):
        store.begin_trial("3.0.0", "c1", 99.0)
    assert store.read() == before and store.version_of(store.current) == "1.0.0"


def test_a_commit_keeps_the_new_and_the_previous_release_only(store: ReleaseStore) -> None:
    made(store, "0.9.0", "1.2.0")
    (store.releases / "1.2.0" / "bin").mkdir()
    store.begin_trial("1.1.0", "c1", 99.0)
    store.check_at_start(3)
    assert store.commit("1.1.0")
    assert sorted(p.name for p in store.releases.iterdir()) == ["1.0.0", "1.1.0"]


def test_too_many_starts_switch_back(store: ReleaseStore) -> None:
    store.begin_trial("1.1.0", "c1", 99.0)
    assert [store.check_at_start(2) for _ in range(3)] == ["run", "run", "rolled_back"]
    assert store.version_of(store.current) == "1.0.0"
    assert store.version_of(store.committed) == "1.0.0"
    assert store.check_at_start(2) == "run"  # the old release runs on, no trial left


def test_an_update_stopped_midway_is_reported_once(store: ReleaseStore) -> None:
    store.accept("1.1.0", "c1", 99.0)
    out = store.take_unreported()
    assert out is not None and out.result == "abandoned" and "send the update again" in out.detail
    store.mark_reported()
    assert store.take_unreported() is None and store.read().pending is None


def test_release_wait_gives_up_and_goes_back(store: ReleaseStore) -> None:
    store.begin_trial("1.1.0", "c1", 99.0)
    assert wait(store, deadline_s=0.3) == 1
    assert store.version_of(store.current) == "1.0.0"
    out = store.take_unreported()
    assert out and out.result == "rolled_back" and "did not connect" in out.detail


def test_release_wait_ends_when_the_trial_commits(store: ReleaseStore) -> None:
    store.begin_trial("1.1.0", "c1", 99.0)
    threading.Timer(0.3, store.commit, args=("1.1.0",)).start()
    assert wait(store, deadline_s=60) == 0
    assert store.version_of(store.current) == store.version_of(store.committed) == "1.1.0"


def test_release_check_goes_back_when_the_new_release_cannot_run(store: ReleaseStore,
                                                                 tmp_path: Path) -> None:
    config = tmp_path / "endpoint.toml"
    config.write_text("")  # the new release's `bin/diemcau` does not exist here either
    store.begin_trial("1.1.0", "c1", 99.0)
    assert check(store, Updates(), str(config)) == 0
    assert store.version_of(store.current) == "1.0.0"
    out = store.take_unreported()
    assert out and "failed its configuration check" in out.detail


def test_a_garbled_record_starts_afresh(store: ReleaseStore) -> None:
    store.record_file.write_bytes(b"{not json")
    assert store.read().committed is None


# ---------------------------------------------------------------- artefacts


def artefact(tmp_path: Path, entries: list[tuple[str, bytes | None]]) -> Path:
    """A tar with these members; None makes a symlink."""
    path = tmp_path / "a.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


VERSION = ("release.json", b'{"version": "1.2.0"}')


@pytest.mark.parametrize("bad", [
    ("wheels/../../evil.whl", b"x"), ("/etc/cron.d/x", b"x"), ("wheels/x.whl", None),
    ("other.txt", b"x"), ("wheels/sub/x.whl", b"x"), ("wheels/.x.whl", b"x"),
])
def test_an_artefact_holds_only_release_json_and_wheels(store: ReleaseStore, tmp_path: Path,
                                                        bad: tuple[str, bytes | None]) -> None:
    with pytest.raises(InstallError, match="only release.json"):
        store.install(artefact(tmp_path, [VERSION, bad]))
    assert sorted(p.name for p in store.releases.iterdir()) == ["1.0.0", "1.1.0"]


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(min_size=1, max_size=40))
def test_any_member_name_is_refused_or_a_plain_wheel(store: ReleaseStore, tmp_path: Path,
                                                     name: str) -> None:
    try:
        store.install(artefact(tmp_path, [VERSION, (name, b"x")]), expected_version="9.9.9")
    except InstallError as exc:
        assert exc.args[0]
    except (UnicodeEncodeError, ValueError):
        pass  # tarfile itself cannot write that name
    assert sorted(p.name for p in store.releases.iterdir()) == ["1.0.0", "1.1.0"]


def test_the_artefact_version_must_be_the_manifests(store: ReleaseStore, tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="the manifest says 1.3.0"):
        store.install(artefact(tmp_path, [VERSION]), expected_version="1.3.0")
    with pytest.raises(InstallError, match="no usable version"):
        store.install(artefact(tmp_path, [("release.json", b"[]")]))


# ---------------------------------------------------------------- download


@pytest.fixture
def server(tmp_path: Path):  # noqa: ANN201
    (tmp_path / "www").mkdir()
    s = ArtefactServer(tmp_path / "www")
    yield s
    s.close()


def test_download_checks_size_and_hash(server: ArtefactServer, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    (server.directory / "a.tar").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    seen: list[int] = []
    dest = tmp_path / "got"
    download(server.url("a.tar"), dest, sha256=sha, size_bytes=len(data), progress=seen.append)
    assert dest.read_bytes() == data and seen[-1] == len(data)
    for kw, words in [({"sha256": "0" * 64}, "sha256"),
                      ({"size_bytes": len(data) + 1}, "got 300000 bytes"),
                      ({"size_bytes": 1000}, "more than the 1000 bytes")]:
        with pytest.raises(DownloadError, match=words):
            download(server.url("a.tar"), dest, **{"sha256": sha, "size_bytes": len(data), **kw})
    with pytest.raises(DownloadError, match="download failed"):
        download(server.url("missing.tar"), dest, sha256=sha, size_bytes=len(data))


def test_status_prints_the_record(store: ReleaseStore, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from diemcau.cli import main

    code = main(["release", "status", "--root", str(store.root), "--state-dir",
                 str(store.update_dir.parent), "--config", str(tmp_path / "none.toml")])
    printed = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (printed["committed"], printed["current"], printed["committed_link"]) == ("1.0.0",) * 3
