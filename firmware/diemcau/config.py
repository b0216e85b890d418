"""The box's configuration: one TOML file, checked whole before anything starts.

Every problem is collected (not just the first) and named by its key path,
with a suggestion for a misspelt key:

    mqtt.prot: unknown key (did you mean 'port'?)
    media.sample_rate_hz: expected int, got str

See ``docs/configuration.md`` for every key, and ``firmware/examples/`` for
complete files.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import msgspec

from .protocol import check_name
from .protocol.messages import DEFAULT_TTL_S, MAX_TOKEN_LIFETIME_S

# Not here: diemcau.protocol.commands (PyJWT, cryptography), loaded only to
# check the keys (_public_key_problems), so that the media process, which
# imports the [media] section's struct, does not load them.


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` lists each reason."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.source = source
        self.problems = problems

    def report(self) -> str:
        lines = [f"configuration {self.source} has {len(self.problems)} problem(s):"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


class _Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class Device(_Section, kw_only=True, forbid_unknown_fields=True):
    id: str
    model: str = "auto"  # "auto" reads /proc/device-tree/model
    serial: str = "auto"
    state_dir: str = "/var/lib/diemcau"


class SiteConfig(_Section, kw_only=True, forbid_unknown_fields=True):
    name: str
    province: str
    district: str
    commune: str
    room: str = ""


class Tls(_Section, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    ca_file: str = ""  # empty: the system's trusted CAs
    cert_file: str = ""  # client certificate (mutual TLS)
    key_file: str = ""
    insecure_skip_verify: bool = False  # only ever for a lab


class Mqtt(_Section, kw_only=True, forbid_unknown_fields=True):
    host: str
    port: int = 8883
    # More brokers of the same cluster, tried in turn after `host` fails:
    # "name" (on `port`), "name:port" or "[v6 address]:port".
    fallback_hosts: list[str] = msgspec.field(default_factory=list)
    username: str = ""
    password: str = ""
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600
    will_delay_s: int = 10
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 120.0
    # After a lost connection, the first attempt comes anywhere in this window
    # (full jitter), so a fleet does not come back all at once (docs/configuration.md).
    reconnect_spread_s: float = 10.0
    tls: Tls = msgspec.field(default_factory=Tls)

    def addresses(self) -> list[tuple[str, int]]:
        """Every broker address, `host` first, then each of `fallback_hosts`, in order."""
        return [(self.host, self.port)] + [broker_address(a, self.port)
                                           for a in self.fallback_hosts]


def broker_address(text: str, default_port: int) -> tuple[str, int]:
    """``"name"``, ``"name:port"`` or ``"[2001:db8::1]:port"`` -> (host, port).

    Raises ValueError for anything else.
    """
    host, sep, port = text.rpartition(":")
    if not sep or text.endswith("]") or (":" in host and not host.startswith("[")):
        host, port = text, ""  # no port: a name, or an IPv6 address, bracketed or not
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or text.endswith(":") or any(c in host for c in " /[]"):
        raise ValueError(f"{text!r} is not a host or host:port")
    if not port:
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: {port!r} is not a TCP port")
    return host, int(port)


def fallback_host_problems(mqtt: Mqtt) -> list[str]:
    """What is wrong with ``mqtt.fallback_hosts`` (the box's and the centre's)."""
    problems = []
    for address in mqtt.fallback_hosts:
        try:
            broker_address(address, mqtt.port)
        except ValueError as exc:
            problems.append(f"mqtt.fallback_hosts: {exc}")
    return problems


class Commands(_Section, kw_only=True, forbid_unknown_fields=True):
    # kid -> Ed25519 public key (URL-safe base64 of the 32 raw bytes, or PEM)
    centre_keys: dict[str, str]
    allowed_schemes: list[str] = msgspec.field(default_factory=lambda: ["srt"])
    media_hosts: list[str]
    leeway_s: float = 30.0  # clock tolerance both ways: on exp, and on an iat in the future
    max_token_lifetime_s: int = MAX_TOKEN_LIFETIME_S  # longest exp - iat accepted


class Outbox(_Section, kw_only=True, forbid_unknown_fields=True):
    max_messages: int = 2000


class Media(_Section, kw_only=True, forbid_unknown_fields=True):
    camera: Literal["auto", "picamera2", "usb", "test_pattern"] = "test_pattern"
    camera_device: str = "auto"  # usb: a /dev/video* path, or the first USB camera
    camera_input_format: Literal["auto", "mjpeg", "yuyv422", "h264"] = "auto"  # usb only
    camera_fallback: Literal["none", "test_pattern"] = "none"  # auto and no camera found
    microphone: str = "default"  # ALSA PCM name
    sample_rate_hz: int = 48000
    channels: int = 1
    # Who cancels the centre's sound (docs/audio.md): auto (a USB speakerphone does it,
    # else the box's canceller), speakerphone, software, off.
    audio_kit: Literal["auto", "speakerphone", "software", "off"] = "auto"
    echo_canceller: Literal["webrtc", "speex"] = "speex"
    audio_codec: Literal["aac", "opus"] = "aac"
    audio_bitrate_kbps: int = 64
    video_bitrate_kbps: int = 0  # 0: the profile's own
    srt_latency_ms: int = 200
    connect_timeout_ms: int = 3000
    reconnect_min_s: float = 1.0
    # Short: a meeting must come back within seconds of the server's return, and
    # an attempt is one small handshake (each already waits connect_timeout_ms).
    reconnect_max_s: float = 3.0
    srt_passphrase: str = ""  # "" : no encryption; else 10-79 characters (AES-128)
    send_queue_ms: int = 1000  # the send queue's bound, in time at the top bitrate
    abr: bool = True  # adaptive bitrate: step down under congestion, back up after


class HealthConfig(_Section, kw_only=True, forbid_unknown_fields=True):
    interval_s: float = 30.0
    clock_check: Literal["timesyncd", "none"] = "timesyncd"
    temperature_high_c: float = 80.0
    disk_low_mb: float = 500.0
    microphone_silent_dbfs: float = -60.0
    microphone_silent_s: float = 60.0
    stream_failing_s: float = 30.0
    programme_lost_s: float = 10.0


class PanelButton(_Section, kw_only=True, forbid_unknown_fields=True):
    pin: int
    pull_up: bool = True  # the button connects the pin to ground


class PanelLight(_Section, kw_only=True, forbid_unknown_fields=True):
    kind: Literal["rgb", "single", "dual", "none"] = "rgb"
    red_pin: int = 5  # rgb, dual
    green_pin: int = 6  # rgb, dual
    blue_pin: int = 13  # rgb
    pin: int = 6  # single
    active_high: bool = True  # false: LEDs wired to 3.3 V (common anode)
    brightness: float = 1.0

    def pins(self) -> dict[str, int]:
        """The pins this kind of light drives, by key name."""
        names = {"rgb": ("red_pin", "green_pin", "blue_pin"), "single": ("pin",),
                 "dual": ("green_pin", "red_pin"), "none": ()}[self.kind]
        return {name: getattr(self, name) for name in names}


class Panel(_Section, kw_only=True, forbid_unknown_fields=True):
    """The room's button(s) and status light; no ``[panel]`` section: none fitted."""

    # "mock": gpiozero's MockFactory, for a development machine (see docs/room-controls.md).
    gpio: Literal["lgpio", "mock"] = "lgpio"
    debounce_ms: int = 50
    long_press_s: float = 3.0
    reset_hold_s: float = 10.0
    reset_window_s: float = 60.0
    join_early_s: float = 900.0  # a press joins an invitation this long before its start
    join_button: PanelButton = msgspec.field(default_factory=lambda: PanelButton(pin=17))
    mute_button: PanelButton | None = None
    light: PanelLight = msgspec.field(default_factory=PanelLight)


