"""The composition root: build the adapters from the configuration, run the supervisor.

Choosing a real part or its development stand-in is configuration
(``media.camera``, ``media.microphone``), never an ``if`` further down.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

from .adapters.health import HealthProbe
from .adapters.mqtt import MqttLink
from .adapters.outbox import Outbox
from .adapters.platform import board_model, board_serial
from .adapters.releases import ReleaseStore
from .adapters.service import ServiceManager
from .adapters.statefile import Counters
from .config import Config
from .core.events import StopRequested
from .protocol import ReplayCache
from .supervisor import Adapters, Supervisor

log = logging.getLogger("diemcau")


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
        releases=ReleaseStore.from_config(cfg),
    )
    return Supervisor(cfg, adapters)


def run(cfg: Config) -> int:
    supervisor = build(cfg)

    def on_signal(signum: int, _frame: object) -> None:
        supervisor.post(StopRequested(signal.Signals(signum).name))

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("diemcau %s starting as %s (%s)", _version(), cfg.device.id, cfg.site.name)
    supervisor.run()
    log.info("stopped (exit code %d)", supervisor.exit_code)
    return supervisor.exit_code


def _version() -> str:
    from . import __version__

    return __version__
