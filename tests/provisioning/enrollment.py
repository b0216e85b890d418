"""A centre ready to enroll boxes: CA, broker and centre certificates, the command key,
a fleet imported with the service's real loopback address, and the service itself."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from diemcau.protocol import key_id, public_key_to_text
from diemcau.protocol.enrollment import Broker as BrokerAddress
from diemcau_centre.ca import init_ca, issue_client_cert, issue_server_cert
from diemcau_centre.enroll_service import EnrollServer, ServiceSettings, make_server
from diemcau_centre.keys import init_keys
from diemcau_centre.manifest import ENROLLMENT_DIR, import_sites
from tests.harness.box import CentreKey
from tests.harness.broker import free_port

from .conftest import SITES


@dataclass
class Centre:
    directory: Path
    service_port: int
    signing: CentreKey
    settings: ServiceSettings

    def enrollment_file(self, device_id: str) -> Path:
        return self.directory / ENROLLMENT_DIR / f"{device_id}.toml"

    @property
    def service_url(self) -> str:
        return f"https://127.0.0.1:{self.service_port}"


def make_centre(directory: Path, broker_port: int = 8883) -> Centre:
    """The runbook's first steps, done through the library (the CLI test does them by hand)."""
    ca = init_ca(directory)
    issue_server_cert(ca, ["127.0.0.1", "localhost"])
    issue_client_cert(ca, "centre")
    pair = init_keys(directory)
    signing = CentreKey.from_file(pair.private_file)
    port = free_port()
    import_sites(directory, SITES, "sites.csv", service=f"https://127.0.0.1:{port}")
    settings = ServiceSettings(directory, BrokerAddress(host="127.0.0.1", port=broker_port),
                               {key_id(pair.public_key): public_key_to_text(pair.public_key)})
    return Centre(directory, port, signing, settings)


class RunningService:
    """The enrollment service in a thread of the test process, on the centre's port."""

    def __init__(self, centre: Centre) -> None:
        self.server: EnrollServer = make_server(
            centre.settings, ("127.0.0.1", centre.service_port),
            centre.directory / "broker.pem", centre.directory / "broker.key")
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)