class VoiceConfig(_Section, kw_only=True, forbid_unknown_fields=True):
    """Spoken prompts through the room's speaker (espeak-ng, ALSA)."""

    enabled: bool = True
    pcm: str = "default"  # ALSA playback device
    volume_percent: int = 80  # at start; audio.volume changes it
    voice: str = "vi"  # espeak-ng voice
    words_per_minute: int = 150


class Enrollment(_Section, kw_only=True, forbid_unknown_fields=True):
    # Where a blank box finds its enrollment file: the SD card's FAT boot partition.
    file: str = "/boot/firmware/diemcau-enroll.toml"
    retry_min_s: float = 10.0
    retry_max_s: float = 3600.0  # the centre may be unreachable for days: try hourly at worst


class Updates(_Section, kw_only=True, forbid_unknown_fields=True):
    # kid -> Ed25519 public key of the centre's *release* key (not a command key);
    # empty: firmware.update is refused.
    release_keys: dict[str, str] = msgspec.field(default_factory=dict)
    root: str = "/opt/diemcau"  # releases/<version>, current, committed
    python: str = "/usr/bin/python3"  # makes each release's virtual environment
    health_deadline_s: float = 60.0  # a new release must connect and be born within this
    max_trial_starts: int = 3  # starts of a new release before going back
    ca_file: str = ""  # for an https download from a private CA; empty: the system's


