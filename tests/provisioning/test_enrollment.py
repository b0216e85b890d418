"""Enrollment end to end on loopback: the box's code against the real service, over HTTPS
with real certificates; the service's answers to whatever a client may send."""

from __future__ import annotations

import http.client
import json
import logging
import os
import queue
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diemcau.adapters.enroll import (
    EnrollError,
    Renewer,
    enroll_once,
    enroll_until_done,
    identity_dir,
    load_identity,
    renew_once,
)
from diemcau.config import ConfigError, boot_settings, load_config
from diemcau.core.events import CertificateStatus
from diemcau.protocol.enrollment import (
    ENROLL_PATH,
    RENEW_PATH,
    BadRequest,
    EnrollmentFileError,
    EnrollRefused,
    EnrollRequest,
    parse_request,
    read_enrollment_file,
)
from diemcau_centre.ca import load_ca, revoke_device
from diemcau_centre.enroll_service import enroll
from diemcau_centre.manifest import FleetStore, reissue_tokens, token_hash

from .conftest import A2, A, B
from .enrollment import Centre, RunningService, make_centre


@pytest.fixture
def centre(tmp_path: Path) -> Centre:
    return make_centre(tmp_path / "centre")


@pytest.fixture
def service(centre: Centre) -> Iterator[RunningService]:
    running = RunningService(centre)
    yield running
    running.stop()


def token_state(centre: Centre, device_id: str) -> str:
    record = FleetStore(centre.directory).load().latest_token(device_id)
    assert record is not None
    return record.state(time.time())


def no_identity_left(state_dir: Path) -> bool:
    """Nothing of an identity: no directory, and no temporary one either."""
    return not identity_dir(state_dir).exists() and not list(state_dir.glob(".identity*"))


# ---------------------------------------------------------------- the good path


