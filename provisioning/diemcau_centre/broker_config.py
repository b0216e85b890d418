"""Mosquitto's configuration for the fleet: one mutual-TLS listener and its ACL.

Every client shows a certificate from the centre's CA. Its CN becomes its
username (``use_identity_as_username``) and then its client id
(``use_username_as_clientid``), so a box cannot take over another box's
session by claiming its client id: whatever id it sends, it is its own CN.

The ACL gives each box its own topics through patterns on ``%u`` (nothing in
it names a box), and its groups' commands through one ``user`` block per box
from the manifest: a box's province and district are not in its device id,
so no pattern could say them.

Queues and persistence are sized from the manifest (:func:`durability_lines`,
also what the test broker runs): Mosquitto drops, silently but for one log
line, what does not fit in a client's queue, and keeps in memory only what it
acknowledged since its last save (every ``BROKER_SAVE_S``; the box and the
centre re-send what a crash may have lost).

    files = write_broker_config(Path("/srv/centre"), Path("/srv/centre/broker"),
                                BrokerSettings(port=8883))
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from diemcau.protocol import (
    ALERT_CODES,
    BROKER_SAVE_S,
    alert_topic,
    check_name,
    device_filter,
    device_topic,
    group_cmd_topic,
)
from diemcau.protocol.topics import DeviceTopicKind

from .ca import CA_CERT, CRL, SERVER_CERT, SERVER_KEY, CaError, centre_identities
from .files import write_atomic
from .identity import check_centre_name
from .manifest import Device, FleetStore, ManifestError

CONF_FILE, ACL_FILE = "mosquitto.conf", "acl"
# What a box publishes about itself (and alert/+), and what it reads of its own.
BOX_WRITES: tuple[DeviceTopicKind, ...] = ("state", "meta", "status", "health", "event", "reply")
BOX_READS: tuple[DeviceTopicKind, ...] = ("cmd", "state")  # state: its last will, on restart
# Boxes send small messages; a larger packet is broken or hostile.
MAX_PACKET_BYTES = 256 * 1024

# Mosquitto's queue limits are one setting for every client, and the centre's
# subscriber needs the most: at worst, at once, for every box in the fleet,
# its retained state, meta, status and every alert (sent on subscribing), and
# what a group meeting.join makes it say (2 replies: accepted then succeeded;
# 3 status changes; 3 events). Whatever does not fit is dropped.
RETAINED_PER_BOX = 3 + len(ALERT_CODES)
GROUP_JOIN_PER_BOX = 2 + 3 + 3
CENTRE_MESSAGES_PER_BOX = RETAINED_PER_BOX + GROUP_JOIN_PER_BOX
# Never below Mosquitto's own default, for a small or empty manifest.
MIN_QUEUED_MESSAGES = 1000
# A bound on memory per client as well as on count: what the boxes send is
# 50-600 bytes a message, a signed command about 1 KiB; a client flooded with
# large packets (up to MAX_PACKET_BYTES) stops queueing here.
QUEUED_BYTES_PER_MESSAGE = 1024
# Unacknowledged messages in flight to one client (also the Receive Maximum
# the broker announces). Mosquitto's 20 caps a console 30 ms away at about 700
# messages a second; 100 takes 10,000 replies in under 3 s over such a path.
MAX_INFLIGHT_MESSAGES = 100


@dataclass(frozen=True, slots=True)
class Durability:
    """What the broker may queue per client, for a fleet of ``boxes``."""

    boxes: int
    max_queued_messages: int
    max_queued_bytes: int
    max_inflight_messages: int = MAX_INFLIGHT_MESSAGES


def durability(boxes: int) -> Durability:
    """Queue sizes for ``boxes`` boxes: the centre can hold CENTRE_MESSAGES_PER_BOX of each.

    Rounded up to a thousand. A box's own queue gets the same limits (Mosquitto
    has no per-client setting), far more than the commands it can be sent
    while offline.

    >>> durability(2000)
    Durability(boxes=2000, max_queued_messages=42000, max_queued_bytes=43008000, \
max_inflight_messages=100)
    """
    if boxes < 0:
        raise ValueError(f"boxes: {boxes} is negative")
    count = max(MIN_QUEUED_MESSAGES, -(-boxes * CENTRE_MESSAGES_PER_BOX // 1000) * 1000)
    return Durability(boxes, count, count * QUEUED_BYTES_PER_MESSAGE)


def durability_lines(boxes: int) -> list[str]:
    """mosquitto.conf lines for persistence and queues; the test broker runs the same.

    ``persistence_location`` is left to the caller. Mosquitto 2.0 keeps its
    sessions (subscriptions, queued and in-flight messages) and retained
    messages in memory and writes them all, as one file, only when it saves.
    It saves on a timer, every ``BROKER_SAVE_S``: saving after every change
    (``autosave_on_changes``) rewrites the whole database for each queued
    command, which a fleet of thousands cannot carry (docs/provisioning.md
    gives the figures). A crash loses what the broker acknowledged within its
    window (``BROKER_LOSS_WINDOW_S``); the box and the centre re-send that
    when they see the broker go away.
    """
    sizes = durability(boxes)
    return [
        f"# Sized for {boxes} box(es) in the manifest: run broker-config again after an import.",
        "persistence true",
        "autosave_on_changes false",
        f"autosave_interval {BROKER_SAVE_S}",
        # MQTT 5 boxes ask for their own session expiry; this bounds the others.
        "persistent_client_expiration 14d",
        f"max_queued_messages {sizes.max_queued_messages}",
        f"max_queued_bytes {sizes.max_queued_bytes}",
        f"max_inflight_messages {sizes.max_inflight_messages}",
    ]


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    port: int = 8883
    bind: str = ""  # empty: every address
    run_as: str = "mosquitto"  # Mosquitto's `user`: it drops to it, then reads the key
    persistence_dir: str = "/var/lib/mosquitto"
    log_file: str = ""  # empty: stderr (the journal under systemd)
    prefix: str = ""  # where the files will be on the broker host; empty: where written


@dataclass(frozen=True, slots=True)
class BrokerFiles:
    conf: Path
    acl: Path
    boxes: int
    centre: list[str]


def acl_text(devices: Iterable[Device], centre_names: Iterable[str]) -> str:
    """The ACL: patterns for every box's own topics, the centre's rights, each box's groups."""
    devices = sorted(devices, key=lambda d: d.id)
    lines = [
        "# diemcau broker ACL, written by `diemcau-centre broker-config`: regenerate it",
        "# rather than edit it, then reload Mosquitto (SIGHUP re-reads this file).",
        "# A username is the CN of the client's certificate; for a box, its device id.",
        "",
        "# Every box, on its own topics only.",
    ]
    lines += [f"pattern write {device_topic('%u', kind)}" for kind in BOX_WRITES]
    lines.append(f"pattern write {alert_topic('%u', '+')}")
    lines += [f"pattern read {device_topic('%u', kind)}" for kind in BOX_READS]
    lines += ["", "# The centre: reads what every box says, commands boxes and groups."]
    for name in sorted(set(centre_names)):
        check_centre_name(name)
        lines += ["", f"user {name}", f"topic read {device_filter('+')}",
                  f"topic write {device_topic('+', 'cmd')}",
                  f"topic write {group_cmd_topic('+')}"]
    lines += ["", "# Each box in the manifest: the commands of its groups (province, district,",
              "# commune, all). A box not in the manifest gets its own topics only."]
    for device in devices:
        check_name(device.id, "device id")
        lines += ["", f"user {device.id}"]
        lines += [f"topic read {group_cmd_topic(check_name(group, 'group'))}"
                  for group in device.site.groups]
    return "\n".join(lines) + "\n"