class Screen(_Section, kw_only=True, forbid_unknown_fields=True):
    """The far end: the programme feed on the room's TV and speaker, the idle screen between
    meetings (docs/farend.md). Off by default: a box without a TV has nothing to drive."""

    enabled: bool = False
    vo: str = "gpu"  # mpv video output: gpu (with gpu_context), drm, null; image in a lab
    gpu_context: str = "drm"  # with vo = "gpu": drm on a Pi without a desktop
    drm_connector: str = ""  # e.g. "HDMI-A-1"; empty: the first connected one
    drm_mode: str = ""  # e.g. "1280x720@50"; empty: the TV's preferred mode
    hwdec: str = "no"  # "v4l2m2m-copy" on a Pi 4 with Raspberry Pi OS; "no" on a Pi 5
    speaker: str = "default"  # ALSA playback PCM for the programme and the prompts
    sample_rate_hz: int = 48000  # what the speaker is driven at (stereo S16_LE)
    audio_buffer_ms: int = 40  # the speaker's ALSA buffer (4 periods)
    # The lag rule: behind the live edge by more than lag_bound_ms, play faster until
    # back under lag_target_ms; more than lag_reload_ms behind, reload the feed.
    lag_bound_ms: int = 150
    lag_target_ms: int = 60
    lag_reload_ms: int = 4000
    catchup_speed: float = 1.5
    stall_s: float = 2.0  # no new picture (or sound) this long while live: reconnect
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 10.0
    duck_db: float = -18.0  # the programme's level while a prompt speaks
    srt_latency_ms: int = 120  # added to an SRT play URL that does not say its own
    record_dir: str = ""  # a lab's: log each picture shown (and the sound played) there
    options: dict[str, str] = msgspec.field(default_factory=dict)  # more mpv options, as named by mpv


class Log(_Section, kw_only=True, forbid_unknown_fields=True):
    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(_Section, kw_only=True, forbid_unknown_fields=True):
    config_version: str = "unversioned"
    device: Device
    site: SiteConfig
    mqtt: Mqtt
    commands: Commands
    outbox: Outbox = msgspec.field(default_factory=Outbox)
    media: Media = msgspec.field(default_factory=Media)
    health: HealthConfig = msgspec.field(default_factory=HealthConfig)
    panel: Panel | None = None
    voice: VoiceConfig = msgspec.field(default_factory=VoiceConfig)
    screen: Screen = msgspec.field(default_factory=Screen)
    enrollment: Enrollment = msgspec.field(default_factory=Enrollment)
    updates: Updates = msgspec.field(default_factory=Updates)
    log: Log = msgspec.field(default_factory=Log)

    @property
    def groups(self) -> list[str]:
        """The groups this box belongs to, broadest first."""
        return [self.site.province, self.site.district, self.site.commune, "all"]

    @property
    def audiences(self) -> frozenset[str]:
        return frozenset([self.device.id] + [f"group:{g}" for g in self.groups])


