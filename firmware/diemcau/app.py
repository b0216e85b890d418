"""The composition root: build the adapters from the configuration, run the supervisor.

Choosing a real part or its development stand-in is configuration
(``media.camera``, ``media.microphone``), never an ``if`` further down.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from .adapters.health import HealthProbe
from .adapters.ledger import FILE_NAME as LEDGER_FILE
from .adapters.ledger import Ledger
from .adapters.mqtt import MqttLink
from .adapters.outbox import Outbox
from .adapters.platform import board_model, board_serial
from .adapters.releases import ReleaseStore
from .adapters.service import ServiceManager
from .adapters.statefile import Counters
from .config import Config, Enrollment, Panel
from .core.button import PressTiming
from .core.events import EnrollmentStopped, PromptSpoken, StopRequested
from .protocol import ReplayCache, RoomSound
from .shared import remove_stray_temp_files
from .supervisor import EXIT_FACTORY_RESET, Adapters, Supervisor

if TYPE_CHECKING:
    from .adapters.enroll import Identity
    from .media.process import Spare

REFERENCE_SOCKET = "farend.sock"  # what the speaker plays, for the microphone's echo canceller
SPARE_AFTER_S = 2.0  # after start: the spare media process starts once the box is online

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


def build(cfg: Config, *, pin_factory: object = None, spare: Spare | None = None) -> Supervisor:
    """The supervisor and its adapters; ``pin_factory`` (gpiozero) replaces the configured one.

    ``spare``: a media process started ahead, taken by the next join.
    """
    state = Path(cfg.device.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    strays = remove_stray_temp_files(state)
    if strays:
        log.info("removed %d unfinished temporary file(s) from the state directory", strays)
    counters = Counters(state / "counters.json")  # the link's session number
    ledger = Ledger(state / LEDGER_FILE)
    outbox = Outbox(ledger.db, cfg.outbox.max_messages)
    replay = ReplayCache(ledger.db)
    ledger.adopt(state)  # an older release's outbox, replay cache, invitation, event seq

    def make_link(post):  # type: ignore[no-untyped-def]
        return MqttLink(cfg.mqtt, cfg.device.id, cfg.groups, counters, post)

    sound, microphone, speaker = room_sound(cfg)
    reference = str(state / REFERENCE_SOCKET) if sound.echo_canceller in ("speex", "webrtc") else ""
    media_cfg = msgspec.structs.replace(cfg.media, microphone=microphone)

    def make_media(request, post):  # type: ignore[no-untyped-def]
        # PyAV, FFmpeg and x264 load in a child process for the meeting, never in this one.
        from .media.process import MediaProcess

        return MediaProcess(media_cfg, request, post, device_id=cfg.device.id,
                            log_level=cfg.log.level, spare=spare,
                            echo_canceller=sound.echo_canceller, reference_socket=reference)

    make_screen = None
    if cfg.screen.enabled:
        def make_screen(post):  # type: ignore[no-untyped-def]
            # libmpv, Pillow and the speaker's mixer load in the screen process only.
            from .media.screen import ScreenProcess

            return ScreenProcess(cfg.screen, post, speaker=speaker, log_level=cfg.log.level,
                                 reference_socket=reference)

    panel = build_panel(cfg.panel, pin_factory) if cfg.panel else {}
    posted: list[Supervisor] = []  # the voice reports to the supervisor made below
    voice = None
    if cfg.voice.enabled:
        from .adapters.voice import Voice

        # With a screen, the screen process owns the speaker: the prompts go through it.
        sink = None if make_screen is None else (
            lambda samples, rate: posted[0].screen.prompt(samples, rate, 1))  # type: ignore[union-attr]
        voice = Voice(pcm=cfg.voice.pcm, voice=cfg.voice.voice,
                      words_per_minute=cfg.voice.words_per_minute,
                      volume_percent=cfg.voice.volume_percent,
                      on_done=lambda key: posted[0].post(PromptSpoken(key)), sink=sink)
    adapters = Adapters(
        make_link=make_link,
        make_media=make_media,
        # Only timesyncd's flag file: asking timedatectl could stall the loop for a second.
        health=HealthProbe(str(state), cfg.health.clock_check, timedatectl=None),
        outbox=outbox,
        replay=replay,
        ledger=ledger,
        model=board_model(cfg.device.model),
        serial=board_serial(cfg.device.serial),
        service=ServiceManager(),
        voice=voice,
        **panel,
        releases=ReleaseStore.from_config(cfg),
        make_screen=make_screen,
        sound=sound,
    )
    supervisor = Supervisor(cfg, adapters)
    posted.append(supervisor)
    return supervisor


def room_sound(cfg: Config) -> tuple[RoomSound, str, str]:
    """The room's sound kit as ALSA shows it: what ``meta`` says, and the microphone and
    speaker to use (a speakerphone serves both directions; docs/audio.md)."""
    from .adapters.audiokit import detect
    from .core.audiokit import echo_plan, sound_devices

    kit = detect()
    plan = echo_plan(kit, cfg.media.audio_kit, cfg.media.echo_canceller)
    if not cfg.screen.enabled and plan["echo_canceller"] in ("speex", "webrtc"):
        plan["echo_canceller"] = "none"  # the box plays no programme: there is no echo of it
    microphone, speaker = sound_devices(plan, kit, microphone=cfg.media.microphone,
                                        speaker=cfg.screen.speaker)
    log.info("sound: %s kit (%s), microphone %s, speaker %s, echo cancelled by %s",
                 plan["audio_kit"], plan["device"] or "no card", microphone, speaker,
                 plan["echo_canceller"])
    sound = RoomSound(kit=plan["audio_kit"], echo_canceller=plan["echo_canceller"],  # type: ignore[arg-type]
                      device=plan["device"])
    return sound, microphone, speaker


def build_panel(cfg: Panel, factory: Any = None) -> dict[str, object]:
    """The status light now, and a maker for the buttons (started by the supervisor).

    Raises PanelError for pins that cannot be had (in use, no GPIO here).
    """
    from .adapters.panel import JoinButton, MuteButton, StatusLight, pin_factory_for

    if factory is None:
        factory = pin_factory_for(cfg.gpio)
    light_pins = {name.removesuffix("_pin"): pin for name, pin in cfg.light.pins().items()}
    light = StatusLight(cfg.light.kind, active_high=cfg.light.active_high,
                        brightness=cfg.light.brightness, pin_factory=factory, **light_pins)
    timing = PressTiming(debounce_s=cfg.debounce_ms / 1000, long_press_s=cfg.long_press_s,
                         reset_hold_s=cfg.reset_hold_s)

    def make_buttons(post):  # type: ignore[no-untyped-def]
        buttons = [JoinButton(cfg.join_button.pin, post=post, timing=timing,
                              reset_window_s=cfg.reset_window_s,
                              pull_up=cfg.join_button.pull_up, pin_factory=factory)]
        if cfg.mute_button is not None:
            buttons.append(MuteButton(cfg.mute_button.pin, post=post, timing=timing,
                                      pull_up=cfg.mute_button.pull_up, pin_factory=factory))
        return buttons

    if cfg.gpio == "mock" and threading.current_thread() is threading.main_thread():
        _press_on_sigusr1(factory, cfg)
    return {"light": light, "make_buttons": make_buttons}


def _press_on_sigusr1(factory: object, cfg: Panel) -> None:
    """Development only (``panel.gpio = "mock"``): SIGUSR1 and SIGUSR2 work the join button.

    gpiozero's MockFactory has no buttons anybody can press, so a test or the
    demo presses it from outside, and the press then takes the real path
    (gpiozero, the press classifier, the supervisor's queue). SIGUSR1 is a
    short press: the mock pin goes to its pressed level for 0.3 s. SIGUSR2
    presses the button and holds it until the next SIGUSR2, for a long press
    or a factory reset held as long as a person would. On a real box
    (``lgpio``) both signals keep their default meaning.
    """
    pin = factory.pin(cfg.join_button.pin)  # type: ignore[attr-defined]
    pressed, released = ((pin.drive_low, pin.drive_high) if cfg.join_button.pull_up
                         else (pin.drive_high, pin.drive_low))
    held = threading.Event()

    def press() -> None:
        pressed()
        threading.Event().wait(0.3)
        released()

    def hold_or_release() -> None:
        if held.is_set():
            held.clear()
            released()
        else:
            held.set()
            pressed()

    # Off the signal handler: the pin's callbacks run in whichever thread drives it.
    signal.signal(signal.SIGUSR1, lambda *_: threading.Thread(target=press, daemon=True).start())
    signal.signal(signal.SIGUSR2,
                  lambda *_: threading.Thread(target=hold_or_release, daemon=True).start())


def run(cfg: Config, identity: Identity | None = None) -> int:
    from .media.process import Spare  # the pipe's messages only; no PyAV

    spare = Spare(cfg.log.level)
    supervisor = build(cfg, spare=spare)
    renewer = None
    if identity is not None:
        from .adapters.enroll import Renewer

        renewer = Renewer(Path(cfg.device.state_dir), identity, supervisor.post,
                          retry_min_s=cfg.enrollment.retry_min_s,
                          retry_max_s=cfg.enrollment.retry_max_s)

    def on_signal(signum: int, _frame: object) -> None:
        supervisor.post_from_signal_handler(StopRequested(signal.Signals(signum).name))

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if cfg.media.camera == "auto":
        _detect_camera_later(cfg, supervisor)
    log.info("diemcau %s starting as %s (%s)", _version(), cfg.device.id, cfg.site.name)
    if renewer is not None:
        renewer.start()
    # The next meeting's media process, started once the box is online (not to slow its
    # start); each join takes it and a new one starts once that meeting's media has ended.
    spare.fill_later(SPARE_AFTER_S)
    try:
        supervisor.run()
    finally:
        spare.close()
        if renewer is not None:
            renewer.stop()
    if supervisor.factory_reset:
        log.warning("stopped after a factory reset: exit %d so that the box starts afresh",
                    EXIT_FACTORY_RESET)
        return EXIT_FACTORY_RESET
    log.info("stopped (exit code %d)", supervisor.exit_code)
    return supervisor.exit_code


def _detect_camera_later(cfg: Config, supervisor: Supervisor) -> None:
    """Resolve ``media.camera = "auto"`` off the main thread, for ``meta``.

    Asking libcamera means importing picamera2, which takes too long for the
    box's first second online; the supervisor republishes ``meta`` when told.
    """
    import threading

    def detect() -> None:
        from .core.events import CameraDetected
        from .media.camera import detect_backend

        try:
            supervisor.post(CameraDetected(detect_backend(cfg.media)))
        except Exception:  # noqa: BLE001 - a failed probe must not end the box
            log.exception("camera detection failed")

    threading.Thread(target=detect, name="camera-detect", daemon=True).start()


def _version() -> str:
    from . import __version__

    return __version__
