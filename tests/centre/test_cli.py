"""The ``diemcau-centre`` console: keys, configuration, and against a real Mosquitto,
``devices``, ``watch`` and ``send`` (with a stand-in box that answers commands)."""

from __future__ import annotations

import io
import json
import os
import queue
import signal
import stat
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from diemcau.protocol import (
    Alert,
    Meta,
    Reply,
    Site,
    State,
    Status,
    alert_topic,
    device_topic,
    encode,
    group_cmd_topic,
    key_id,
    public_key_from_text,
    verify_command,
)
from diemcau_centre.cli import main
from diemcau_centre.keys import load_signing_key
from diemcau_centre.send import (
    Replies,
    UsageError,
    build_args,
    check_command,
    group_members,
    parse_target,
)
from tests.harness.broker import Broker, free_port
from tests.harness.console import write_centre_config
from tests.provisioning.conftest import centre_dir_for

T0 = 1_700_000_000.0


def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """The console in this process, as a shell would run it."""
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def write_config(path: Path, port: int, key_file: Path | None = None, extra: str = "",
                 tls: str = "enabled = false") -> Path:
    return write_centre_config(path, port, key_file=key_file, tls=tls,
                               extra=f'client_id = "centre-test"\n{extra}')


# ---------------------------------------------------------------- keys


def test_keys_init_writes_a_private_key_only_its_owner_can_read(tmp_path: Path) -> None:
    code, out, _ = run("keys", "init", "--dir", str(tmp_path / "keys"))
    assert code == 0
    private, public = tmp_path / "keys" / "centre-signing.key", tmp_path / "keys" / "centre-signing.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    key = load_signing_key(private)
    kid = key_id(key.public_key())
    assert f"kid: {kid}" in out
    assert public_key_from_text(public.read_text()) == key.public_key()
    # The printed line pastes into a box's [commands] centre_keys table as it is.
    line = next(ln.strip() for ln in out.splitlines() if ln.strip().startswith(f'"{kid}"'))
    table = tomllib.loads(f"[commands.centre_keys]\n{line}")["commands"]["centre_keys"]
    assert public_key_from_text(table[kid]) == key.public_key()
    assert not [p for p in (tmp_path / "keys").iterdir() if p.name.startswith(".")]


def test_keys_init_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    assert run("keys", "init", "--dir", str(tmp_path))[0] == 0
    before = (tmp_path / "centre-signing.key").read_bytes()
    code, _, err = run("keys", "init", "--dir", str(tmp_path))
    assert code == 1 and "already exists" in err and "--force" in err
    assert (tmp_path / "centre-signing.key").read_bytes() == before
    (tmp_path / "centre-signing.key").unlink()  # a lone public key is not overwritten either
    assert run("keys", "init", "--dir", str(tmp_path))[0] == 1
    assert not (tmp_path / "centre-signing.key").exists()
    assert run("keys", "init", "--dir", str(tmp_path), "--force")[0] == 0
    assert stat.S_IMODE((tmp_path / "centre-signing.key").stat().st_mode) == 0o600