def _struct_of(typ: Any) -> type | None:
    """The struct a field holds: ``S`` for ``S`` and for ``S | None``."""
    if isinstance(typ, type) and issubclass(typ, msgspec.Struct):
        return typ
    args = [a for a in get_args(typ) if a is not type(None)]
    if len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], msgspec.Struct):
        return args[0]
    return None


def _unknown_keys(data: Any, struct: type, path: str) -> list[str]:
    """Unknown keys in ``data`` against ``struct``, recursively, with suggestions."""
    if not isinstance(data, dict):
        return []
    fields = {f.name: f for f in msgspec.structs.fields(struct)}
    problems = []
    for key, value in data.items():
        where = f"{path}{key}"
        field = fields.get(key)
        if field is None:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"{where}: unknown key{hint}")
            continue
        sub = _struct_of(field.type)
        if sub is not None:
            problems += _unknown_keys(value, sub, where + ".")
    return problems


def _known_only(data: Any, struct: type) -> Any:
    """``data`` without the keys ``struct`` does not have (reported separately)."""
    if not isinstance(data, dict):
        return data
    fields = {f.name: f.type for f in msgspec.structs.fields(struct)}
    kept = {}
    for key, value in data.items():
        if key in fields:
            sub = _struct_of(fields[key])
            kept[key] = _known_only(value, sub) if sub is not None else value
    return kept


def shape_problems(data: dict[str, Any], root: type[msgspec.Struct]) -> list[str]:
    """Unknown keys and wrong types in parsed TOML against ``root``, every one named.

    Shared with the centre's own configuration, so both read their files alike.
    """
    problems = _unknown_keys(data, root, "")
    data = _known_only(data, root)
    for field in msgspec.structs.fields(root):
        if field.name not in data:
            if field.required:
                problems.append(f"{field.name}: missing section [{field.name}]")
            continue
        problems += _field_problems(field.name, data[field.name], field.type)
    return problems


def _field_problems(path: str, value: Any, typ: Any) -> list[str]:
    if _struct_of(typ) is not None and isinstance(value, dict):
        typ = _struct_of(typ)
        # Check key by key so that two wrong keys give two messages.
        problems = []
        for f in msgspec.structs.fields(typ):
            if f.name in value:
                problems += _field_problems(f"{path}.{f.name}", value[f.name], f.type)
            elif f.required:
                problems.append(f"{path}.{f.name}: missing (required)")
        return problems
    if get_origin(typ) is dict and isinstance(value, dict):
        # Key by key too: for a table msgspec says only "at $[...]", not which key.
        value_type = get_args(typ)[1]
        return [p for k, v in value.items() for p in _field_problems(f"{path}.{k}", v, value_type)]
    try:
        msgspec.convert(value, typ)
    except msgspec.ValidationError as exc:
        return [_explain(path, str(exc)) + _choices(typ, value)]
    return []


def _choices(typ: Any, value: Any) -> str:
    """For a wrong value of a fixed set of words: the words, and the nearest one."""
    words = [w for w in get_args(typ) if isinstance(w, str)] if get_origin(typ) is Literal else []
    if not words:
        return ""
    close = difflib.get_close_matches(value, words, n=1) if isinstance(value, str) else []
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return " (one of " + ", ".join(f"'{w}'" for w in words) + hint + ")"


