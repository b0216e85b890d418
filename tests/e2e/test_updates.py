"""firmware.update end to end: real releases, real installs, a real HTTP server, real Mosquitto.

Each test gives the box a state directory of its own and the release root
(standing in for /opt/diemcau) with only the first release in it, made
current and committed with the real ``diemcau release install --activate``
(which installs it in the first test, and finds it installed in the
others), and runs the box through
:class:`~tests.harness.unit_runner.UnitRunner`, which carries out the unit
file's ExecStartPre/ExecStart/ExecStartPost and restarts it as
``Restart=on-failure`` says: systemd itself cannot run here, and that runner
is the one thin seam. Everything else is the real thing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from diemcau.protocol import Event, Meta, State, decode, device_topic
from tests.harness.alsa import make_microphone
from tests.harness.box import box_config
from tests.harness.releases import (
    CANNOT_IMPORT,
    CRASHES_AFTER_READY,
    CRASHES_AT_START,
    NEVER_CONNECTS,
    ArtefactServer,
    ReleaseBuilder,
    ReleaseKey,
)
from tests.harness.srt_listener import SrtListener
from tests.harness.unit_runner import UnitRunner

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

DEV = "c00001-r1"
FIRST, GOOD = "1.0.0", "1.1.0"
# updates.health_deadline_s in these tests, the least the configuration takes: a good release
# connects and commits within 10-20 ms of its READY=1; the bad ones make the box wait all of
# it before going back.
DEADLINE_S = 5
DIEMCAU = str(Path(sys.executable).with_name("diemcau"))  # this checkout's, to install the first


@pytest.fixture(scope="session")
def builder(tmp_path_factory: pytest.TempPathFactory) -> ReleaseBuilder:
    return ReleaseBuilder(tmp_path_factory.mktemp("releases"))


@pytest.fixture(scope="session")
def release_key() -> ReleaseKey:
    return ReleaseKey()


@pytest.fixture(scope="session")
def release_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The release root (/opt/diemcau) of every test's box, one at a time: the first release
    (a venv and a pip install, 5-7 s) is installed once, and kept, as a release never changes
    once made; :class:`Site` clears everything else."""
    return tmp_path_factory.mktemp("opt")


def _only_the_first_release(root: Path) -> None:
    for entry in root.iterdir():
        if entry.name == "releases":
            for release in entry.iterdir():
                if release.name != FIRST:
                    shutil.rmtree(release)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


