"""The roll-call's pure core: every expected box in exactly one bucket, whatever comes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diemcau.protocol import Reply, State, device_topic, encode
from diemcau_centre.rollcall import (
    BUCKETS,
    RollCall,
    progress_line,
    render_report,
    resend_keeps_id,
    send_again_to,
)

CID = "cmd-1"
STATUSES = ["accepted", "in_progress", "succeeded", "failed", "rejected", "expired", "duplicate"]
DEVICES = [f"c{n:05d}-r1" for n in range(1, 13)]


def reply(status: str, *, id: str = CID, code: int = 200, detail: str = "",
          first: str | None = None) -> Reply:
    return Reply(id=id, cmd="meeting.join", status=status, code=code, detail=detail,  # type: ignore[arg-type]
                 ts=0.0, first_status=first)  # type: ignore[arg-type]


replies = st.builds(
    lambda dev, status, first, code, detail, other: (dev, reply(
        status, id="other" if other else CID, code=code, detail=detail,
        first=first if status == "duplicate" else None)),
    st.sampled_from(DEVICES + ["c99999-r1"]),  # one box is not in the manifest
    st.sampled_from(STATUSES),
    st.sampled_from([None, "succeeded", "failed", "accepted", "rejected"]),
    st.sampled_from([200, 202, 409, 502]),
    st.sampled_from(["", "muted", "cannot reach media"]),
    st.booleans(),
)


def expected_of(devs: list[str]) -> dict[str, str]:
    return {d: ("p01" if int(d[1:6]) % 2 else "p02") for d in devs}


@given(st.lists(st.sampled_from(DEVICES), min_size=1, unique=True), st.lists(replies),
       st.randoms())
def test_every_expected_box_is_in_exactly_one_bucket_whatever_the_order(
        devs: list[str], sequence: list[tuple[str, Reply]], rnd) -> None:  # noqa: ANN001
    expected = expected_of(devs)
    first = RollCall(CID, "meeting.join", expected)
    for n, (dev, r) in enumerate(sequence):
        first.take_reply(dev, r, at=float(n))
    report = first.report(now=100.0)
    placed = [d for b in BUCKETS for d in report.buckets[b]]
    assert sorted(placed) == sorted(expected)  # each once, none missing, no stranger
    counts = report.counts
    assert [len(report.buckets[b]) for b in BUCKETS] == [
        counts.succeeded, counts.failed, counts.acknowledged, counts.silent]
    assert counts.answered == counts.expected - counts.silent
    assert sum(len(f.devices) for f in report.failures) == counts.failed
    assert sum(p.expected for p in report.provinces) == counts.expected
    assert {s.dev for s in report.silent} == set(report.buckets["silent"])
    assert set(report.unexpected) <= {d for d, r in sequence if r.id == CID} - set(expected)

    # The same replies shuffled, each delivered again (at-least-once): the same roll-call.
    again = sequence + sequence
    order = list(range(len(again)))
    rnd.shuffle(order)
    second = RollCall(CID, "meeting.join", expected)
    for n in order:
        dev, r = again[n]
        second.take_reply(dev, r, at=float(n % len(sequence)) if sequence else 0.0)
    assert second.report(now=100.0).buckets == report.buckets
    assert {d: (a.status, a.code, a.detail) for d, a in second.answers.items()} == {
        d: (a.status, a.code, a.detail) for d, a in first.answers.items()}
    assert report.exit_code == (0 if counts.succeeded == counts.expected else 1)


def test_a_final_answer_wins_over_an_acknowledgement_that_comes_late() -> None:
    call = RollCall(CID, "meeting.join", {"c00001-r1": "p01"})
    call.take_reply("c00001-r1", reply("succeeded"), 2.0)
    call.take_reply("c00001-r1", reply("accepted", code=202), 3.0)  # redelivered late
    assert call.bucket("c00001-r1") == "succeeded" and call.finished


def test_a_duplicate_counts_as_its_first_result() -> None:
    call = RollCall(CID, "audio.mute", {"a": "p01", "b": "p01", "c": "p01", "d": "p01"})
    call.take_reply("a", reply("duplicate", first="succeeded"), 1.0)
    call.take_reply("b", reply("duplicate", code=409, detail="idle", first="rejected"), 1.0)
    call.take_reply("c", reply("duplicate", code=202, first="accepted"), 1.0)
    call.take_reply("d", reply("duplicate"), 1.0)  # an older box: how it went is unknown
    assert [call.bucket(d) for d in "abcd"] == ["succeeded", "failed", "acknowledged", "failed"]


def test_replies_to_other_commands_and_garbage_change_nothing() -> None:
    call = RollCall(CID, "audio.mute", {"c00001-r1": "p01"})
    assert not call.apply(device_topic("c00001-r1", "reply"), encode(reply("succeeded",
                                                                           id="x")), 1.0)
    assert not call.apply(device_topic("c00001-r1", "reply"), b"{not json", 1.0)
    assert not call.apply(device_topic("c00001-r1", "state"), b"[]", 1.0)
    assert not call.apply("elsewhere/topic", b"", 1.0)
    assert call.bucket("c00001-r1") == "silent"
    assert call.apply(device_topic("c00001-r1", "reply"), encode(reply("succeeded")), 1.0)


def test_a_resent_command_with_a_new_id_counts_too() -> None:
    call = RollCall(CID, "audio.mute", {"a": "p01"}, other_ids={"cmd-2"})
    call.take_reply("a", reply("succeeded", id="cmd-2"), 1.0)
    assert call.bucket("a") == "succeeded"


def test_silent_boxes_say_why_from_their_presence() -> None:
    devs = ["c00001-r1", "c00002-r1", "c00003-r1", "c00004-r1", "c00005-r1"]
    call = RollCall(CID, "meeting.join", dict.fromkeys(devs, "p01"), sent_at=10.0,
                    meeting_id="hop-bao")
    call.apply(device_topic("c00001-r1", "state"),
               encode(State(state="lost", session=4, ts=1_700_000_000.0)), 1.0)
    call.apply(device_topic("c00002-r1", "state"),
               encode(State(state="ready", session=7, ts=1_700_000_100.0)), 1.0)
    # A late will from an older session does not make a box that is back look offline.
    call.apply(device_topic("c00002-r1", "state"),
               encode(State(state="lost", session=6, ts=1_700_000_000.0)), 2.0)
    call.apply(device_topic("c00003-r1", "state"),
               encode(State(state="disconnected", session=2, ts=1_700_000_200.0)), 1.0)
    call.take_reply("c00005-r1", reply("failed", code=502, detail="no media"), 3.0)
    whys = {s.dev: s.why for s in call.report(20.0).silent}
    assert whys == {"c00001-r1": "offline", "c00002-r1": "online", "c00003-r1": "offline",
                    "c00004-r1": "never_seen"}
    text = render_report(call.report(20.0))
    assert "roll-call of meeting.join hop-bao" in text
    assert "c00003-r1  offline: stopped cleanly at 2023-11-14 22:16:40Z (session 2)" in text
    assert "c00002-r1  online since 2023-11-14 22:15:00Z (session 7) but not answering" in text
    assert "      1  failed 502 no media: c00005-r1" in text
    assert progress_line(call.counts(), "meeting.join", 1.5) == (
        "5 expected · 1 acked · 0 ok · 1 failed · 0 joining · 4 silent · 1.5 s")


@pytest.mark.parametrize(("now", "same"), [(0.0, True), (84.9, True), (85.0, False),
                                           (500.0, False)])
def test_a_resend_keeps_the_first_id_while_the_command_is_still_valid(now: float,
                                                                       same: bool) -> None:
    assert resend_keeps_id(exp=100.0, now=now) is same


def test_settled_once_the_only_boxes_left_are_offline() -> None:
    call = RollCall(CID, "audio.mute", {"a": "p01", "b": "p01"})
    call.take_reply("a", reply("accepted", code=202), 1.0)
    assert not call.settled()  # a is still working, b never seen
    call.take_reply("a", reply("succeeded"), 2.0)
    assert not call.settled()
    call.take_state("b", State(state="ready", session=3, ts=5.0))
    assert not call.settled()  # online: it may still answer
    call.take_state("b", State(state="lost", session=3, ts=5.0))
    assert call.settled() and not call.finished


def test_a_box_that_stopped_speaking_is_silent_offline_with_when_it_was_last_heard() -> None:
    call = RollCall(CID, "meeting.join", {"c00001-r1": "p01", "c00002-r1": "p01"},
                    silence_s=90.0, heard={"c00001-r1": 1000.0, "c00002-r1": 1000.0})
    for dev in call.expected:
        call.take_state(dev, State(state="ready", session=3, ts=900.0))
    call.heard["c00002-r1"] = 1050.0
    # 100 s after c00001 last spoke; 50 s after c00002: only c00001 is past the bound.
    whys = {s.dev: (s.why, s.last_heard) for s in call.report(1100.0).silent}
    assert whys == {"c00001-r1": ("offline", 1000.0), "c00002-r1": ("online", None)}
    assert "c00001-r1  offline: nothing heard since 1970-01-01 00:16:40Z" in render_report(
        call.report(1100.0))
    assert not call.settled(1100.0) and call.settled(1141.0)
    assert call.why_silent("c00001-r1").why == "online"  # without a time: presence only


@given(st.lists(st.sampled_from(DEVICES), min_size=1, unique=True), st.lists(replies),
       st.floats(-100, 100))
def test_after_a_drop_the_command_goes_again_to_each_box_without_a_final_answer(
        expected: list[str], got: list[tuple[str, Reply]], left_s: float) -> None:
    """Whatever the boxes answered (other commands, repeats, garbage statuses), while the
    command is valid: exactly the expected boxes without a final answer; after: none."""
    call = RollCall(CID, "meeting.join", expected_of(expected))
    for n, (dev, r) in enumerate(got):
        call.take_reply(dev, r, float(n))
    now = 1000.0
    exp = now + left_s
    again = send_again_to(call.report(now), exp=exp, now=now)
    if exp <= now:
        assert again == ()
        return
    assert set(again) == set(call.unfinished_boxes()) <= set(expected)
    final = {d for d, a in call.answers.items() if a.final}
    assert not final & set(again) and set(expected) - final == set(again)