def _explain(section: str, message: str) -> str:
    # msgspec says "Expected `int`, got `str` - at `$.port`"; turn it into a key path.
    text, _, where = message.partition(" - at `$")
    key = section + where.rstrip("`").replace("[", ".").replace("]", "")
    text = text.replace("`", "")
    return f"{key}: {text[0].lower()}{text[1:]}"


def _semantic_problems(cfg: Config) -> list[str]:
    problems = []
    checks = [("device.id", cfg.device.id), ("site.province", cfg.site.province),
              ("site.district", cfg.site.district), ("site.commune", cfg.site.commune)]
    for key, value in checks:
        try:
            check_name(value, key)
        except ValueError as exc:
            problems.append(f"{key}: {exc}")
    if not 0 < cfg.mqtt.port < 65536:
        problems.append(f"mqtt.port: {cfg.mqtt.port} is not a TCP port")
    problems += fallback_host_problems(cfg.mqtt)
    if cfg.mqtt.reconnect_min_s <= 0 or cfg.mqtt.reconnect_max_s < cfg.mqtt.reconnect_min_s:
        problems.append("mqtt.reconnect_min_s/reconnect_max_s: need 0 < min <= max")
    if not 0 <= cfg.mqtt.reconnect_spread_s <= 600:
        problems.append("mqtt.reconnect_spread_s: 0-600 seconds")
    if not cfg.commands.centre_keys:
        problems.append("commands.centre_keys: at least one centre key is needed")
    problems += _public_key_problems(cfg.commands.centre_keys, "commands.centre_keys")
    for scheme in cfg.commands.allowed_schemes:
        if scheme not in ("srt", "rtsp", "rtsps"):
            problems.append(f"commands.allowed_schemes: {scheme!r} is not a supported transport")
    for key in ("ca_file", "cert_file", "key_file"):
        value = getattr(cfg.mqtt.tls, key)
        if value and not Path(value).is_file():
            problems.append(f"mqtt.tls.{key}: no such file {value!r}")
    if bool(cfg.mqtt.tls.cert_file) != bool(cfg.mqtt.tls.key_file):
        problems.append("mqtt.tls: cert_file and key_file go together")
    for key, value in _numbers(msgspec.to_builtins(cfg)):
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{key}: must be a finite number")
    if not cfg.commands.media_hosts:
        problems.append("commands.media_hosts: list at least one media server host")
    problems += _command_time_problems(cfg.commands)
    if cfg.health.interval_s < 1:
        problems.append("health.interval_s: must be at least 1")
    if cfg.outbox.max_messages < 10:
        problems.append("outbox.max_messages: must be at least 10")
    if cfg.media.channels not in (1, 2):
        problems.append("media.channels: 1 or 2")
    if cfg.panel is not None:
        problems += _panel_problems(cfg.panel)
    if not 0 <= cfg.voice.volume_percent <= 100:
        problems.append("voice.volume_percent: must be 0-100")
    problems += _screen_problems(cfg.screen)
    if not 80 <= cfg.voice.words_per_minute <= 450:
        problems.append("voice.words_per_minute: must be 80-450")
    e = cfg.enrollment
    if e.retry_min_s <= 0 or e.retry_max_s < e.retry_min_s:
        problems.append("enrollment.retry_min_s/retry_max_s: need 0 < min <= max")
    if cfg.media.srt_passphrase and not 10 <= len(cfg.media.srt_passphrase) <= 79:
        problems.append("media.srt_passphrase: 10-79 characters, or empty for none")
    if cfg.media.reconnect_min_s <= 0 or cfg.media.reconnect_max_s < cfg.media.reconnect_min_s:
        problems.append("media.reconnect_min_s/reconnect_max_s: need 0 < min <= max")
    if not 100 <= cfg.media.send_queue_ms <= 10_000:
        problems.append("media.send_queue_ms: must be 100-10000")
    problems += _camera_problems(cfg.media)
    return problems + _update_problems(cfg.updates)


