"""The roll-call at fleet scale: 2,000 simulated boxes on a real Mosquitto (production's
persistence and queues), 5 % offline, 1 % failing; the real ``diemcau-centre`` console."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from diemcau.protocol import public_key_to_text
from diemcau_centre.keys import load_signing_key
from diemcau_centre.runs import RunStore
from tests.harness.broker import Broker
from tests.harness.simulator import Fleet, FleetSettings, devices, write_manifest

BOXES = 2000


def cli(*argv: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "diemcau_centre", *argv], capture_output=True,
                          text=True, timeout=timeout_s, check=False)


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_a_join_to_2000_boxes_accounts_for_every_box(tmp_path: Path) -> None:
    boxes = devices(BOXES)
    write_manifest(tmp_path / "fleet", boxes)
    assert cli("keys", "init", "--dir", str(tmp_path / "centre")).returncode == 0
    key = load_signing_key(tmp_path / "centre" / "centre-signing.key")
    from diemcau.protocol import key_id

    keys = {key_id(key.public_key()): public_key_to_text(key.public_key())}
    with Broker(tmp_path / "broker", boxes=BOXES) as broker:
        config = tmp_path / "centre" / "centre.toml"
        config.write_text(f'client_id = "centre-test"\nfleet_dir = "{tmp_path / "fleet"}"\n'
                          f'state_dir = "{tmp_path / "state"}"\n[mqtt]\nhost = "127.0.0.1"\n'
                          f'port = {broker.port}\n[mqtt.tls]\nenabled = false\n'
                          '[signing]\nkey_file = "centre-signing.key"\n')
        settings = FleetSettings(broker.host, broker.port, boxes, keys, offline=0.05,
                                 failing=0.01, seed=7, join_s=0.3)
        with Fleet(settings, processes=2) as fleet:
            result = cli("send", "group:all", "meeting.join", "--arg", "meeting_id=bao-so-3",
                         "--arg", "publish=srt://127.0.0.1:9000", "--timeout", "120",
                         "--no-wait-offline", "--json-report", "--config", str(config))
            report = json.loads(result.stdout)
            buckets = {name: set(devs) for name, devs in report["buckets"].items()}
            everyone = {dev for dev, _ in boxes}
            # Every expected box in the report, in exactly one bucket.
            assert sum(len(devs) for devs in buckets.values()) == BOXES
            assert set().union(*buckets.values()) == everyone
            assert buckets["silent"] == fleet.offline and len(fleet.offline) == 100
            assert buckets["failed"] == fleet.failing and len(fleet.failing) == 20
            assert buckets["succeeded"] == everyone - fleet.offline - fleet.failing
            assert buckets["acknowledged"] == set()
            # The silent are offline since their will, which the broker published.
            assert {s["why"] for s in report["silent"]} == {"offline"}
            assert {s["state"] for s in report["silent"]} == {"lost"}
            assert [f["detail"] for f in report["failures"]] == [
                "simulated: cannot reach the media server"]
            assert sum(p["expected"] for p in report["provinces"]) == BOXES
            assert result.returncode == 1  # not everyone joined
            assert "2000 expected" in result.stderr

            record = RunStore(tmp_path / "state").load("last")
            assert set(record.expected) == everyone
            assert set(record.answers) == everyone - fleet.offline