def conf_text(settings: BrokerSettings, prefix: Path, boxes: int) -> str:
    """mosquitto.conf for a fleet of ``boxes``: persistence and queues, logging, the listener."""
    log = f"log_dest file {settings.log_file}" if settings.log_file else "log_dest stderr"
    listener = f"listener {settings.port}" + (f" {settings.bind}" if settings.bind else "")
    return "\n".join([
        "# Mosquitto for the diemcau fleet, written by `diemcau-centre broker-config`.",
        "# Regenerate it rather than edit it.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"acl_file {prefix / ACL_FILE}",
        f"persistence_location {settings.persistence_dir.rstrip('/')}/",
        *durability_lines(boxes),
        f"max_packet_size {MAX_PACKET_BYTES}",
        f"user {settings.run_as}",
        log,
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
        "set_tcp_nodelay true",
        "",
        "# Boxes and the centre: mutual TLS; the certificate's CN is the username,",
        "# and the username is the client id, whatever id the client asks for.",
        listener,
        "protocol mqtt",
        f"cafile {prefix / CA_CERT}",
        f"certfile {prefix / SERVER_CERT}",
        f"keyfile {prefix / SERVER_KEY}",
        f"crlfile {prefix / CRL}",
        "tls_version tlsv1.2",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "",
    ])


def write_broker_config(directory: Path, out_dir: Path, settings: BrokerSettings
                        ) -> BrokerFiles:
    """Write mosquitto.conf, the ACL and copies of the certificates the broker needs.

    ``out_dir`` gets everything the broker host needs and nothing more: never
    the CA's key. Raises CaError or ManifestError before writing if something
    is missing.
    """
    if not 0 < settings.port < 65536:
        raise ValueError(f"--port: {settings.port} is not a TCP port")
    sources = {name: directory / name for name in (CA_CERT, CRL, SERVER_CERT, SERVER_KEY)}
    for name, path in sources.items():
        if not path.is_file():
            hint = (f"make it with `diemcau-centre ca server-cert --dir {directory} --host ...`"
                    if name in (SERVER_CERT, SERVER_KEY) else
                    f"make the CA with `diemcau-centre ca init --dir {directory}`")
            raise CaError(f"{path}: no such file ({hint})")
    centre = centre_identities(directory)
    if not centre:
        raise CaError(f"{directory}: no centre identity, so nobody could command the boxes "
                      f"(make one with `diemcau-centre ca client-cert --dir {directory}`)")
    manifest = FleetStore(directory).load()
    try:
        acl = acl_text(manifest.devices.values(), centre)
    except ValueError as exc:
        raise ManifestError(f"{directory}: {exc}") from None
    prefix = Path(settings.prefix) if settings.prefix else out_dir.resolve()

    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, path in sources.items():
        mode = 0o600 if name == SERVER_KEY else 0o644
        write_atomic(out_dir / name, path.read_bytes(), mode)
    write_atomic(out_dir / ACL_FILE, acl.encode(), 0o644)
    conf = conf_text(settings, prefix, len(manifest.devices))
    write_atomic(out_dir / CONF_FILE, conf.encode(), 0o644)
    return BrokerFiles(out_dir / CONF_FILE, out_dir / ACL_FILE, len(manifest.devices), centre)