def test_keys_show_prints_the_configured_kid(tmp_path: Path) -> None:
    run("keys", "init", "--dir", str(tmp_path))
    key = load_signing_key(tmp_path / "centre-signing.key")
    cfg = write_config(tmp_path / "centre.toml", 1883, Path("centre-signing.key"))
    cfg.write_text(cfg.read_text() + 'kid = "hanoi-2025"\n')
    code, out, _ = run("keys", "show", "--config", str(cfg))
    assert code == 0 and out.startswith("kid: hanoi-2025\n")
    assert out.splitlines()[1].startswith('"hanoi-2025" = ')
    code, out, _ = run("keys", "show", "--key", str(tmp_path / "centre-signing.key"))
    assert code == 0 and f"kid: {key_id(key.public_key())}" in out


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(("text", "expected"), [
    ('[mqtt]\nhost = "b"\nprot = 1', ["mqtt.prot: unknown key (did you mean 'port'?)"]),
    ('[mqtt]\nhost = "b"\nport = "x"', ["mqtt.port: expected int, got str"]),
    ('[mqtt]\nhost = "b"\n[mqtt.tls]\nenabled = "yes"', ["mqtt.tls.enabled: expected bool"]),
    ('[mqtt]\nhost = "b"\n[signing]\nkye_file = "k"',
     ["signing.kye_file: unknown key (did you mean 'key_file'?)"]),
    ('[mqtt]\nhost = "b"\n[signing]\nkey_file = "nope.key"', ["signing.key_file: no such file"]),
    ('[mqtt]\nhost = "b"\n[signing]\nkid = "a b"', ["signing.kid: 1-64 letters"]),
    ('clientid = "x"\n[mqtt]\nhost = "b"',
     ["clientid: unknown key (did you mean 'client_id'?)"]),
    ('[signing]\nkid = "k"', ["mqtt: missing section [mqtt]"]),
    ('[mqtt]\nhost = "b"\nport = 0\n[mqtt.tls]\ncert_file = "c.pem"',
     ["mqtt.port: 0 is not a TCP port", "mqtt.tls.cert_file: no such file",
      "mqtt.tls: cert_file and key_file go together"]),
    ("[mqtt\n", ["not valid TOML"]),
])
def test_config_problems_exit_2_naming_the_key(tmp_path: Path, text: str,
                                               expected: list[str]) -> None:
    cfg = tmp_path / "centre.toml"
    cfg.write_text(text)
    code, out, err = run("devices", "--config", str(cfg))
    assert code == 2 and out == ""
    assert err.startswith(f"configuration {cfg} has {len(expected)} problem(s):")
    for problem in expected:
        assert problem in err


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    cfg = tmp_path / "centre.toml"
    cfg.write_text('[mqtt]\nhost = 1\nport = "x"\nkeepalive = 3\n[signing]\nkid = 4')
    code, _, err = run("watch", "--once", "--config", str(cfg))
    assert code == 2 and "has 4 problem(s)" in err
    for key in ("mqtt.host", "mqtt.port", "mqtt.keepalive:", "signing.kid"):
        assert key in err


