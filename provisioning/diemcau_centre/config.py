"""The centre console's configuration: one TOML file, checked whole like the box's.

``[mqtt]`` is exactly the box's :class:`diemcau.config.Mqtt` (host, port, tls, ...);
``[signing]`` names the centre's Ed25519 key. Every problem is collected and
named by its key path, with a suggestion for a misspelt key:

    signing.kye_file: unknown key (did you mean 'key_file'?)
    mqtt.port: expected int, got str

Relative file names are read from the configuration file's own directory, so
a config and its keys can be moved together.

    client_id = "centre-hanoi-1"      # optional; default centre-<host>-<random>
    fleet_dir = "/srv/diemcau-centre" # optional; the manifest says who should answer

    [mqtt]
    host = "mqtt.example.vn"

    [signing]
    key_file = "centre-signing.key"   # PKCS8 PEM, mode 0600
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from pathlib import Path

import msgspec

# The box's own checks, so that both configs report problems the same way.
from diemcau.config import ConfigError, Mqtt, fallback_host_problems, read_toml
from diemcau.protocol.arguments import KID_RE

from .manifest import MANIFEST_FILE

ENV_VAR = "DIEMCAU_CENTRE_CONFIG"
DEFAULT_PATH = "/etc/diemcau/centre.toml"

class Signing(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    key_file: str = ""  # empty: this console can watch but not send
    kid: str = ""  # empty: diemcau.protocol.key_id of the public key


class CentreConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    client_id: str = ""  # empty: centre-<host>-<random>, so two consoles never collide
    # The centre's directory (its fleet.json): how many boxes a group has, so a
    # missing answer or box is reported. Empty: the console cannot tell.
    fleet_dir: str = ""
    # Where the console keeps the record of each group command (for `resend`).
    # Empty: $XDG_STATE_HOME/diemcau-centre, else ~/.local/state/diemcau-centre.
    state_dir: str = ""
    mqtt: Mqtt
    signing: Signing = msgspec.field(default_factory=Signing)


def default_client_id() -> str:
    """``centre-<host>-<6 hex>``: readable in the broker's log, unique per run."""
    host = re.sub(r"[^a-z0-9-]", "", socket.gethostname().lower().split(".")[0])[:16]
    return f"centre-{host or 'console'}-{secrets.token_hex(3)}"


def _resolve(base: Path, value: str) -> str:
    if not value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


def _with_paths(cfg: CentreConfig, base: Path) -> CentreConfig:
    tls = cfg.mqtt.tls
    tls = msgspec.structs.replace(
        tls, ca_file=_resolve(base, tls.ca_file), cert_file=_resolve(base, tls.cert_file),
        key_file=_resolve(base, tls.key_file),
    )
    signing = msgspec.structs.replace(cfg.signing, key_file=_resolve(base, cfg.signing.key_file))
    return msgspec.structs.replace(cfg, mqtt=msgspec.structs.replace(cfg.mqtt, tls=tls),
                                   signing=signing, fleet_dir=_resolve(base, cfg.fleet_dir),
                                   state_dir=_resolve(base, cfg.state_dir))


def _semantic_problems(cfg: CentreConfig) -> list[str]:
    problems = []
    m = cfg.mqtt
    if not m.host:
        problems.append("mqtt.host: empty")
    if not 0 < m.port < 65536:
        problems.append(f"mqtt.port: {m.port} is not a TCP port")
    problems += fallback_host_problems(m)
    if m.reconnect_min_s <= 0 or m.reconnect_max_s < m.reconnect_min_s:
        problems.append("mqtt.reconnect_min_s/reconnect_max_s: need 0 < min <= max")
    if m.keepalive_s < 5:
        problems.append("mqtt.keepalive_s: must be at least 5")
    for key in ("ca_file", "cert_file", "key_file"):
        value = getattr(m.tls, key)
        if value and not Path(value).is_file():
            problems.append(f"mqtt.tls.{key}: no such file {value!r}")
    if bool(m.tls.cert_file) != bool(m.tls.key_file):
        problems.append("mqtt.tls: cert_file and key_file go together")
    if cfg.client_id and not 0 < len(cfg.client_id.encode()) <= 128:
        problems.append("client_id: at most 128 bytes")
    if cfg.signing.key_file and not Path(cfg.signing.key_file).is_file():
        problems.append(f"signing.key_file: no such file {cfg.signing.key_file!r}"
                        " (make one with `diemcau-centre keys init`)")
    if cfg.fleet_dir and not (Path(cfg.fleet_dir) / MANIFEST_FILE).is_file():
        problems.append(f"fleet_dir: no fleet manifest (fleet.json) in {cfg.fleet_dir!r}")
    if cfg.signing.kid and not KID_RE.match(cfg.signing.kid):
        problems.append("signing.kid: 1-64 letters, digits, '.', '_' or '-'")
    return problems


def parse_config(text: str, source: str = "<config>", base: Path | None = None) -> CentreConfig:
    """Parse and check configuration text; raise ConfigError listing every problem.

    ``base`` is the directory relative file names are read from (default: the
    current one).
    """
    cfg = _with_paths(read_toml(text, source, CentreConfig), base or Path.cwd())
    problems = _semantic_problems(cfg)
    if problems:
        raise ConfigError(source, problems)
    if not cfg.client_id:
        cfg = msgspec.structs.replace(cfg, client_id=default_client_id())
    return cfg


def config_path(given: str | None) -> Path:
    """``--config``, else ``$DIEMCAU_CENTRE_CONFIG``, else /etc/diemcau/centre.toml."""
    return Path(given or os.environ.get(ENV_VAR) or DEFAULT_PATH)


def load_config(path: str | Path) -> CentreConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), [f"file not found (pass --config FILE or set {ENV_VAR})"]
                          ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"cannot read: {exc}"]) from None
    return parse_config(text, str(path), path.resolve().parent)
