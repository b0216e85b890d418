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

from .protocol import check_name, public_key_from_text


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
    username: str = ""
    password: str = ""
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600
    will_delay_s: int = 10
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 120.0
    tls: Tls = msgspec.field(default_factory=Tls)


class Commands(_Section, kw_only=True, forbid_unknown_fields=True):
    # kid -> Ed25519 public key (URL-safe base64 of the 32 raw bytes, or PEM)
    centre_keys: dict[str, str]
    allowed_schemes: list[str] = msgspec.field(default_factory=lambda: ["srt"])
    media_hosts: list[str]
    leeway_s: float = 30.0


class Outbox(_Section, kw_only=True, forbid_unknown_fields=True):
    max_messages: int = 2000


class Media(_Section, kw_only=True, forbid_unknown_fields=True):
    camera: Literal["test_pattern"] = "test_pattern"
    microphone: str = "default"  # ALSA PCM name
    sample_rate_hz: int = 48000
    channels: int = 1
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
    log: Log = msgspec.field(default_factory=Log)

    @property
    def groups(self) -> list[str]:
        """The groups this box belongs to, broadest first."""
        return [self.site.province, self.site.district, self.site.commune, "all"]

    @property
    def audiences(self) -> frozenset[str]:
        return frozenset([self.device.id] + [f"group:{g}" for g in self.groups])


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
        sub = field.type
        if isinstance(sub, type) and issubclass(sub, msgspec.Struct):
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
            sub = fields[key]
            is_struct = isinstance(sub, type) and issubclass(sub, msgspec.Struct)
            kept[key] = _known_only(value, sub) if is_struct else value
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
    is_struct = isinstance(typ, type) and issubclass(typ, msgspec.Struct)
    if is_struct and isinstance(value, dict):
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
        return [_explain(path, str(exc))]
    return []


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
    if cfg.mqtt.reconnect_min_s <= 0 or cfg.mqtt.reconnect_max_s < cfg.mqtt.reconnect_min_s:
        problems.append("mqtt.reconnect_min_s/reconnect_max_s: need 0 < min <= max")
    if not cfg.commands.centre_keys:
        problems.append("commands.centre_keys: at least one centre key is needed")
    for kid, text in cfg.commands.centre_keys.items():
        try:
            public_key_from_text(text)
        except Exception as exc:  # noqa: BLE001 - any parse failure is a config problem
            problems.append(f"commands.centre_keys.{kid}: not an Ed25519 public key ({exc})")
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
    if cfg.health.interval_s < 1:
        problems.append("health.interval_s: must be at least 1")
    if cfg.outbox.max_messages < 10:
        problems.append("outbox.max_messages: must be at least 10")
    if cfg.media.channels not in (1, 2):
        problems.append("media.channels: 1 or 2")
    if cfg.media.srt_passphrase and not 10 <= len(cfg.media.srt_passphrase) <= 79:
        problems.append("media.srt_passphrase: 10-79 characters, or empty for none")
    if cfg.media.reconnect_min_s <= 0 or cfg.media.reconnect_max_s < cfg.media.reconnect_min_s:
        problems.append("media.reconnect_min_s/reconnect_max_s: need 0 < min <= max")
    if not 100 <= cfg.media.send_queue_ms <= 10_000:
        problems.append("media.send_queue_ms: must be 100-10000")
    return problems


def _numbers(node: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        return [pair for k, v in node.items() for pair in _numbers(v, f"{path}{k}.")]
    return [(path.rstrip("."), node)]


S = TypeVar("S", bound=msgspec.Struct)


def read_toml(text: str, source: str, root: type[S]) -> S:
    """TOML text into ``root``, or ConfigError naming every unknown key and wrong type.

    Shared with the centre's configuration, so that both read their files alike.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"not valid TOML: {exc}"]) from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise ConfigError(source, ["not valid TOML: nested too deeply"]) from None
    problems = shape_problems(data, root)
    if problems:
        raise ConfigError(source, problems)
    return msgspec.convert(data, root)


def parse_config(text: str, source: str = "<config>") -> Config:
    """Parse and check configuration text; raise ConfigError listing every problem."""
    cfg = read_toml(text, source, Config)
    problems = _semantic_problems(cfg)
    if problems:
        raise ConfigError(source, problems)
    return cfg


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"cannot read: {exc}"]) from None
    return parse_config(text, str(path))


SECRET_KEYS = {"password", "srt_passphrase"}


def effective_config(cfg: Config) -> dict[str, Any]:
    """The configuration with defaults filled in and secrets masked, for printing."""

    def mask(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: ("***" if k in SECRET_KEYS and v else mask(v)) for k, v in node.items()}
        return node

    return mask(msgspec.to_builtins(cfg))
