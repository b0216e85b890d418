"""A box as the tests (and the demo) run it: the real ``diemcau run`` process.

Writes a configuration pointing at a test broker, with simulated hardware
(test pattern, the ALSA ``file`` microphone), and starts the console script
in a subprocess so that ``kill -9`` and SIGTERM are real.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from diemcau.protocol import (
    device_topic,
    generate_signing_key,
    key_id,
    public_key_to_text,
    sign_command,
)

from .alsa import make_microphone
from .broker import Broker
from .process import stop_process


class CentreKey:
    """The centre's command-signing key, made fresh for a test."""

    def __init__(self, private: Ed25519PrivateKey | None = None) -> None:
        self.private = private or generate_signing_key()
        self.kid = key_id(self.private.public_key())
        self.public_text = public_key_to_text(self.private.public_key())

    @classmethod
    def from_file(cls, path: Path) -> CentreKey:
        """The key ``diemcau-centre keys init`` wrote."""
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert isinstance(key, Ed25519PrivateKey)
        return cls(key)

    def save(self, path: Path) -> Path:
        """Write the private key as ``keys init`` does (PKCS8 PEM, mode 0600) for a console."""
        path.write_bytes(self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        path.chmod(0o600)
        return path

    def sign(self, aud: str, cmd: str, args: dict | None = None, **kw: object) -> str:
        return sign_command(self.private, self.kid, aud=aud, cmd=cmd, args=args, **kw)  # type: ignore[arg-type]


def offline_config(state_dir: Path, centre: CentreKey, extra: str = "") -> str:
    """A box composed in-process that never connects (port 1) and keeps quiet (no voice).

    For tests that drive the supervisor's state directly and look at what it
    shows or logs; ``extra`` adds sections.
    """
    return f"""
[device]
id = "c00001-r1"
state_dir = "{state_dir}"

[site]
name = "UBND xã Thử Nghiệm"
province = "p01"
district = "d001"
commune = "c00001"

[mqtt]
host = "127.0.0.1"
port = 1

[commands]
media_hosts = ["127.0.0.1"]

[commands.centre_keys]
"{centre.kid}" = "{centre.public_text}"

[voice]
enabled = false
{extra}"""


def box_config(
    *,
    device_id: str,
    broker: Broker,
    state_dir: Path,
    keys: dict[str, str],
    microphone: str = "diemcau_mic",
    health_interval_s: float = 30.0,
    programme_lost_s: float = 10.0,
    will_delay_s: int = 1,
    voice: str = "enabled = false",
    connect_timeout_ms: int = 1000,
    extra: str = "",
    mqtt_address: tuple[str, int] | None = None,
    allowed_schemes: tuple[str, ...] = ("srt",),
    srt_passphrase: str = "",
    fallback_hosts: tuple[str, ...] = (),
    mqtt_password: str = "",
) -> str:
    # fallback_hosts: more brokers of a cluster ("host:port"), tried after the first.
    # mqtt_address: where the box finds the broker when that is not where the
    # tests do (a box in a virtual machine reaches it through a forwarded port).
    host, port = mqtt_address or ("127.0.0.1", broker.port)
    tls = (f'enabled = true\nca_file = "{broker.ca_file}"' if broker.tls else "enabled = false")
    key_lines = "\n".join(f'"{kid}" = "{text}"' for kid, text in keys.items())
    schemes = ", ".join(f'"{scheme}"' for scheme in allowed_schemes)
    fallbacks = ", ".join(f'"{address}"' for address in fallback_hosts)
    return f"""\
config_version = "test-1"

[device]
id = "{device_id}"
state_dir = "{state_dir}"

[site]
name = "UBND xã Thử Nghiệm"
province = "p01"
district = "d001"
commune = "c00001"
room = "Phòng họp 1"

[mqtt]
host = "{host}"
port = {port}
fallback_hosts = [{fallbacks}]
password = "{mqtt_password}"
keepalive_s = 5
will_delay_s = {will_delay_s}
reconnect_min_s = 0.2
reconnect_max_s = 2.0
# One box, or a few: no storm to spread, and the tests wait for it to be back.
reconnect_spread_s = 0.5

[mqtt.tls]
{tls}

[commands]
allowed_schemes = [{schemes}]
media_hosts = ["127.0.0.1", "localhost"]

[commands.centre_keys]
{key_lines}

[media]
microphone = "{microphone}"
srt_latency_ms = 120
connect_timeout_ms = {connect_timeout_ms}
reconnect_min_s = 0.3
reconnect_max_s = 2.0
srt_passphrase = "{srt_passphrase}"

[health]
interval_s = {health_interval_s}
programme_lost_s = {programme_lost_s}
clock_check = "none"

[voice]
{voice}

[log]
level = "debug"
{extra}"""


# A status light on gpiozero's MockFactory, as the room tests read it back pin by pin.
RGB_PINS = (5, 6, 13)
MOCK_RGB_PANEL = f"""
[panel]
gpio = "mock"

[panel.light]
kind = "rgb"
red_pin = {RGB_PINS[0]}
green_pin = {RGB_PINS[1]}
blue_pin = {RGB_PINS[2]}
"""


class Box:
    def __init__(
        self,
        workdir: Path,
        broker: Broker,
        centre: CentreKey,
        *,
        device_id: str = "c00001-r1",
        env: dict[str, str] | None = None,
        **config: object,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.device_id = device_id
        self.state_dir = self.workdir / "state"
        self.config_file = self.workdir / "endpoint.toml"
        self.log_file = self.workdir / "box.log"
        self.config_file.write_text(
            box_config(device_id=device_id, broker=broker, state_dir=self.state_dir,
                       keys={centre.kid: centre.public_text}, **config)  # type: ignore[arg-type]
        )
        self.env = {**os.environ, **(env or {})}
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = None
        self.started_at = 0.0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        self._log = open(self.log_file, "ab")  # noqa: SIM115 - closed in stop()
        self.started_at = time.time()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "diemcau", "run", "--config", str(self.config_file)],
            stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
        )

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, as systemd does; returns the exit code."""
        if self._proc is None:
            return None
        stop_process(self._proc, timeout_s=timeout_s)
        return self._finish()

    def press(self) -> None:
        """A short press of the join button, for a box with ``panel.gpio = "mock"``.

        SIGUSR1 drives gpiozero's mock pin (see ``diemcau.app``); on any other box
        the signal is not handled and would end it.
        """
        assert self._proc is not None and self._proc.poll() is None, "the box is not running"
        assert 'gpio = "mock"' in self.config_file.read_text(), "the box has no mock panel"
        self._proc.send_signal(signal.SIGUSR1)

    def hold(self) -> None:
        """Press the join button and keep it down until :meth:`hold` again (SIGUSR2).

        Only for a box with ``panel.gpio = "mock"``, as :meth:`press`.
        """
        assert self._proc is not None and self._proc.poll() is None, "the box is not running"
        assert 'gpio = "mock"' in self.config_file.read_text(), "the box has no mock panel"
        self._proc.send_signal(signal.SIGUSR2)

    def wait(self, timeout_s: float) -> int:
        """Wait for the box to end by itself; returns its exit code."""
        assert self._proc is not None, "the box was not started"
        self._proc.wait(timeout=timeout_s)
        code = self._finish()
        assert code is not None
        return code

    def kill(self) -> None:
        """kill -9: no clean stop, the broker must publish the will."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._finish()

    def _finish(self) -> int | None:
        code = self._proc.returncode if self._proc else None
        self._proc = None
        if self._log:
            self._log.close()
            self._log = None
        return code

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def start_box(make_box, observer, tmp_path: Path, **config: object) -> Box:  # noqa: ANN001
    """A box (the ``make_box`` fixture's) with a real ALSA file-plugin microphone, started
    and born: its ``state`` says ready."""
    mic = make_microphone(tmp_path / "mic", seconds=60)
    box = make_box(env=mic.env, microphone=mic.pcm, **config)
    box.start()
    observer.wait_for(lambda m: m.topic == device_topic(box.device_id, "state")
                      and b"ready" in m.payload)
    return box