# The longest max_token_lifetime_s may be: a week, as long as the broker keeps
# commands for an offline box by default (mqtt.session_expiry_s).
LONGEST_TOKEN_LIFETIME_S = 7 * 24 * 3600
MAX_LEEWAY_S = 300


def _public_key_problems(keys: dict[str, str], path: str) -> list[str]:
    from .protocol.commands import public_keys_from_text  # PyJWT, cryptography: see above

    return public_keys_from_text(keys, path)[1]


def _command_time_problems(commands: Commands) -> list[str]:
    problems = []
    if not 0 <= commands.leeway_s <= MAX_LEEWAY_S:
        problems.append(f"commands.leeway_s: must be 0-{MAX_LEEWAY_S} s (the clock tolerance on"
                        " a command's exp and iat)")
    if not DEFAULT_TTL_S <= commands.max_token_lifetime_s <= LONGEST_TOKEN_LIFETIME_S:
        problems.append(f"commands.max_token_lifetime_s: must be {DEFAULT_TTL_S}-"
                        f"{LONGEST_TOKEN_LIFETIME_S} s (at least the centre's default command"
                        " lifetime, at most a week)")
    return problems


GPIO_PINS = range(28)  # BCM GPIO 0-27, the Pi's 40-pin header


def _panel_problems(panel: Panel) -> list[str]:
    problems = []
    pins = {"panel.join_button.pin": panel.join_button.pin}
    if panel.mute_button is not None:
        pins["panel.mute_button.pin"] = panel.mute_button.pin
    pins |= {f"panel.light.{name}": pin for name, pin in panel.light.pins().items()}
    seen: dict[int, str] = {}
    for key, pin in pins.items():
        if pin not in GPIO_PINS:
            problems.append(f"{key}: {pin} is not a GPIO of the Pi's header (0-27)")
        elif pin in seen:
            problems.append(f"{key}: GPIO{pin} is already {seen[pin]}")
        else:
            seen[pin] = key
    if not 0 <= panel.debounce_ms / 1000 < panel.long_press_s < panel.reset_hold_s:
        problems.append("panel.debounce_ms/long_press_s/reset_hold_s: need 0 <= debounce < "
                        "long press < reset hold")
    if panel.reset_window_s < 0:
        problems.append("panel.reset_window_s: must be 0 or more")
    if panel.join_early_s < 0:
        problems.append("panel.join_early_s: must be 0 or more")
    if not 0 < panel.light.brightness <= 1:
        problems.append("panel.light.brightness: must be more than 0 and at most 1")
    return problems


def _camera_problems(media: Media) -> list[str]:
    problems = []
    if media.camera_device != "auto" and not media.camera_device.startswith("/"):
        problems.append(f"media.camera_device: {media.camera_device!r} is not a device path "
                        "(like /dev/video0) or \"auto\"")
    if media.camera in ("picamera2", "test_pattern") and media.camera_device != "auto":
        problems.append(f"media.camera_device: only for a USB camera, not {media.camera!r}")
    if media.camera_fallback != "none" and media.camera != "auto":
        problems.append("media.camera_fallback: only applies when media.camera = \"auto\"")
    return problems


def _screen_problems(screen: Screen) -> list[str]:
    problems = []
    if not 0 < screen.lag_target_ms < screen.lag_bound_ms < screen.lag_reload_ms:
        problems.append("screen.lag_target_ms/lag_bound_ms/lag_reload_ms: need 0 < target < "
                        "bound < reload")
    if not 1.0 < screen.catchup_speed <= 2.0:
        problems.append("screen.catchup_speed: more than 1 and at most 2")
    if screen.reconnect_min_s <= 0 or screen.reconnect_max_s < screen.reconnect_min_s:
        problems.append("screen.reconnect_min_s/reconnect_max_s: need 0 < min <= max")
    if not 10 <= screen.audio_buffer_ms <= 500:
        problems.append("screen.audio_buffer_ms: 10-500")
    if screen.sample_rate_hz not in (44100, 48000):
        problems.append("screen.sample_rate_hz: 44100 or 48000")
    if screen.stall_s < 0.5:
        problems.append("screen.stall_s: at least 0.5")
    if screen.duck_db > 0:
        problems.append("screen.duck_db: 0 or less (a prompt lowers the programme)")
    return problems