class Site:
    """One box: its release root, state, configuration, the unit runner and the artefact server."""

    def __init__(self, tmp: Path, root: Path, broker, centre,  # noqa: ANN001
                 release_key: ReleaseKey, builder: ReleaseBuilder,
                 env: dict[str, str] | None = None, microphone: str = "diemcau_mic") -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        _only_the_first_release(root)  # what the test before left
        self.root, self.state = root, tmp / "state"
        self.config = tmp / "endpoint.toml"
        extra = (f'\n[updates]\nroot = "{self.root}"\nhealth_deadline_s = {DEADLINE_S}\n'
                 f'max_trial_starts = 3\n\n[updates.release_keys]\n'
                 f'"{release_key.kid}" = "{release_key.public_text}"\n')
        self.config.write_text(box_config(device_id=DEV, broker=broker, state_dir=self.state,
                                          keys={centre.kid: centre.public_text}, extra=extra,
                                          microphone=microphone))
        self.log = tmp / "unit.log"
        self.release("install", str(builder.artefact(FIRST)), "--activate")
        # (A configuration the box refuses would have sent it to the default, /opt/diemcau.)
        assert self.installed() == [FIRST], "not installed in the test's release root"
        self.server = ArtefactServer(builder.out)
        env = {k: v for k, v in {**os.environ, **(env or {})}.items()
               if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        self.runner = UnitRunner(root=self.root, config=self.config, log_file=self.log, env=env)

    def release(self, *args: str) -> str:
        done = subprocess.run([DIEMCAU, "release", *args, "--config", str(self.config)],
                              capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def status(self) -> dict:
        return json.loads(self.release("status"))

    def installed(self) -> list[str]:
        return sorted(p.name for p in (self.root / "releases").iterdir())

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def site(tmp_path, release_root, broker, centre, release_key, builder,  # noqa: ANN001
         request) -> Iterator[Site]:  # noqa: ANN001
    s = Site(tmp_path, release_root, broker, centre, release_key, builder)
    yield s
    s.runner.stop()
    s.server.close()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        print(f"----- runner: {s.runner.history}\n----- unit log -----\n{s.log_text()[-8000:]}")


def born(observer, after: float, timeout: float = 60) -> State:  # noqa: ANN001
    seen = observer.wait_for(lambda m: m.topic == device_topic(DEV, "state")
                             and b'"ready"' in m.payload, timeout, after=after)
    return decode(seen.payload, State)


def firmware_seen(observer, after: float, timeout: float = 60) -> str:  # noqa: ANN001
    seen = observer.wait_for(lambda m: m.topic == device_topic(DEV, "meta"), timeout, after=after)
    return decode(seen.payload, Meta).firmware


def events(observer, kind: str) -> list[Event]:  # noqa: ANN001
    found = [decode(m.payload, Event) for m in observer.on(device_topic(DEV, "event"))]
    return [e for e in found if e.kind == kind]


def start(site: Site, observer) -> float:  # noqa: ANN001
    t0 = time.time()
    site.runner.start()
    born(observer, t0)
    assert firmware_seen(observer, t0) == FIRST
    return t0


def update(site: Site, observer, release_key: ReleaseKey, artefact: Path, **kw) -> str:  # noqa: ANN001
    manifest = release_key.manifest(artefact, kw.pop("url", site.server.url(artefact.name)), **kw)
    return observer.command(DEV, "firmware.update", {"manifest": manifest})


def assert_back_on_first(site: Site, observer, jti: str, words: str) -> None:  # noqa: ANN001
    final = observer.wait_reply(DEV, jti, "failed", timeout=120)
    assert final.code == 500 and words in final.detail, final
    assert f"back on {FIRST}" in final.detail or "nothing was switched" in final.detail
    status = site.status()
    assert (status["current"], status["committed_link"], status["committed"]) == (FIRST,) * 3
    assert status["trial"] is None and status["minimum"] == FIRST
    metas = observer.on(device_topic(DEV, "meta"))
    assert decode(metas[-1].payload, Meta).firmware == FIRST  # the latest the box said
    # Online on the old release: it answers a command.
    jti2 = observer.command(DEV, "health.report")
    assert observer.wait_reply(DEV, jti2, "succeeded", timeout=30).code == 200


# ---------------------------------------------------------------- a good update


def test_a_good_update_commits(site, observer, release_key, builder) -> None:  # noqa: ANN001
    new = builder.artefact(GOOD)
    start(site, observer)
    t_update = time.time()
    jti = update(site, observer, release_key, new)
    assert observer.wait_reply(DEV, jti, "accepted").detail == f"updating {FIRST} -> {GOOD}"
    observer.wait_for(lambda m: m.topic == device_topic(DEV, "state") and b"updating" in m.payload,
                      after=t_update)
    final = observer.wait_reply(DEV, jti, "succeeded", timeout=180)
    assert final.detail == f"{GOOD} is running and committed (after 1 start(s))"
    progress = [r.detail for r in observer.replies(DEV, jti) if r.status == "in_progress"]
    assert any(d.startswith(f"downloading {GOOD}: 100%") for d in progress), progress
    assert any(d.startswith(f"installed {GOOD}; restarting") for d in progress), progress
    assert firmware_seen(observer, t_update + 0.001) == GOOD
    status = site.status()
    assert (status["current"], status["committed_link"], status["committed"],
            status["minimum"]) == (GOOD,) * 4
    assert status["trial"] is None and status["outcome"]["reported"] is True
    assert site.installed() == [FIRST, GOOD]
    assert [e.data["version"] for e in events(observer, "update_committed")] == [GOOD]
    assert site.runner.history[0] == "exited 75"  # restarted into the new release by the unit
    replies = observer.replies(DEV, jti)
    ts = {r.detail.split(":")[0].split(";")[0]: r.ts for r in replies}
    print(f"\nupdate figures (loaded machine, not asserted): accepted -> installed "
          f"{ts[f'installed {GOOD}'] - replies[0].ts:.1f} s, installed -> committed and reported "
          f"{final.ts - ts[f'installed {GOOD}']:.1f} s, artefact {new.stat().st_size / 1e6:.1f} MB")

    # No way back: the old version, or the same one again, is refused before any download.
    before = list(site.server.requests)
    for artefact in (builder.artefact(FIRST), new):
        again = update(site, observer, release_key, artefact)
        reply = observer.wait_reply(DEV, again, "rejected")
        assert reply.code == 409 and "no downgrades" in reply.detail
    assert site.server.requests == before


# ---------------------------------------------------------------- rollbacks


@pytest.mark.parametrize(("version", "change", "words"), [
    ("1.2.0", CRASHES_AT_START, "did not become healthy in 3 start(s)"),
    ("1.3.0", CANNOT_IMPORT, "failed its configuration check"),
    ("1.4.0", NEVER_CONNECTS, f"did not connect to the broker within {DEADLINE_S} s"),
    ("1.5.0", CRASHES_AFTER_READY, f"did not connect to the broker within {DEADLINE_S} s"),
], ids=["crashes-at-start", "cannot-import", "never-connects", "crashes-after-ready"])
def test_a_bad_release_rolls_back_by_itself(site, observer, release_key, builder, version,  # noqa: ANN001
                                             change, words) -> None:
    bad = builder.artefact(version, change)
    start(site, observer)
    jti = update(site, observer, release_key, bad)
    observer.wait_reply(DEV, jti, "accepted")
    assert_back_on_first(site, observer, jti, words)
    rolled = events(observer, "update_rolled_back")
    assert [(e.data["version"], e.data["running"]) for e in rolled] == [(version, FIRST)]
    assert site.installed() == [FIRST, version]  # kept: a release is never changed once made


# ---------------------------------------------------------------- refused before anything changes


def test_unsigned_corrupted_or_older_updates_change_nothing(site, observer, release_key,  # noqa: ANN001
                                                            builder) -> None:
    new = builder.artefact(GOOD)
    start(site, observer)
    pid_starts = site.runner.starts

    forged = ReleaseKey()  # a key the box does not know
    jti = observer.command(DEV, "firmware.update", {
        "manifest": forged.manifest(new, site.server.url(new.name))})
    reply = observer.wait_reply(DEV, jti, "rejected")
    assert reply.code == 401 and "unknown release key" in reply.detail

    older = release_key.manifest(new, site.server.url(new.name), version="0.9.0")
    jti = observer.command(DEV, "firmware.update", {"manifest": older})
    reply = observer.wait_reply(DEV, jti, "rejected")
    assert reply.code == 409 and "not newer than 1.0.0" in reply.detail
    assert site.server.requests == []  # refused before a byte was fetched

    data = bytearray(new.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bit flipped in the middle
    corrupt = site.server.directory / f"corrupt-{GOOD}.tar"
    corrupt.write_bytes(bytes(data))
    jti = update(site, observer, release_key, new, url=site.server.url(corrupt.name))
    reply = observer.wait_reply(DEV, jti, "failed", timeout=60)
    assert reply.code == 500 and "sha256" in reply.detail
    seen = observer.wait_for(lambda m: m.topic == device_topic(DEV, "event")
                             and b"update_failed" in m.payload)
    assert decode(seen.payload, Event).detail == f"{GOOD}: {reply.detail}"

    status = site.status()
    assert (status["current"], status["committed_link"]) == (FIRST, FIRST)
    assert status["trial"] is None and status["pending"] is None
    assert site.installed() == [FIRST]
    assert list((site.state / "update").glob("*.part")) == []
    assert site.runner.starts == pid_starts and not site.runner.stopped  # never restarted


# ---------------------------------------------------------------- kill -9 at each step


STEPS = {
    "downloading": lambda d: d.startswith("downloading"),
    "installing": lambda d: d.startswith("verified"),
    "restarting": lambda d: d.startswith("installed"),
}


@pytest.mark.parametrize("step", [*STEPS, "on-trial"])
def test_kill_9_at_each_step_leaves_a_box_that_starts(site, observer, release_key,  # noqa: ANN001
                                                       builder, step) -> None:
    new = builder.artefact(GOOD)
    start(site, observer)
    if step == "downloading":
        site.server.slow.set()
    jti = update(site, observer, release_key, new)
    if step in STEPS:
        observer.wait_for(lambda m: m.topic == device_topic(DEV, "reply")
                          and jti.encode() in m.payload
                          and STEPS[step](json.loads(m.payload)["detail"]), timeout=120)
        assert site.runner.kill_main() or step == "restarting"
    else:  # the new release's first start, before it could connect and commit
        deadline = time.monotonic() + 120
        while site.status()["trial"] is None or site.status()["trial"]["starts"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        site.runner.kill_main()
    t_killed = time.time()
    site.server.slow.clear()

    # Whatever the step, the box comes back online on a release that works, and says how it went.
    born(observer, t_killed, timeout=120)
    final = observer.wait_for(lambda m: m.topic == device_topic(DEV, "reply")
                              and jti.encode() in m.payload
                              and json.loads(m.payload)["status"] in ("succeeded", "failed"),
                              timeout=120)
    result = json.loads(final.payload)
    status = site.status()
    running = GOOD if result["status"] == "succeeded" else FIRST
    assert status["current"] == status["committed_link"] == status["committed"] == running, status
    assert status["trial"] is None and status["pending"] is None
    assert firmware_seen(observer, t_killed) == running
    if step in ("downloading", "installing"):
        assert result["status"] == "failed" and "send the update again" in result["detail"]
    jti2 = observer.command(DEV, "health.report")
    assert observer.wait_reply(DEV, jti2, "succeeded", timeout=30).code == 200


# ---------------------------------------------------------------- never in the middle of a meeting


def test_an_installed_update_waits_for_the_meeting_to_end(tmp_path, release_root, broker,  # noqa: ANN001
                                                          centre, release_key, builder,
                                                          observer) -> None:
    mic = make_microphone(tmp_path / "mic", seconds=300)
    site = Site(tmp_path / "box", release_root, broker, centre, release_key, builder,
                env=mic.env, microphone=mic.pcm)
    listener = SrtListener(tmp_path / "media")
    try:
        start(site, observer)
        listener.start()
        site.server.slow.set()  # the download is held back: time to start a meeting meanwhile
        jti = update(site, observer, release_key, builder.artefact(GOOD))
        observer.wait_reply(DEV, jti, "accepted")
        join = observer.command(DEV, "meeting.join", {"meeting_id": "m1", "publish": listener.url,
                                                      "profile": "360p15"})
        assert observer.wait_reply(DEV, join, "succeeded", timeout=60).code == 200
        site.server.slow.clear()  # live now: the rest of the download at full speed
        waiting = observer.wait_for(lambda m: m.topic == device_topic(DEV, "reply")
                                    and jti.encode() in m.payload and b"meeting ends" in m.payload,
                                    timeout=120)
        assert json.loads(waiting.payload)["detail"] == (
            f"installed {GOOD}; restarting into it when the meeting ends")
        time.sleep(2)  # it would restart at once if it did not wait
        assert site.runner.starts == 1 and site.status()["current"] == FIRST
        status = observer.on(device_topic(DEV, "status"))[-1]
        assert json.loads(status.payload)["meeting_state"] == "live"

        leave = observer.command(DEV, "meeting.leave")
        assert observer.wait_reply(DEV, leave, "succeeded", timeout=30).code == 200
        final = observer.wait_reply(DEV, jti, "succeeded", timeout=180)
        assert final.detail.startswith(f"{GOOD} is running and committed")
        assert site.status()["current"] == GOOD
    finally:
        listener.stop()
        site.runner.stop()
        site.server.close()
