"""The update policy and the trial of a new release: pure steps on a Record."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packaging.version import Version

from diemcau.core import update
from diemcau.core.meeting import (
    Policy,
    Room,
    StartUpdate,
    StreamRequest,
    handle_command,
)
from diemcau.core.update import Record, Trial, UpdateRefused, check_manifest

GOOD = {"url": "https://releases.example.vn/diemcau-0.2.0.tar", "sha256": "a" * 64,
        "size_bytes": 1000}
POLICY = Policy(frozenset({"srt"}), frozenset({"media.example.vn"}))


def refused(code: int, version: str = "0.2.0", running: str = "0.1.0",
            minimum: str | None = "0.1.0", **kw: object) -> str:
    with pytest.raises(UpdateRefused) as err:
        check_manifest(version, **{**GOOD, **kw}, running=running, minimum=minimum)  # type: ignore[arg-type]
    assert err.value.code == code
    return err.value.detail


def test_a_newer_version_is_accepted() -> None:
    check_manifest("0.2.0", **GOOD, running="0.1.0", minimum="0.1.0")  # type: ignore[arg-type]
    check_manifest("0.1.1rc1", **GOOD, running="0.1.0", minimum=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(("version", "running", "minimum"), [
    ("0.1.0", "0.1.0", "0.1.0"),  # the same again
    ("0.0.9", "0.1.0", "0.1.0"),  # older
    ("0.2.0", "0.1.0", "0.3.0"),  # older than one committed before (running after a rollback)
    ("0.2.0", "0.3.0", None),
    ("0.2.0rc1", "0.2.0", "0.2.0"),
])
def test_no_downgrade_and_no_reinstall(version: str, running: str, minimum: str | None) -> None:
    assert "no downgrades" in refused(409, version, running, minimum)


@pytest.mark.parametrize(("kw", "words"), [
    ({"sha256": "A" * 64}, "sha256"),
    ({"sha256": "a" * 63}, "sha256"),
    ({"size_bytes": 0}, "size_bytes"),
    ({"size_bytes": update.MAX_ARTEFACT_BYTES + 1}, "size_bytes"),
    ({"url": "ftp://x/a.tar"}, "url"),
    ({"url": "https:///a.tar"}, "url"),
    ({"url": "https://x/a b.tar"}, "url"),
    ({"url": "file:///etc/passwd"}, "url"),
])
def test_bad_claims_are_refused_naming_them(kw: dict, words: str) -> None:
    assert words in refused(400, **kw)


@pytest.mark.parametrize("version", ["", "latest", "1.0/../../x", "v1.0", "01.2", "1.0 "])
def test_a_version_must_be_canonical_pep440(version: str) -> None:
    assert "version" in refused(400, version)


versions = st.builds(lambda a, b, c: f"{a}.{b}.{c}", *[st.integers(0, 30)] * 3)


@given(version=versions, running=versions, minimum=st.one_of(st.none(), versions))
def test_accepted_exactly_when_newer_than_both(version: str, running: str,
                                             minimum: str | None) -> None:
    floors = [Version(running)] + ([Version(minimum)] if minimum else [])
    try:
        check_manifest(version, **GOOD, running=running, minimum=minimum)  # type: ignore[arg-type]
        accepted = True
    except UpdateRefused as exc:
        assert exc.code == 409
        accepted = False
    assert accepted == all(Version(version) > f for f in floors)


@given(version=st.text(max_size=30), url=st.text(max_size=60), sha=st.text(max_size=70),
       size=st.integers(-5, 2**40))
def test_anything_is_either_accepted_or_refused_cleanly(version, url, sha, size) -> None:
    try:
        check_manifest(version, url=url, sha256=sha, size_bytes=size, running="0.1.0",
                       minimum="0.1.0")
    except UpdateRefused as exc:
        assert exc.code in (400, 409) and exc.detail
    else:
        assert str(Version(version)) == version and "/" not in version
        assert url.startswith(("https://", "http://")) and len(sha) == 64


# ---------------------------------------------------------------- the trial

TRIAL = Trial(version="0.2.0", previous="0.1.0", command_id="c1", command_exp=100.0)
BEFORE = Record(committed="0.1.0", minimum="0.1.0")


def test_a_good_trial_commits_and_raises_the_minimum() -> None:
    rec = update.begin(BEFORE, TRIAL)
    rec, decision = update.on_start(rec, "0.2.0", max_starts=3)
    assert decision == "run" and rec.trial and rec.trial.starts == 1
    assert update.commit(rec, "0.1.0") is None  # the old release never commits someone else's trial
    done = update.commit(rec, "0.2.0")
    assert done is not None
    assert (done.committed, done.minimum, done.trial) == ("0.2.0", "0.2.0", None)
    out = update.unreported(done)
    assert out and out.result == "committed" and out.command_id == "c1"
    assert update.unreported(update.reported(done)) is None


def test_too_many_starts_go_back() -> None:
    rec = update.begin(BEFORE, TRIAL)
    decisions = []
    for _ in range(4):
        rec, decision = update.on_start(rec, "0.2.0" if rec.trial else "0.1.0", max_starts=3)
        decisions.append(decision)
    assert decisions == ["run", "run", "run", "rolled_back"]
    assert rec.trial is None and rec.committed == "0.1.0" and rec.minimum == "0.1.0"
    assert rec.outcome and rec.outcome.result == "rolled_back"
    assert rec.outcome.detail == "0.2.0 did not become healthy in 3 start(s); back on 0.1.0"


def test_stopped_before_the_switch_is_abandoned() -> None:
    rec, decision = update.on_start(update.begin(BEFORE, TRIAL), "0.1.0", max_starts=3)
    assert decision == "abandoned" and rec.trial is None
    assert rec.outcome and "interrupted before switching to 0.2.0" in rec.outcome.detail


def test_no_trial_runs_as_it_is() -> None:
    assert update.on_start(BEFORE, "0.1.0", 3) == (BEFORE, "run")
    assert update.commit(BEFORE, "0.1.0") is None


@given(steps=st.lists(st.sampled_from(["start", "commit", "give_up", "begin"]), max_size=20),
       max_starts=st.integers(1, 5))
def test_the_minimum_never_falls_and_only_a_trial_commits(steps, max_starts) -> None:
    rec, current, n = BEFORE, "0.1.0", 2
    for step in steps:
        before_min = rec.minimum
        if step == "begin" and rec.trial is None:
            version = f"0.{n}.0"
            n += 1
            rec, current = update.begin(rec, Trial(version=version, previous=current,
                                                   command_id="c", command_exp=1.0)), version
        elif step == "start":
            trial = rec.trial
            rec, decision = update.on_start(rec, current, max_starts)
            if decision == "rolled_back":
                assert trial is not None
                current = trial.previous  # what the adapter switches back to
        elif step == "commit":
            done = update.commit(rec, current)
            assert (done is not None) == (rec.trial is not None and rec.trial.version == current)
            rec = done or rec
        elif step == "give_up" and rec.trial is not None:
            current = rec.trial.previous
            rec = update.rolled_back(rec, "gave up")
        assert Version(rec.minimum or "0") >= Version(before_min or "0")
        if rec.trial is None:
            assert rec.committed == current


# ---------------------------------------------------------------- the command


def live_room() -> Room:
    request = StreamRequest("m1", "srt://media.example.vn:9000", "720p30", False)
    return Room(state="live", meeting_id="m1", stream=request)


def test_the_command_starts_an_update_when_not_in_a_meeting() -> None:
    out = handle_command(Room(), "firmware.update", "c1", {"manifest": "x.y.z"}, POLICY)
    assert out.replies == () and out.effects == (StartUpdate("c1", "x.y.z"),)


def test_the_command_is_refused_in_a_meeting() -> None:
    out = handle_command(live_room(), "firmware.update", "c1", {"manifest": "x"}, POLICY)
    assert [(r.status, r.code) for r in out.replies] == [("rejected", 409)]
    assert out.effects == () and out.room == live_room()


@pytest.mark.parametrize(("state", "may"), [("idle", True), ("invited", True), ("error", True),
                                            ("joining", False), ("live", False), ("leaving", False)])
def test_a_restart_waits_for_the_meeting_to_end(state: str, may: bool) -> None:
    assert update.may_restart(state) is may


def test_the_command_needs_a_manifest() -> None:
    out = handle_command(Room(), "firmware.update", "c1", {"version": "1"}, POLICY)
    assert out.replies[0].code == 400 and "args" in out.replies[0].detail


def test_a_record_from_another_version_reads() -> None:
    import msgspec

    newer = b'{"committed":"1.0.0","minimum":"1.0.0","future_field":{"x":1}}'
    assert msgspec.json.decode(newer, type=Record).minimum == "1.0.0"
    assert msgspec.json.decode(b"{}", type=Record) == Record()