def test_the_config_comes_from_the_environment_when_not_given(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIEMCAU_CENTRE_CONFIG", str(tmp_path / "from-env.toml"))
    code, _, err = run("devices")
    assert code == 2 and f"{tmp_path / 'from-env.toml'}" in err and "file not found" in err
    code, _, err = run("devices", "--config", str(tmp_path / "given.toml"))
    assert code == 2 and "given.toml" in err


def test_send_refuses_a_key_others_can_read(tmp_path: Path) -> None:
    run("keys", "init", "--dir", str(tmp_path))
    (tmp_path / "centre-signing.key").chmod(0o644)
    cfg = write_config(tmp_path / "centre.toml", 1883, Path("centre-signing.key"))  # relative
    code, _, err = run("send", "c00001-r1", "health.report", "--config", str(cfg))
    assert code == 2 and "signing.key_file: readable by other users (mode 0644)" in err
    assert f"chmod 600 {tmp_path / 'centre-signing.key'}" in err


def test_send_needs_a_signing_key(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "centre.toml", 1883)
    code, _, err = run("send", "c00001-r1", "health.report", "--config", str(cfg))
    assert code == 2 and "signing.key_file: not set" in err


def test_send_refuses_a_file_that_is_not_an_ed25519_key(tmp_path: Path) -> None:
    bad = tmp_path / "centre-signing.key"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    bad.chmod(0o600)
    cfg = write_config(tmp_path / "centre.toml", 1883, bad)
    code, _, err = run("send", "c00001-r1", "health.report", "--config", str(cfg))
    assert code == 2 and "signing.key_file: not an unencrypted PEM private key" in err


@pytest.mark.parametrize("ttl", ["86401", "172800", "0"])
def test_send_refuses_a_ttl_a_box_would_refuse(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               ttl: str) -> None:
    cfg = write_config(tmp_path / "centre.toml", free_port())
    with pytest.raises(SystemExit) as exited:  # argparse's usage error: nothing is sent
        run("send", "c00001-r1", "health.report", "--ttl", ttl, "--config", str(cfg))
    assert exited.value.code == 2
    assert "--ttl: must be 1-86400 seconds (a box refuses a command valid for longer)" in (
        capsys.readouterr().err)


def test_an_unreachable_broker_exits_3(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "centre.toml", free_port())
    code, _, err = run("devices", "--config", str(cfg))
    assert code == 3 and "cannot reach the broker at 127.0.0.1:" in err


# ---------------------------------------------------------------- send: the pure parts


def test_args_are_json_when_they_parse_and_text_otherwise() -> None:
    assert build_args("audio.volume", ["percent=30"]) == {"percent": 30}
    assert build_args("config.set", ["muted=true", "name=Phòng họp", "list=[1,2]"]) == {
        "muted": True, "name": "Phòng họp", "list": [1, 2]}
    # A meeting id that looks like a number is still the text the box expects.
    args = build_args("meeting.join", ["meeting_id=2024", "publish=srt://m.gov.vn:9000",
                                       "muted=true"])
    assert args == {"meeting_id": "2024", "publish": "srt://m.gov.vn:9000", "muted": True}
    assert build_args("audio.volume", ["percent=40"], '{"percent": 30}') == {"percent": 40}


@pytest.mark.parametrize(("cmd", "pairs", "json_text", "message"), [
    ("audio.volume", ["percent=loud"], None, "args.percent: expected int, got str"),
    ("audio.volume", [], None, "missing required field `percent`".replace("`", "")),
    ("audio.mute", ["now=1"], None, "unknown field"),
    ("audio.volume", ["percent"], None, "expected KEY=VALUE"),
    ("audio.volume", ["percent=1", "percent=2"], None, "given twice"),
    ("audio.volume", [], "[30]", "must be a JSON object"),
    ("audio.volume", [], "{", "not valid JSON"),
])
def test_bad_args_are_refused_before_sending(cmd: str, pairs: list[str], json_text: str | None,
                                             message: str) -> None:
    with pytest.raises(UsageError, match=message):
        build_args(cmd, pairs, json_text)


def test_targets_and_command_names() -> None:
    one = parse_target("c00001-r1")
    assert (one.aud, one.cmd_topic, one.reply_filter) == (
        "c00001-r1", device_topic("c00001-r1", "cmd"), device_topic("c00001-r1", "reply"))
    group = parse_target("group:p01")
    assert group.is_group and group.cmd_topic == group_cmd_topic("p01")
    assert group.reply_filter == "diemcau/v1/dev/+/reply"
    for bad in ("C00001", "group:", "group:a/b", "dev/#", ""):
        with pytest.raises(UsageError, match="TARGET"):
            parse_target(bad)
    with pytest.raises(UsageError, match="did you mean 'meeting.join'"):
        check_command("meeting.joni")


def reply(jti: str, status: str, code: int = 200, detail: str = "") -> bytes:
    return encode(Reply(id=jti, cmd="meeting.join", status=status, code=code,  # type: ignore[arg-type]
                        detail=detail, ts=T0))


def test_replies_to_one_box_finish_on_a_final_status() -> None:
    replies = Replies("j1", parse_target("c00001-r1"), sent_at=100.0)
    topic = device_topic("c00001-r1", "reply")
    assert replies.take(topic, reply("other", "succeeded"), 100.1) is None
    assert replies.take(device_topic("c00002-r1", "reply"), reply("j1", "failed"), 100.1) is None
    assert replies.take(topic, b"garbage", 100.1) is None
    line = replies.take(topic, reply("j1", "accepted", 202, "joining m1"), 100.0123)
    assert line is not None and line.text() == "c00001-r1  accepted    202  joining m1  (12 ms)"
    assert not replies.finished and replies.exit_code() == 0
    replies.take(topic, reply("j1", "succeeded", 200, "live in m1"), 100.5)
    assert replies.finished and replies.exit_code() == 0
    replies.take(topic, reply("j1", "failed", 500, "camera gone"), 100.6)
    assert replies.exit_code() == 1


def test_a_repeat_answered_as_a_duplicate_stands_for_its_first_result() -> None:
    """After a lost broker `send` sends the command again; the box answers the repeat from
    its replay cache: ``duplicate`` with its first status, perhaps not final yet."""
    def dup(first: str | None) -> bytes:
        return encode(Reply(id="j1", cmd="meeting.join", status="duplicate", code=200,  # type: ignore[arg-type]
                            detail="", ts=T0, first_status=first))  # type: ignore[arg-type]

    topic = device_topic("c00001-r1", "reply")
    replies = Replies("j1", parse_target("c00001-r1"), sent_at=0.0)
    replies.take(topic, reply("j1", "accepted", 202), 0.1)
    replies.take(topic, dup("in_progress"), 0.2)
    assert not replies.finished  # still joining: its final answer is still to come
    replies.take(topic, reply("j1", "succeeded"), 0.3)
    replies.take(topic, dup("succeeded"), 0.4)  # a late repeat hides nothing
    assert replies.finished and replies.exit_code() == 0
    assert replies.last["c00001-r1"].status == "succeeded"

    only_repeat = Replies("j1", parse_target("c00001-r1"), sent_at=0.0)
    only_repeat.take(topic, dup("succeeded"), 0.1)
    assert only_repeat.finished and only_repeat.exit_code() == 0
    unknown = Replies("j1", parse_target("c00001-r1"), sent_at=0.0)
    unknown.take(topic, dup(None), 0.1)  # an older box that does not say how it went
    assert unknown.finished and unknown.exit_code() == 1


def test_replies_from_a_group_add_up() -> None:
    replies = Replies("j1", parse_target("group:p01"), sent_at=0.0)
    assert replies.exit_code() == 1  # nobody answered
    for dev, status in (("a", "accepted"), ("a", "succeeded"), ("b", "succeeded")):
        replies.take(device_topic(dev, "reply"), reply("j1", status), 0.1)
    assert replies.exit_code() == 0 and not replies.finished
    replies.take(device_topic("c", "reply"), reply("j1", "rejected", 409, "busy"), 0.1)
    assert replies.exit_code() == 1
    assert replies.summary() == "group:p01: 3 box(es) answered: 2 succeeded, 1 rejected"


def test_replies_from_a_group_are_counted_against_the_manifest() -> None:
    """2,000 boxes in the group, 1,023 answers: not a clean success."""
    expected = {f"c{i:05d}-r1" for i in range(2000)}
    replies = Replies("j1", parse_target("group:all"), 0.0, expected)
    for i in range(1023):
        replies.take(f"diemcau/v1/dev/c{i:05d}-r1/reply", reply("j1", "succeeded"), 0.1)
    assert not replies.finished and len(replies.missing) == 977
    assert replies.exit_code() == 1
    assert replies.summary() == ("group:all: 1023 of 2000 box(es) in the manifest answered: "
                                 "1023 succeeded; 977 did not answer")
    for i in range(1023, 2000):
        replies.take(f"diemcau/v1/dev/c{i:05d}-r1/reply", reply("j1", "succeeded"), 0.1)
    assert replies.finished and replies.exit_code() == 0
    assert group_members([("a", ["p01", "all"]), ("b", ["p02", "all"])], "p01") == {"a"}


# ---------------------------------------------------------------- against a real Mosquitto


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "broker") as b:
        yield b


