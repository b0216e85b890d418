"""A real Mosquitto on loopback, for the tests, the demo and the benchmarks.

Started on a free port with a generated configuration: anonymous clients
allowed, optionally a TLS listener with a throwaway CA, and production's own
persistence and queue settings (``durability_lines`` of ``diemcau-centre
broker-config``, for a fleet of ``boxes``), so what a test sees lost or kept
is what the fleet's broker would lose or keep.

    broker = Broker(tmp_path / "broker", tls=True)
    broker.start()
    ...
    broker.restart()   # SIGTERM, then start again on the same port
    broker.crash()     # SIGKILL: no save on the way out
    broker.wait_for_save()  # the next timed save of its database has happened
    broker.stop()

``config_text`` runs a configuration made elsewhere (``diemcau-centre
broker-config``) instead; it must listen on ``port`` on 127.0.0.1.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from diemcau_centre.broker_config import durability_lines

from .process import stop_process

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
SAVE_LINE = "Saving in-memory database"  # Mosquitto's log line, at each save


# Below the kernel's ephemeral range (32768-60999 by default): a port the kernel
# hands out for outgoing connections could be taken, while a server of ours is
# stopped, by some other process's client, and the server could not start again
# on it (seen: "Address already in use" restarting Mosquitto).
SERVER_PORTS = range(20000, 32768)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port (TCP, or UDP with ``socket.SOCK_DGRAM``) nobody is bound to now, outside the
    range outgoing connections take theirs from."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.choice(SERVER_PORTS)
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {SERVER_PORTS}")


def wait_for_port(port: int, timeout_s: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout_s} s")


def make_test_ca(directory: Path, hostname: str = "localhost") -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for ``hostname`` and 127.0.0.1.

    Returns (ca_file, server_cert, server_key).
    """
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("diemcau test CA"))
        .issuer_name(name("diemcau test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(hostname))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = directory / "ca.pem"
    cert_file = directory / "server.pem"
    key_file = directory / "server.key"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return ca_file, cert_file, key_file


class Broker:
    """One Mosquitto process with its own directory, port and log."""

    def __init__(self, workdir: Path, *, tls: bool = False, port: int | None = None,
                 config_text: str | None = None, boxes: int = 1) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.tls = tls
        self.boxes = boxes
        self.ca_file: Path | None = None
        self.log_file = self.workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._conf = self.workdir / "mosquitto.conf"
        if config_text is not None:
            self._conf.write_text(config_text)
        else:
            self._write_config()

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            f"persistence_location {self.workdir}/",
            *durability_lines(self.boxes),
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            # Whoever runs the tests owns the files: never drop privileges
            # (as root, Mosquitto would become `mosquitto` and lose its keys).
            f"user {_current_user()}",
            "set_tcp_nodelay true",
        ]
        if self.tls:
            ca, cert, key = make_test_ca(self.workdir / "tls")
            self.ca_file = ca
            lines += [f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"]
        self._conf.write_text("\n".join(lines) + "\n")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        self._proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self._conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start; log:\n{self.log_text()}") from None

    def stop(self) -> None:
        """A clean stop: Mosquitto saves its sessions and retained messages."""
        if self._proc is None:
            return
        stop_process(self._proc)
        if self._proc.stderr:
            self._proc.stderr.close()
        self._proc = None

    def crash(self) -> None:
        """SIGKILL, as a power cut or the kernel's OOM killer: Mosquitto saves nothing."""
        if self._proc is None:
            return
        stop_process(self._proc, signal.SIGKILL)
        if self._proc.stderr:
            self._proc.stderr.close()
        self._proc = None

    def crash_once(self, acknowledged: Callable[[], bool], saved_at: float,
                   within_s: float) -> float:
        """SIGKILL as soon as ``acknowledged()`` (what the test sent has its PUBACK), inside
        the save window that began at ``saved_at`` (monotonic); start again. Returns how
        long after the save it died (the test fails if not within ``within_s``)."""
        while not acknowledged():
            assert time.monotonic() - saved_at < within_s, "not acknowledged inside the window"
            time.sleep(0.005)
        self.crash()
        crashed_after = time.monotonic() - saved_at
        self.start()
        return crashed_after

    def restart(self, down_s: float = 0.0, *, crash: bool = False) -> None:
        """Stop (SIGTERM, or SIGKILL with ``crash``), wait ``down_s``, start again."""
        if crash:
            self.crash()
        else:
            self.stop()
        if down_s:
            time.sleep(down_s)
        self.start()

    def saves(self) -> int:
        """How many times Mosquitto has saved its database (it logs each save)."""
        return self.log_text().count(SAVE_LINE)

    def wait_for_save(self, timeout_s: float = 10.0) -> None:
        """Until Mosquitto has saved its database anew after this call (every
        ``BROKER_SAVE_S`` or so): what it acknowledged before the call is on disk.

        A save is logged as it begins and is written to ``mosquitto.db.new``, then
        renamed: done when the log has one more save and the file is newer than the call.
        """
        done, since = self.saves(), time.time()
        deadline = time.monotonic() + timeout_s
        while not (self.saves() > done and self._saved_since(since)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"mosquitto did not save within {timeout_s} s")
            time.sleep(0.02)

    def _saved_since(self, since: float) -> bool:
        where = self.workdir
        for line in self._conf.read_text().splitlines():
            if line.startswith("persistence_location "):
                where = Path(line.split(None, 1)[1])
        db = where / "mosquitto.db"
        try:
            return db.stat().st_mtime >= since and not (where / "mosquitto.db.new").exists()
        except FileNotFoundError:
            return False

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name