def _update_problems(updates: Updates) -> list[str]:
    problems = _public_key_problems(updates.release_keys, "updates.release_keys")
    if not updates.health_deadline_s >= 5:
        problems.append("updates.health_deadline_s: must be at least 5")
    if not 1 <= updates.max_trial_starts <= 10:
        problems.append("updates.max_trial_starts: 1-10")
    if updates.ca_file and not Path(updates.ca_file).is_file():
        problems.append(f"updates.ca_file: no such file {updates.ca_file!r}")
    return problems


def _numbers(node: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        return [pair for k, v in node.items() for pair in _numbers(v, f"{path}{k}.")]
    return [(path.rstrip("."), node)]


S = TypeVar("S", bound=msgspec.Struct)


def _toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"not valid TOML: {exc}"]) from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise ConfigError(source, ["not valid TOML: nested too deeply"]) from None


def _overlaid(data: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``data`` with ``overlay`` laid over it, table by table; overlay values win."""
    merged = dict(data)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _overlaid(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_toml(text: str, source: str, root: type[S], overlay: dict[str, Any] | None = None) -> S:
    """TOML text into ``root``, or ConfigError naming every unknown key and wrong type.

    ``overlay`` (the box's enrolled identity) is laid over the file's tables
    before anything is checked. Shared with the centre's configuration, so
    that both read their files alike.
    """
    data = _toml(text, source)
    if overlay:
        data = _overlaid(data, overlay)
    problems = shape_problems(data, root)
    if problems:
        raise ConfigError(source, problems)
    return msgspec.convert(data, root)


def parse_config(text: str, source: str = "<config>",
                 overlay: dict[str, Any] | None = None) -> Config:
    """Parse and check configuration text; raise ConfigError listing every problem.

    ``overlay`` is what the box's enrolled identity says (device id, site,
    broker, certificates, centre keys); it wins over the file.
    """
    cfg = read_toml(text, source, Config, overlay)
    problems = _semantic_problems(cfg)
    if problems:
        raise ConfigError(source, problems)
    return cfg


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"cannot read: {exc}"]) from None


def load_config(path: str | Path, overlay: dict[str, Any] | None = None) -> Config:
    path = Path(path)
    return parse_config(_read(path), str(path), overlay)


def boot_settings(path: str | Path) -> tuple[Path, Enrollment]:
    """The state directory and ``[enrollment]``: all a blank box needs before it has an identity.

    Read on their own, because the rest of a blank box's configuration (its
    device id, site, broker, keys) comes from enrollment.
    """
    path = Path(path)
    data = _toml(_read(path), str(path))
    device = data.get("device", {})
    state_dir = device.get("state_dir", Device(id="").state_dir) \
        if isinstance(device, dict) else None
    problems = []
    if not isinstance(state_dir, str) or not state_dir:
        problems.append("device.state_dir: expected a directory name")
    problems += _field_problems("enrollment", data.get("enrollment", {}), Enrollment)
    if problems:
        raise ConfigError(str(path), problems)
    return Path(state_dir), msgspec.convert(data.get("enrollment", {}), Enrollment)


SECRET_KEYS = {"password", "srt_passphrase"}


def effective_config(cfg: Config) -> dict[str, Any]:
    """The configuration with defaults filled in and secrets masked, for printing."""

    def mask(node: Any) -> Any:
        if isinstance(node, dict):
            # TOML has no null: an absent optional section (no [panel]) is left out.
            return {k: ("***" if k in SECRET_KEYS and v else mask(v)) for k, v in node.items()
                    if v is not None}
        return node

    return mask(msgspec.to_builtins(cfg))