@pytest.fixture
def centre(tmp_path: Path, broker: Broker) -> Path:
    """A key pair and a config for the console, next to each other."""
    run("keys", "init", "--dir", str(tmp_path / "centre"))
    return write_config(tmp_path / "centre" / "centre.toml", broker.port,
                        Path("centre-signing.key"))


def cli(*argv: str, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    """The console as its own process, exactly as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "diemcau_centre", *argv], capture_output=True,
                          text=True, timeout=timeout_s, check=False)


def mqtt_client(broker: Broker, name: str) -> paho.Client:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=name, protocol=paho.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def publish(broker: Broker, messages: list[tuple[str, bytes]], retain: bool = True) -> None:
    client = mqtt_client(broker, "test-publisher")
    try:
        for topic, payload in messages:
            client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def site(name: str) -> Site:
    return Site(name=name, province="p01", district="d001", commune="c00001")


def fleet_messages() -> list[tuple[str, bytes]]:
    def meta(name: str, firmware: str) -> bytes:
        return encode(Meta(model="Raspberry Pi 4", serial="1", firmware=firmware,
                           capabilities=[], site=site(name), groups=["p01"],
                           config_version="1", ts=T0))

    return [
        (device_topic("c00001-r1", "state"), encode(State(state="ready", session=7, ts=T0))),
        (device_topic("c00001-r1", "meta"), meta("UBND xã Đông Anh", "0.1.0")),
        (device_topic("c00001-r1", "status"),
         encode(Status(meeting_state="live", meeting_id="hop-2025", muted=True, hand_raised=True,
                       ts=T0))),
        (alert_topic("c00001-r1", "temperature_high"),
         encode(Alert(code="temperature_high", severity="critical", detail="83 °C", since=T0))),
        (alert_topic("c00001-r1", "disk_low"),
         encode(Alert(code="disk_low", severity="warning", detail="300 MB", since=T0))),
        (alert_topic("c00001-r1", "disk_low"), b""),  # cleared: the broker forgets it
        (device_topic("c00002-r1", "state"), encode(State(state="lost", session=3, ts=T0))),
        (device_topic("c00002-r1", "meta"), meta("UBND xã Vân Nội", "0.0.9")),
        (device_topic("c00003-r1", "state"), encode(State(state="ready", session=1, ts=T0))),
        (device_topic("c00003-r1", "status"), b'{"meeting_state": "dancing"}'),
    ]


def rows(text: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in text.splitlines()
            if line.startswith("c0000")}


@pytest.mark.e2e
def test_devices_lists_what_the_broker_retained(broker: Broker, centre: Path) -> None:
    publish(broker, fleet_messages())
    result = cli("devices", "--config", str(centre))
    assert result.returncode == 0, result.stderr
    table = rows(result.stdout)
    assert table["c00001-r1"] == ["c00001-r1", "ready", "7", "UBND", "xã", "Đông", "Anh", "0.1.0",
                                  "live", "hop-2025", "yes", "yes", "no", "temperature_high!"]
    assert table["c00002-r1"][:8] == ["c00002-r1", "lost", "3", "UBND", "xã", "Vân", "Nội",
                                      "0.0.9"]
    assert table["c00003-r1"][:3] == ["c00003-r1", "ready", "1"]
    assert " ".join(table["c00003-r1"][-2:]) == "[bad status]"

    result = cli("devices", "--json", "--match", "c00001-*", "--config", str(centre))
    records = json.loads(result.stdout)
    assert [r["device"] for r in records] == ["c00001-r1"]
    assert list(records[0]["alerts"]) == ["temperature_high"]
    assert records[0]["meeting_id"] == "hop-2025" and records[0]["muted"] is True
    assert (records[0]["hand_raised"], records[0]["floor"]) == (True, False)


@pytest.mark.e2e
def test_devices_over_tls(tmp_path: Path) -> None:
    with Broker(tmp_path / "broker", tls=True) as broker:
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="pub",
                             protocol=paho.MQTTv5)
        client.tls_set(ca_certs=str(broker.ca_file))
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        client.publish(device_topic("c00001-r1", "state"),
                       encode(State(state="ready", session=2, ts=T0)), qos=1,
                       retain=True).wait_for_publish(5)
        client.disconnect()
        client.loop_stop()
        cfg = write_config(tmp_path / "centre.toml", broker.port,
                           tls=f'ca_file = "{broker.ca_file}"')
        result = cli("devices", "--config", str(cfg))
        assert result.returncode == 0, result.stderr
        assert rows(result.stdout)["c00001-r1"][:3] == ["c00001-r1", "ready", "2"]
        plain = write_config(tmp_path / "plain.toml", broker.port)  # no TLS: refused
        assert cli("devices", "--config", str(plain)).returncode == 3


@pytest.mark.e2e
def test_watch_once_prints_one_snapshot(broker: Broker, centre: Path) -> None:
    publish(broker, fleet_messages())
    result = cli("watch", "--once", "--config", str(centre))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert ("3 boxes: 1 lost, 2 ready; 1 live in a meeting; 1 with a hand raised; "
            "1 with alerts") in out
    table = rows(out)
    assert table["c00001-r1"] == ["c00001-r1", "ready", "live", "hop-2025", "yes", "yes", "no",
                                  "off", "-", "-", "-", "temperature_high!"]
    assert "\x1b" not in out  # not a terminal: no screen clearing
    assert "recent:" not in out and "nothing yet" not in out  # retained messages only


class Output:
    """What a running console prints, line by line, read on a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.text = ""
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._lines.put(line)

    def wait_for(self, wanted: Callable[[str], bool], timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while not wanted(self.text):
            try:
                self.text += self._lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise AssertionError(f"not seen in time; output so far:\n{self.text}"
                                         ) from None


@pytest.mark.e2e
def ctrl_c_works() -> None:
    """In the child before it runs: a suite started in the background (``make test &``)
    hands its children SIGINT ignored, and Python then never turns Ctrl-C into an exit."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_watch_ignores_a_late_will_from_an_older_session(broker: Broker, centre: Path) -> None:
    publish(broker, fleet_messages())
    proc = subprocess.Popen([sys.executable, "-m", "diemcau_centre", "watch", "--interval", "0.2",
                             "--config", str(centre)], stdout=subprocess.PIPE, text=True,
                            preexec_fn=ctrl_c_works)
    try:
        output = Output(proc)
        output.wait_for(lambda t: "c00001-r1" in t)
        # The broker sends the will of the box's previous connection, after its birth.
        publish(broker, [(device_topic("c00001-r1", "state"),
                          encode(State(state="lost", session=6, ts=T0)))])
        output.wait_for(lambda t: "ignored a stale 'lost' from session 6" in t)
        # The table comes before the recent happenings, in the same snapshot.
        snapshot = output.text.rsplit("diemcau fleet at", 1)[-1]
        assert rows(snapshot)["c00001-r1"][1] == "ready"
        # A will from the current session is believed.
        publish(broker, [(device_topic("c00001-r1", "state"),
                          encode(State(state="lost", session=7, ts=T0)))])
        output.wait_for(lambda t: "lost (session 7)" in t)
    finally:
        proc.send_signal(2)  # Ctrl-C
        assert proc.wait(10) == 0


@pytest.mark.e2e
def test_watch_carries_on_after_the_broker_restarts(broker: Broker, centre: Path) -> None:
    publish(broker, fleet_messages())
    proc = subprocess.Popen([sys.executable, "-m", "diemcau_centre", "watch", "--interval", "0.2",
                             "--config", str(centre)], stdout=subprocess.PIPE, text=True,
                            preexec_fn=ctrl_c_works)
    try:
        output = Output(proc)
        output.wait_for(lambda t: "c00001-r1" in t)
        broker.restart()
        output.wait_for(lambda t: "DISCONNECTED, reconnecting" in t)
        # A clean session forgets subscriptions: this only shows if watch subscribed again.
        deadline = time.monotonic() + 15
        while "hand_raised" not in output.text and time.monotonic() < deadline:
            publish(broker, [(device_topic("c00001-r1", "event"),
                              b'{"seq": 9, "ts": 1.0, "kind": "hand_raised"}')], retain=False)
            try:
                output.wait_for(lambda t: "hand_raised" in t, timeout_s=0.5)
            except AssertionError:
                continue
        assert "hand_raised" in output.text
        assert "DISCONNECTED" not in output.text.rsplit("diemcau fleet at", 1)[-1]
    finally:
        proc.send_signal(2)
        assert proc.wait(10) == 0


class StandInBox:
    """Answers commands like boxes would: verifies each, then replies as ``script`` says."""

    def __init__(self, broker: Broker, centre: Path, devices: list[str],
                 script: Callable[[str, Any], list[tuple[str, int, str]]],
                 groups: tuple[str, ...] = ("p01",)) -> None:
        key = load_signing_key(centre.parent / "centre-signing.key")
        self.keys = {key_id(key.public_key()): key.public_key()}
        self.devices, self.script = devices, script
        self.expiry: list[int | None] = []
        self.ids: list[tuple[str, str]] = []  # (topic, command id) of each command answered
        self.problems: list[str] = []
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="stand-in",
                                  protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect(broker.host, broker.port)
        topics = [device_topic(d, "cmd") for d in devices] + [group_cmd_topic(g) for g in groups]
        self.client.subscribe([(t, 1) for t in topics])
        self.client.loop_start()
        assert subscribed.wait(5)  # in place before the console sends

    def _on_message(self, client: paho.Client, userdata: Any, message: Any) -> None:
        try:
            self.expiry.append(getattr(message.properties, "MessageExpiryInterval", None))
            # A command on a box's own topic is for that box; a group's, for all of them.
            devices = [d for d in self.devices if message.topic in (device_topic(d, "cmd"),
                                                                    group_cmd_topic("p01"))]
            for dev in devices:
                audiences = {dev, "group:p01"}
                command = verify_command(message.payload, self.keys, audiences, now=time.time())
                self.ids.append((message.topic, command.id))
                for status, code, detail in self.script(dev, command):
                    client.publish(device_topic(dev, "reply"), encode(Reply(
                        id=command.id, cmd=command.cmd, status=status, code=code,  # type: ignore[arg-type]
                        detail=detail, ts=time.time())), qos=1)
        except Exception as exc:  # noqa: BLE001 - reported by the test, never kills paho
            self.problems.append(repr(exc))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.e2e
def test_send_to_a_box_that_does_not_answer(broker: Broker, centre: Path) -> None:
    publish(broker, [(device_topic("c00002-r1", "state"),
                      encode(State(state="lost", session=3, ts=T0)))])
    started = time.monotonic()
    result = cli("send", "c00002-r1", "audio.volume", "--arg", "percent=30", "--timeout", "1",
                 "--config", str(centre))
    assert result.returncode == 1 and result.stdout == ""
    assert "no reply from c00002-r1 within 1 s: the box is lost (session 3)" in result.stderr
    assert time.monotonic() - started < 10

    result = cli("send", "c09999-r9", "health.report", "--timeout", "0.5", "--config", str(centre))
    assert result.returncode == 1
    assert "no box c09999-r9 has ever announced itself" in result.stderr


@pytest.mark.e2e
def test_send_waits_for_the_final_reply_of_a_join(broker: Broker, centre: Path) -> None:
    def script(dev: str, command: Any) -> list[tuple[str, int, str]]:
        assert command.cmd == "meeting.join" and command.aud == dev
        assert command.args == {"meeting_id": "2025", "publish": "srt://m.gov.vn:9000",
                                "muted": True}
        return [("accepted", 202, "joining 2025"), ("succeeded", 200, "live in 2025")]

    box = StandInBox(broker, centre, ["c00001-r1"], script)
    try:
        result = cli("send", "c00001-r1", "meeting.join", "--arg", "meeting_id=2025",
                     "--arg", "publish=srt://m.gov.vn:9000", "--arg", "muted=true",
                     "--ttl", "60", "--config", str(centre))
    finally:
        box.close()
    assert box.problems == []
    assert box.expiry and 55 <= (box.expiry[0] or 0) <= 60  # MQTT message expiry = ttl
    lines = result.stdout.splitlines()
    assert [ln.split()[:3] for ln in lines] == [["c00001-r1", "accepted", "202"],
                                                 ["c00001-r1", "succeeded", "200"]]
    assert lines[1].endswith(" ms)") and "live in 2025" in lines[1]
    assert result.returncode == 0, result.stderr


@pytest.mark.e2e
def test_send_exits_1_when_the_box_refuses(broker: Broker, centre: Path) -> None:
    box = StandInBox(broker, centre, ["c00001-r1"],
                     lambda dev, c: [("rejected", 409, "nothing to leave: the meeting state is idle")])
    try:
        result = cli("send", "c00001-r1", "meeting.leave", "--config", str(centre))
    finally:
        box.close()
    assert result.returncode == 1
    assert result.stdout.split()[:3] == ["c00001-r1", "rejected", "409"]


@pytest.mark.e2e
def test_send_to_a_group_sums_up_the_replies(broker: Broker, centre: Path) -> None:
    def script(dev: str, command: Any) -> list[tuple[str, int, str]]:
        assert command.aud == "group:p01"
        if dev == "c00003-r1":
            return [("rejected", 409, "not in a meeting")]
        return [("succeeded", 200, "muted")]

    box = StandInBox(broker, centre, ["c00001-r1", "c00002-r1", "c00003-r1"], script)
    try:
        result = cli("send", "group:p01", "audio.mute", "--timeout", "1.5", "--config",
                     str(centre))
    finally:
        box.close()
    assert box.problems == []
    assert sorted(ln.split()[0] for ln in result.stdout.splitlines()[:-1]) == [
        "c00001-r1", "c00002-r1", "c00003-r1"]
    assert result.stdout.splitlines()[-1] == (
        "group:p01: 3 box(es) answered: 2 succeeded, 1 rejected")
    assert result.returncode == 1

    box = StandInBox(broker, centre, ["c00001-r1", "c00002-r1"],
                     lambda dev, c: [("succeeded", 200, "muted")])
    try:
        result = cli("send", "group:p01", "audio.mute", "--timeout", "1", "--config", str(centre))
    finally:
        box.close()
    assert result.stdout.splitlines()[-1] == "group:p01: 2 box(es) answered: 2 succeeded"
    assert result.returncode == 0

    result = cli("send", "group:d999", "audio.mute", "--timeout", "0.5", "--config", str(centre))
    assert result.returncode == 1 and "no replies from group:d999" in result.stderr


@pytest.fixture
def fleet_centre(tmp_path: Path, broker: Broker) -> Path:
    """A console whose fleet_dir holds a manifest: p01 has c00001-r1, c00001-r2, c00004-r1."""
    directory = centre_dir_for(tmp_path / "fleet")
    run("keys", "init", "--dir", str(tmp_path / "centre"))
    return write_config(tmp_path / "centre" / "centre.toml", broker.port,
                        Path("centre-signing.key"),
                        extra=f'fleet_dir = "{directory}"\nstate_dir = "{tmp_path / "state"}"')


def buckets(report: str) -> dict[str, int]:
    """The roll-call's first table: bucket -> boxes."""
    lines = report.split("\n\n")[0].splitlines()[1:]
    return {line.rsplit(maxsplit=1)[0].strip(): int(line.rsplit(maxsplit=1)[1]) for line in lines}


@pytest.mark.e2e
def test_send_to_a_group_takes_the_roll_call_and_resends_to_the_silent(
        broker: Broker, fleet_centre: Path) -> None:
    box = StandInBox(broker, fleet_centre, ["c00001-r1", "c00004-r1"],
                     lambda dev, c: [("succeeded", 200, "muted")])
    try:
        result = cli("send", "group:p01", "audio.mute", "--timeout", "1.5", "--config",
                     str(fleet_centre))
    finally:
        box.close()
    assert result.returncode == 1
    table = result.stdout
    assert buckets(table) == {"expected": 3, "succeeded": 2, "failed": 0, "acknowledged": 0,
                              "silent": 1}
    assert "c00001-r2  never seen on this broker" in table
    assert "3 expected · 2 acked · 2 ok · 0 failed · 0 working · 1 silent" in result.stderr
    first_id = box.ids[0][1]
    assert f"diemcau-centre resend {first_id[:12]}" in result.stderr
    record = json.loads((fleet_centre.parent.parent / "state" / "runs" / f"{first_id}.json"
                         ).read_text())
    assert sorted(record["expected"]) == ["c00001-r1", "c00001-r2", "c00004-r1"]
    assert sorted(record["answers"]) == ["c00001-r1", "c00004-r1"]

    # The silent box is back: `resend` sends it the same command, same id, on its own topic.
    box = StandInBox(broker, fleet_centre, ["c00001-r1", "c00001-r2", "c00004-r1"],
                     lambda dev, c: [("succeeded", 200, "muted")])
    try:
        result = cli("resend", first_id[:12], "--timeout", "30", "--config", str(fleet_centre))
    finally:
        box.close()
    assert box.ids == [(device_topic("c00001-r2", "cmd"), first_id)]
    assert "resent audio.mute to 1 silent box(es) of group:p01 with its first id" in result.stderr
    assert buckets(result.stdout)["succeeded"] == 3
    assert result.returncode == 0, result.stderr + result.stdout
    result = cli("resend", "--config", str(fleet_centre))  # the last run: nothing left to send
    assert result.returncode == 0 and "nothing to resend" in result.stderr

    # Every box of the group answers: done at once, without waiting out --timeout.
    box = StandInBox(broker, fleet_centre, ["c00001-r1", "c00001-r2", "c00004-r1"],
                     lambda dev, c: [("succeeded", 200, "muted")])
    try:
        result = cli("send", "group:p01", "audio.mute", "--timeout", "600", "--config",
                     str(fleet_centre), timeout_s=60)
    finally:
        box.close()
    assert "by province:" in result.stdout and "p01 Thành phố Hà Nội" in result.stdout
    assert result.returncode == 0, result.stderr


@pytest.mark.e2e
def test_devices_and_watch_say_which_boxes_of_the_manifest_are_missing(
        broker: Broker, fleet_centre: Path) -> None:
    publish(broker, fleet_messages()[:3])  # c00001-r1 only
    for argv in (["devices"], ["watch", "--once"]):
        result = cli(*argv, "--config", str(fleet_centre))
        assert "c00001-r1" in result.stdout
        assert ("listed 1 of the 4 box(es) in the manifest; the broker gave nothing of 3 "
                "(never connected, or their messages were lost): c00001-r2, c00004-r1, "
                "c00688-r1") in result.stderr
        assert result.returncode == 1
    result = cli("devices", "--match", "c00001-r1", "--config", str(fleet_centre))
    assert result.returncode == 0 and result.stderr == ""


def test_keys_init_needs_no_configuration(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DIEMCAU_CENTRE_CONFIG"}
    result = subprocess.run([sys.executable, "-m", "diemcau_centre", "keys", "init", "--dir",
                             str(tmp_path)], capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0 and "kid: " in result.stdout
