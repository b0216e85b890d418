"""The centre's own commands, when the broker is killed inside its save window.

The production broker lines save every ``BROKER_SAVE_S``: a command the broker
acknowledged to the centre and queued for a box that is offline is lost when
the broker is killed (SIGKILL) before its next save. Each test waits for one of
Mosquitto's saves, sends, kills the broker well before the next save can begin,
starts it again on the same port from its persistence file, and brings the box
back; the centre must still get every answer:

- ``diemcau-centre send`` to one box: it waits for its connection to come back,
  sends the same token again, and prints the box's final answer;
- the web console's broadcast to a province: its service sends the command
  again, same token, to the boxes that have not answered (a real box, offline
  when it was sent; simulated boxes answered at once), notes it in the audit
  log, and the roll-call ends with every box accounted for.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest

from diemcau.config import Mqtt, Tls
from diemcau_centre.mqtt import Session
from diemcau_centre.send import parse_target, send
from diemcau_centre.web.service import CONSOLE_ACTOR, CentreService
from diemcau_centre.web.store import BoxFilter, FleetDb, Operator, Scope
from tests.harness.box import CentreKey, start_box
from tests.harness.broker import Broker
from tests.harness.console import manifest_of, new_client_id
from tests.harness.observer import Observer
from tests.harness.simulator import Fleet, FleetSettings, devices
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.e2e

DEV = "c00001-r1"  # the real box: province p01
SIMULATED = 20  # simulated boxes of p01, online throughout
# Saves come at least a second apart: the crash must come before the next one begins.
CRASH_WITHIN_S = 0.8


def centre_mqtt(broker: Broker) -> Mqtt:
    # Short keepalive and reconnect delays: the test waits for paho's own reconnect.
    return Mqtt(host=broker.host, port=broker.port, tls=Tls(enabled=False), keepalive_s=5,
                reconnect_min_s=0.5, reconnect_max_s=1.0)


def console_and_fleet(broker: Broker, centre: CentreKey, tmp_path: Path
                      ) -> tuple[FleetDb, Operator, FleetSettings, CentreService]:
    """A console for province p01 (the real box and SIMULATED simulated ones) and its fleet."""
    simulated = devices(SIMULATED, provinces=1, start=2)
    db = FleetDb(f"sqlite:///{tmp_path / 'console.db'}")
    db.load_manifest(manifest_of({DEV: "p01"} | {dev: "p01" for dev, _ in simulated}))
    admin = db.add_operator("admin", "mat-khau-thu-nghiem", "admin")
    settings = FleetSettings(broker.host, broker.port, simulated,
                             {centre.kid: centre.public_text}, reconnect_min_s=0.2,
                             reconnect_max_s=1.0)
    service = CentreService(db, centre_mqtt(broker), new_client_id(), key=centre.private,
                            kid=centre.kid, batch_s=0.05, sweep_s=0.2)
    return db, admin, settings, service


def test_a_send_to_one_box_gets_its_answer_though_the_broker_lost_the_command(
        make_box, observer: Observer, broker: Broker, centre: CentreKey,
        tmp_path: Path) -> None:
    box = start_box(make_box, observer, tmp_path)
    box.stop()  # offline, its session kept: the broker queues the command for it
    broker.wait_for_save()  # the box's session, without the command, is on disk

    err, out = io.StringIO(), io.StringIO()
    result: list[int] = []
    with Session(centre_mqtt(broker), "centre-send") as session:
        session.open()
        broker.wait_for_save()
        saved_at = time.monotonic()
        run = threading.Thread(target=lambda: result.append(send(
            session, centre.private, centre.kid, parse_target(DEV), "audio.volume",
            {"percent": 37}, timeout_s=30, out=out, err=err)))
        run.start()
        crashed_after = broker.crash_once(  # once the broker has acknowledged it
            lambda: "sent audio.volume" in err.getvalue(), saved_at, CRASH_WITHIN_S)
        box.start()
        run.join(40)
    assert not run.is_alive()
    print(f"\nbroker killed {crashed_after:.2f} s after a save, right after the centre's "
          f"PUBACK\n{err.getvalue()}{out.getvalue()}")
    assert crashed_after < CRASH_WITHIN_S
    assert "sent the command again, same id, to c00001-r1" in err.getvalue()
    assert result == [0], out.getvalue() + err.getvalue()
    # The final answer, first-hand or as a duplicate of the first result.
    assert "succeeded" in out.getvalue()


def test_a_console_broadcast_accounts_for_every_box_though_the_broker_lost_it(
        make_box, observer: Observer, broker: Broker, centre: CentreKey,
        tmp_path: Path) -> None:
    box = start_box(make_box, observer, tmp_path)
    box.stop()  # offline, its session kept
    db, admin, settings, service = console_and_fleet(broker, centre, tmp_path)
    province = BoxFilter(province="p01")
    with Fleet(settings, processes=1) as fleet:
        service.start()
        try:
            wait_until(lambda: db.boxes_page(Scope.everything(), BoxFilter(state="ready")
                                             ).total == SIMULATED)
            assert len(db.devices(Scope.everything(), province)) == SIMULATED + 1
            broker.wait_for_save()  # every session, without the command, is on disk
            saved_at = time.monotonic()
            jti = service.broadcast(admin, "meeting.invite",
                                    {"meeting_id": "bao-so-3", "title": "Họp khẩn"}, province)
            # The simulated boxes answer at once; the real one is offline.
            wait_until(lambda: db.rollcall(Scope.everything(), jti).report.counts  # type: ignore[union-attr]
                       .succeeded == SIMULATED, timeout_s=CRASH_WITHIN_S)
            crashed_after = time.monotonic() - saved_at
            broker.crash()
            broker.start()
            box.start()
            roll = wait_until(lambda: (lambda rc: rc if rc and rc.complete else None)(
                db.rollcall(Scope.everything(), jti)), timeout_s=40)
            commands = fleet.stats().commands
        finally:
            service.stop()
    resends = [a for a in db.audit_list() if a["action"] == "resend"]
    counts = roll.report.counts  # type: ignore[attr-defined]
    print(f"\nbroker killed {crashed_after:.2f} s after a save, right after the console's "
          f"PUBACK; roll-call: {counts}; sent again: {service.sent_again} message(s); the "
          f"simulated boxes got {commands} command(s)\n"
          + "\n".join(a["detail"] for a in resends))
    assert crashed_after < CRASH_WITHIN_S
    assert (counts.expected, counts.succeeded, counts.silent) == (SIMULATED + 1,
                                                                  SIMULATED + 1, 0)
    assert resends and all(a["operator"] == CONSOLE_ACTOR for a in resends)
    assert jti in resends[0]["detail"]
    # Only the box that had not answered got it again, the first time from the console.
    assert service.sent_again == 1 and commands == SIMULATED
    assert "to 1 box(es)" in resends[0]["detail"]
    assert DEV in roll.report.buckets["succeeded"]  # type: ignore[attr-defined]
    db.close()


def test_an_answer_given_while_the_console_was_away_comes_again(
        make_box, observer: Observer, broker: Broker, centre: CentreKey,
        tmp_path: Path) -> None:
    """The broker saved the command this time and delivers it to the box when it is back;
    the box may answer before the console has subscribed again (a clean session misses
    it). The console sends it again to the box without a final answer, and the box answers
    the repeat with its result."""
    box = start_box(make_box, observer, tmp_path)
    box.stop()
    db, admin, settings, service = console_and_fleet(broker, centre, tmp_path)
    with Fleet(settings, processes=1) as fleet:
        service.start()
        try:
            jti = service.broadcast(admin, "meeting.invite", {"meeting_id": "bao-so-4"},
                                    BoxFilter(province="p01"))
            wait_until(lambda: db.rollcall(Scope.everything(), jti).report.counts  # type: ignore[union-attr]
                       .succeeded == SIMULATED)
            broker.wait_for_save()  # the command, queued for the offline box, is on disk
            broker.crash()
            box.start()  # trying to connect while the broker is down
            broker.start()
            roll = wait_until(lambda: (lambda rc: rc if rc and rc.complete else None)(
                db.rollcall(Scope.everything(), jti)), timeout_s=40)
            commands = fleet.stats().commands
            still_open = service.open_commands()
        finally:
            service.stop()
    counts = roll.report.counts  # type: ignore[attr-defined]
    replies = [(r.status, r.first_status) for r in observer.replies(DEV)]
    print(f"\nroll-call after the crash: {counts}; sent again: {service.sent_again}; the box "
          f"answered {replies}")
    assert (counts.expected, counts.succeeded) == (SIMULATED + 1, SIMULATED + 1)
    assert DEV in roll.report.buckets["succeeded"]  # type: ignore[attr-defined]
    assert service.sent_again == 1 and commands == SIMULATED  # only the unfinished box
    assert still_open == [jti]  # kept until it expires
    db.close()
