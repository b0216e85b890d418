"""The composition root: build the adapters from the configuration, run the supervisor.

Choosing a real part or its development stand-in is configuration
(``media.camera``, ``media.microphone``), never an ``if`` further down.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from .adapters.health import HealthProbe
from .adapters.mqtt import MqttLink
from .adapters.outbox import Outbox
from .adapters.platform import board_model, board_serial
from .adapters.service import ServiceManager
from .adapters.statefile import Counters
from .config import Config, Enrollment
from .core.events import EnrollmentStopped, StopRequested
from .protocol import ReplayCache
from .supervisor import Adapters, Supervisor

if TYPE_CHECKING:
    from .adapters.enroll import Identity

log = logging.getLogger("diemcau")


def obtain_identity(state_dir: Path, enrollment: Enrollment) -> Identity | None:
    """The box's stored identity; else, if an enrollment file is there, enroll until done.

    None: no identity and no enrollment file (a box configured by hand).
    EnrollmentStopped if SIGTERM or SIGINT comes first. Meanwhile systemd
    hears that the box is alive: enrolling may take days.
    """
    from .adapters.enroll import enroll_until_done, load_identity

    identity = load_identity(state_dir)
    enroll_file = Path(enrollment.file)
    if identity is not None or not enroll_file.exists():
        return identity
    stopping = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stopping.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    service = ServiceManager()
    service.ready("enrolling")
    log.info("no identity yet: enrolling with %s", enroll_file)
    try:
        identity = enroll_until_done(enroll_file, state_dir, retry_min_s=enrollment.retry_min_s,
                                     retry_max_s=enrollment.retry_max_s, stopping=stopping,
                                     alive=service.alive)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if identity is None:
        raise EnrollmentStopped
    return identity


def build(cfg: Config) -> Supervisor:
    state = Path(cfg.device.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    counters = Counters(state / "counters.json")

    def make_link(post):  # type: ignore[no-untyped-def]
        return MqttLink(cfg.mqtt, cfg.device.id, cfg.groups, counters, post)

    def make_media(request, post):  # type: ignore[no-untyped-def]
        from .adapters.media import MediaSession  # PyAV loads only when a meeting starts

        return MediaSession(cfg.media, request, post, device_id=cfg.device.id)

    adapters = Adapters(
        make_link=make_link,
        make_media=make_media,
        # Only timesyncd's flag file: asking timedatectl could stall the loop for a second.
        health=HealthProbe(str(state), cfg.health.clock_check, timedatectl=None),
        outbox=Outbox(state / "outbox.sqlite", cfg.outbox.max_messages),
        replay=ReplayCache(state / "replay.sqlite"),
        counters=counters,
        model=board_model(cfg.device.model),
        serial=board_serial(cfg.device.serial),
        service=ServiceManager(),
    )
    return Supervisor(cfg, adapters)


def run(cfg: Config, identity: Identity | None = None) -> int:
    supervisor = build(cfg)
    renewer = None
    if identity is not None:
        from .adapters.enroll import Renewer

        renewer = Renewer(Path(cfg.device.state_dir), identity, supervisor.post,
                          retry_min_s=cfg.enrollment.retry_min_s,
                          retry_max_s=cfg.enrollment.retry_max_s)

    def on_signal(signum: int, _frame: object) -> None:
        supervisor.post(StopRequested(signal.Signals(signum).name))

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("diemcau %s starting as %s (%s)", _version(), cfg.device.id, cfg.site.name)
    if renewer is not None:
        renewer.start()
    try:
        supervisor.run()
    finally:
        if renewer is not None:
            renewer.stop()
    log.info("stopped")
    return 0


def _version() -> str:
    from . import __version__

    return __version__