def test_a_blank_box_enrolls_and_keeps_its_own_key(centre: Centre, service: RunningService,
                                                   tmp_path: Path) -> None:
    state = tmp_path / "state"
    identity = enroll_once(centre.enrollment_file(A), state)

    files = identity_dir(state)
    assert stat.S_IMODE(files.stat().st_mode) == 0o700
    assert stat.S_IMODE((files / "key.pem").stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((files / "cert.pem").read_bytes())
    key = serialization.load_pem_private_key((files / "key.pem").read_bytes(), password=None)
    # The certificate is for the key the box made, and names the box.
    assert cert.public_key() == key.public_key()
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == [A]
    # The CA the box stores is the centre's own.
    assert (files / "ca.pem").read_text() == (centre.directory / "ca.pem").read_text()
    assert identity.info.groups == ["p01", "d001", "c00001", "all"]
    assert identity.info.site.name == "Phường Phúc Xá" and identity.info.site.room == "Phòng họp 1"
    assert identity.centre_keys == centre.settings.centre_keys
    assert token_state(centre, A) == "used"
    # What the centre recorded: the token bought exactly this certificate.
    record = FleetStore(centre.directory).load().latest_token(A)
    assert record is not None and record.certificate == f"{cert.serial_number:x}"
    # The key never left: it is in no file at the centre.
    key_text = (files / "key.pem").read_bytes()
    assert not any(key_text in p.read_bytes() for p in centre.directory.rglob("*") if p.is_file())


def test_the_identity_completes_a_blank_configuration(centre: Centre, service: RunningService,
                                                      tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = tmp_path / "endpoint.toml"
    config.write_text(blank_config(state, centre.enrollment_file(A)))
    state_dir, enrollment = boot_settings(config)
    assert state_dir == state and enrollment.file == str(centre.enrollment_file(A))
    identity = enroll_once(centre.enrollment_file(A), state)
    cfg = load_config(config, overlay=identity.overlay())
    assert cfg.device.id == A and cfg.site.commune == "c00001" and cfg.groups[-1] == "all"
    assert (cfg.mqtt.host, cfg.mqtt.port) == ("127.0.0.1", 8883)
    assert cfg.mqtt.tls.cert_file == str(identity.cert_file)
    assert cfg.commands.centre_keys == centre.settings.centre_keys


def test_the_image_example_needs_only_an_identity(centre: Centre, service: RunningService,
                                                  tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "firmware/examples/endpoint-image.toml"
    with pytest.raises(ConfigError) as blank:
        load_config(example)
    assert "device: missing section [device]" not in blank.value.problems  # state_dir is there
    assert "device.id: missing (required)" in blank.value.problems
    identity = enroll_once(centre.enrollment_file(A), tmp_path / "state")
    cfg = load_config(example, overlay=identity.overlay())
    assert cfg.device.id == A and cfg.mqtt.tls.key_file == str(identity.key_file)


def blank_config(state: Path, enroll_file: Path, broker_port: int | None = None) -> str:
    """What the image carries: nothing about any one box."""
    return f"""\
[device]
state_dir = "{state}"

[commands]
media_hosts = ["127.0.0.1"]

[media]
srt_latency_ms = 120
connect_timeout_ms = 1000

[health]
clock_check = "none"

[enrollment]
file = "{enroll_file}"
retry_min_s = 0.2
retry_max_s = 1.0

[log]
level = "debug"
"""


# ---------------------------------------------------------------- refusals


def test_a_token_works_once(centre: Centre, service: RunningService, tmp_path: Path) -> None:
    enroll_once(centre.enrollment_file(A), tmp_path / "first")
    with pytest.raises(EnrollError) as refused:
        enroll_once(centre.enrollment_file(A), tmp_path / "second")
    assert refused.value.reason == "used"
    assert "already used" in str(refused.value)
    assert no_identity_left(tmp_path / "second")


def test_an_expired_token_is_refused(centre: Centre, service: RunningService,
                                     tmp_path: Path) -> None:
    reissue_tokens(centre.directory, [A], token_days=1, now=time.time() - 2 * 86400)
    with pytest.raises(EnrollError) as refused:
        enroll_once(centre.enrollment_file(A), tmp_path / "state")
    assert refused.value.reason == "expired" and "expired on" in str(refused.value)
    assert no_identity_left(tmp_path / "state")


def test_a_token_for_another_box_is_refused(centre: Centre, service: RunningService,
                                            tmp_path: Path) -> None:
    # A's file with B's device id: the SD card got the wrong file, or someone tries.
    other = tmp_path / "wrong.toml"
    other.write_text(centre.enrollment_file(A).read_text().replace(f'device_id = "{A}"',
                                                                   f'device_id = "{B}"'))
    with pytest.raises(EnrollError) as refused:
        enroll_once(other, tmp_path / "state")
    assert refused.value.reason == "other_device" and A in str(refused.value)
    assert no_identity_left(tmp_path / "state")
    assert token_state(centre, A) == token_state(centre, B) == "pending"


def test_an_unknown_token_is_refused(centre: Centre, service: RunningService,
                                     tmp_path: Path) -> None:
    text = centre.enrollment_file(A).read_text()
    token = read_enrollment_file(text.encode()).token
    forged = tmp_path / "forged.toml"
    forged.write_text(text.replace(token, "dce1_" + "A" * 43))
    with pytest.raises(EnrollError) as refused:
        enroll_once(forged, tmp_path / "state")
    assert refused.value.reason == "unknown"


def test_two_boxes_racing_with_one_token_let_one_through(centre: Centre,
                                                         service: RunningService,
                                                         tmp_path: Path) -> None:
    outcomes: list[str] = []

    def attempt(n: int) -> None:
        try:
            enroll_once(centre.enrollment_file(A), tmp_path / f"box{n}")
            outcomes.append("enrolled")
        except EnrollError as exc:
            outcomes.append(exc.reason)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["enrolled", "used", "used", "used"]
    # Exactly one certificate was signed for A.
    assert len(list((centre.directory / "issued").glob("*.pem"))) == 3  # broker, centre, A


def test_a_service_with_another_ca_is_not_trusted(centre: Centre, service: RunningService,
                                                  tmp_path: Path) -> None:
    # The file pins the centre's CA: a service with a certificate from any other CA
    # (here: the file's CA swapped for a stranger's) never sees the token.
    from tests.harness.broker import make_test_ca

    stranger_ca, _, _ = make_test_ca(tmp_path / "stranger")
    doc = centre.enrollment_file(A).read_text()
    ca_pem = read_enrollment_file(doc.encode()).ca_pem
    pinned = tmp_path / "pinned.toml"
    pinned.write_text(doc.replace(ca_pem.strip(), stranger_ca.read_text().strip()))
    with pytest.raises(EnrollError) as refused:
        enroll_once(pinned, tmp_path / "state")
    assert refused.value.reason == "untrusted"
    assert token_state(centre, A) == "pending"


# ---------------------------------------------------------------- a damaged enrollment file


@pytest.mark.parametrize("damage", ["truncated", "garbled", "empty", "binary", "no_ca_end"])
def test_a_damaged_enrollment_file_says_so_and_writes_nothing(centre: Centre,
                                                              service: RunningService,
                                                              tmp_path: Path,
                                                              damage: str) -> None:
    good = centre.enrollment_file(A).read_bytes()
    bad = {
        "truncated": good[: len(good) // 2],
        "garbled": good.replace(b"token = ", b"token = = "),
        "empty": b"",
        "binary": b"\xff\xfe\x00" + good[3:],
        "no_ca_end": good.replace(b"-----END CERTIFICATE-----", b""),
    }[damage]
    path = tmp_path / "diemcau-enroll.toml"
    path.write_bytes(bad)
    with pytest.raises(EnrollError) as refused:
        enroll_once(path, tmp_path / "state")
    assert refused.value.reason == "bad_file"
    assert str(path) in str(refused.value)
    assert no_identity_left(tmp_path / "state")
    assert token_state(centre, A) == "pending"


def test_diemcau_enroll_by_hand(centre: Centre, service: RunningService, tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = tmp_path / "endpoint.toml"
    broken = tmp_path / "broken.toml"
    whole = centre.enrollment_file(A).read_bytes()
    broken.write_bytes(whole[:whole.index(b'token = "') + 20])  # cut inside the token
    config.write_text(blank_config(state, broken))

    def diemcau(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "diemcau", "enroll", "--config",
                               str(config), *args], capture_output=True, text=True, timeout=60)

    bad = diemcau()
    assert bad.returncode == 2 and "not valid TOML" in bad.stderr and str(broken) in bad.stderr
    assert no_identity_left(state)
    good = diemcau("--file", str(centre.enrollment_file(A)))
    assert good.returncode == 0, good.stderr
    assert f"enrolled as {A}" in good.stdout
    again = diemcau("--file", str(centre.enrollment_file(A)))
    assert again.returncode == 1 and "already enrolled" in again.stderr
    forced = diemcau("--file", str(centre.enrollment_file(A)), "--force")
    assert forced.returncode == 1 and "refused (used)" in forced.stderr
    assert load_identity(state) is not None  # a refused attempt leaves the identity alone


# ---------------------------------------------------------------- the centre is away


def test_enrollment_waits_for_the_centre_then_gets_through(centre: Centre, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    caplog.set_level(logging.WARNING, "diemcau.enroll")
    stopping = threading.Event()
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(enroll_until_done(
        centre.enrollment_file(A), tmp_path / "state", retry_min_s=0.1, retry_max_s=0.5,
        stopping=stopping)))
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while caplog.text.count("enrollment failed (unreachable)") < 3:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
        assert not result and no_identity_left(tmp_path / "state")
        running = RunningService(centre)
        try:
            worker.join(20)
        finally:
            running.stop()
    finally:
        stopping.set()
        worker.join(5)
    assert result and result[0] is not None and result[0].device_id == A  # type: ignore[attr-defined]
    assert "next try in" in caplog.text


def test_a_stop_while_waiting_for_the_centre_ends_at_once(centre: Centre, tmp_path: Path) -> None:
    stopping = threading.Event()
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(enroll_until_done(
        centre.enrollment_file(A), tmp_path / "state", retry_min_s=60, retry_max_s=600,
        stopping=stopping)))
    worker.start()
    time.sleep(0.5)
    stopping.set()
    worker.join(10)
    assert not worker.is_alive() and result == [None]


# ---------------------------------------------------------------- renewal and revocation


def test_renewal_over_mutual_tls_gives_a_new_key_and_keeps_the_keys(centre: Centre,
                                                                    service: RunningService,
                                                                    tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = enroll_once(centre.enrollment_file(A), state)
    old_key = first.key_file.read_bytes()
    old_cert = x509.load_pem_x509_certificate(first.cert_file.read_bytes())
    # A keys.update since enrollment: renewal must not undo it.
    (identity_dir(state) / "centre-keys.json").write_text(json.dumps({"k2": "x" * 43}))
    renewed = renew_once(state)
    new_cert = x509.load_pem_x509_certificate(renewed.cert_file.read_bytes())
    assert renewed.key_file.read_bytes() != old_key
    assert new_cert.serial_number != old_cert.serial_number
    assert new_cert.public_key() == serialization.load_pem_private_key(
        renewed.key_file.read_bytes(), password=None).public_key()
    assert renewed.centre_keys == {"k2": "x" * 43}
    assert stat.S_IMODE(renewed.key_file.stat().st_mode) == 0o600
    assert not list(state.glob(".identity*"))


def test_a_revoked_box_cannot_renew(centre: Centre, service: RunningService,
                                    tmp_path: Path) -> None:
    state = tmp_path / "state"
    enroll_once(centre.enrollment_file(A), state)
    revoke_device(load_ca(centre.directory), A)
    with pytest.raises(EnrollError) as refused:
        renew_once(state)
    assert refused.value.reason == "revoked"


def test_renewal_needs_a_certificate(centre: Centre, service: RunningService) -> None:
    context = ssl.create_default_context(cafile=str(centre.directory / "ca.pem"))
    conn = http.client.HTTPSConnection("127.0.0.1", centre.service_port, context=context,
                                       timeout=10)
    conn.request("POST", RENEW_PATH, body=b'{"csr_pem": "x"}')
    response = conn.getresponse()
    refused = msgspec.json.decode(response.read(), type=EnrollRefused)
    conn.close()
    assert response.status == 401 and refused.reason == "not_authenticated"


# ---------------------------------------------------------------- whatever a client sends


def test_a_bad_csr_leaves_the_token_unused(centre: Centre) -> None:
    doc = read_enrollment_file(centre.enrollment_file(A).read_bytes())
    body = msgspec.json.encode(EnrollRequest(device_id=A, token=doc.token,
                                             csr_pem="-----BEGIN CERTIFICATE REQUEST-----"))
    status, answer = enroll(centre.settings, body)
    assert status == 400
    assert msgspec.json.decode(answer, type=EnrollRefused).reason == "bad_csr"
    assert token_state(centre, A) == "pending"


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_any_bytes_are_a_request_or_a_bad_request(body: bytes) -> None:
    try:
        request = parse_request(body, EnrollRequest)
    except BadRequest as exc:
        assert str(exc)
    else:
        assert all(0 < len(v) <= 8192 for v in (request.device_id, request.token, request.csr_pem))


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=3), max_leaves=8)
FIELDS = st.fixed_dictionaries({}, optional={
    "device_id": st.sampled_from([A, A2, B, "", "centre", "c00001-r1\x00", "x" * 9000]) | JSON,
    "token": st.sampled_from(["", "dce1_x", "A" * 9000]) | JSON,
    "csr_pem": st.sampled_from(["", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"]) | JSON,
    "extra": JSON,
})


@settings(max_examples=150,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(FIELDS.map(lambda d: json.dumps(d).encode()), st.binary(max_size=200)))
def test_the_service_answers_anything_with_a_reason_and_burns_nothing(centre: Centre,
                                                                      body: bytes) -> None:
    status, answer = enroll(centre.settings, body)
    assert status in (400, 403)
    refused = msgspec.json.decode(answer, type=EnrollRefused)
    assert refused.detail
    manifest = FleetStore(centre.directory).load()
    assert all(t.used_at is None for t in manifest.tokens.values())


def test_the_service_refuses_what_is_not_an_enrollment(centre: Centre,
                                                       service: RunningService) -> None:
    context = ssl.create_default_context(cafile=str(centre.directory / "ca.pem"))

    def call(method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> int:
        conn = http.client.HTTPSConnection("127.0.0.1", centre.service_port, context=context,
                                           timeout=10)
        conn.request(method, path, body=body, headers=headers or {})
        status = conn.getresponse().status
        conn.close()
        return status

    assert call("GET", ENROLL_PATH) == 405
    assert call("POST", "/other", b"{}") == 404
    # Refused on its Content-Length, before a byte of the body is read.
    conn = http.client.HTTPSConnection("127.0.0.1", centre.service_port, context=context,
                                       timeout=10)
    conn.putrequest("POST", ENROLL_PATH)
    conn.putheader("Content-Length", "20000")
    conn.endheaders()
    assert conn.getresponse().status == 413
    conn.close()
    assert call("POST", ENROLL_PATH, b"{}") == 400
    doc = read_enrollment_file(centre.enrollment_file(A).read_bytes())
    assert token_hash(doc.token) in FleetStore(centre.directory).load().tokens
    assert token_state(centre, A) == "pending"


def test_a_centre_file_reads_with_the_box_schema(centre: Centre) -> None:
    # One definition for both sides: what `fleet import` writes, the box reads.
    doc = read_enrollment_file(centre.enrollment_file(A2).read_bytes())
    assert doc.device_id == A2 and doc.site.room == "Hội trường"
    assert doc.service == centre.service_url
    assert os.stat(centre.enrollment_file(A2)).st_mode & 0o077 == 0


def test_the_renewer_renews_when_due_and_reports_failures(centre: Centre, tmp_path: Path) -> None:
    state = tmp_path / "state"
    running = RunningService(centre)
    try:
        first = enroll_once(centre.enrollment_file(A), state)
    finally:
        running.stop()
    old_cert = first.cert_file.read_bytes()
    events: queue.Queue[CertificateStatus] = queue.Queue()
    # A clock at 90% of the certificate's life: renewal is overdue.
    late = first.not_before + 0.9 * (first.not_after - first.not_before)
    renewer = Renewer(state, first, events.put, retry_min_s=0.1, retry_max_s=0.3,
                      clock=lambda: late)
    renewer.start()
    try:
        assert events.get(timeout=10) == CertificateStatus(first.not_before, first.not_after)
        failed = events.get(timeout=10)  # the service is down
        assert not failed.renewed and "cannot reach" in failed.last_error
        running = RunningService(centre)
        try:
            while not (status := events.get(timeout=20)).renewed:
                pass
        finally:
            running.stop()
    finally:
        renewer.stop()
    renewed = load_identity(state)
    assert renewed is not None and status.last_error == ""
    assert renewed.cert_file.read_bytes() != old_cert and status.not_after == renewed.not_after


def test_a_damaged_identity_is_named_not_a_traceback(centre: Centre, service: RunningService,
                                                     tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = tmp_path / "endpoint.toml"
    config.write_text(blank_config(state, centre.enrollment_file(A)))
    enroll_once(centre.enrollment_file(A), state)
    (identity_dir(state) / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\ngarbage\n")
    for command in ("check", "run"):
        result = subprocess.run([sys.executable, "-m", "diemcau", command, "--config",
                                 str(config)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert "the stored identity is damaged" in result.stderr
        assert "Traceback" not in result.stderr


def test_a_box_whose_clock_disagrees_says_so(centre: Centre, tmp_path: Path) -> None:
    # A service certificate that starts in two days looks, to the box, like a box clock
    # two days behind: what a Pi without a real-time clock sees before NTP answers.
    import datetime as dt

    from diemcau_centre.ca import issue_server_cert

    issue_server_cert(load_ca(centre.directory), ["127.0.0.1"], force=True,
                      now=dt.datetime.now(dt.UTC) + dt.timedelta(days=2))
    running = RunningService(centre)
    try:
        with pytest.raises(EnrollError) as refused:
            enroll_once(centre.enrollment_file(A), tmp_path / "state")
    finally:
        running.stop()
    assert refused.value.reason == "clock" and "is the clock set?" in str(refused.value)
    assert token_state(centre, A) == "pending"



@settings(max_examples=300)
@given(st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_any_bytes_on_the_card_are_an_enrollment_file_or_a_named_problem(data: bytes) -> None:
    try:
        doc = read_enrollment_file(data, "/boot/firmware/diemcau-enroll.toml")
    except EnrollmentFileError as exc:
        assert str(exc).startswith("/boot/firmware/diemcau-enroll.toml: ")
    else:
        assert doc.service.startswith("https://") and "-----END CERTIFICATE-----" in doc.ca_pem


@settings(max_examples=200,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=4000), flip=st.integers(min_value=0, max_value=4000))
def test_a_real_file_cut_or_flipped_anywhere_is_read_or_refused(centre: Centre, cut: int,
                                                                 flip: int) -> None:
    good = centre.enrollment_file(A).read_bytes()
    damaged = bytearray(good[: min(cut, len(good))] if cut < len(good) else good)
    if damaged:
        damaged[flip % len(damaged)] ^= 0x5A
    try:
        doc = read_enrollment_file(bytes(damaged))
    except EnrollmentFileError:
        return
    # What survives a flipped byte is still a whole document with every field.
    assert doc.device_id and doc.token and doc.site.name


def test_too_many_connections_are_turned_away_then_served(centre: Centre,
                                                          service: RunningService,
                                                          tmp_path: Path) -> None:
    import socket

    service.server._slots = threading.BoundedSemaphore(2)  # as if 64 boxes were mid-request
    silent = [socket.create_connection(("127.0.0.1", centre.service_port)) for _ in range(2)]
    try:
        deadline = time.monotonic() + 10
        while service.server._slots.acquire(blocking=False):  # until both slots are taken
            service.server._slots.release()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with pytest.raises(EnrollError) as away:
            enroll_once(centre.enrollment_file(A), tmp_path / "state")
        assert away.value.reason == "unreachable" and service.server.turned_away >= 1
    finally:
        for sock in silent:
            sock.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            enroll_once(centre.enrollment_file(A), tmp_path / "state")
            break
        except EnrollError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert token_state(centre, A) == "used"
