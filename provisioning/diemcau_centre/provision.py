"""The provisioning commands of ``diemcau-centre``: ``ca``, ``fleet``, ``broker-config``.

They work on the centre's directory (``--dir``) and need no configuration
file and no broker. Exit codes as for the rest of the console: 0 done, 1 not
done (a file would be overwritten, a file cannot be written), 2 bad usage or
bad input (a bad sites file, no CA yet); nothing is written when it is not 0.

    diemcau-centre ca init --dir /srv/centre
    diemcau-centre fleet import sites.csv --dir /srv/centre --service https://enroll.example.vn
    diemcau-centre broker-config --dir /srv/centre --out /srv/centre/broker
    diemcau-centre enroll-service --dir /srv/centre --broker mqtt.example.vn:8883 \\
        --centre-key /srv/centre/centre-signing.pub
    diemcau-centre revoke c00001-r1 --dir /srv/centre
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import time
from pathlib import Path
from typing import Any, TextIO

from diemcau.protocol import key_id, public_key_from_text, public_key_to_text
from diemcau.protocol.enrollment import Broker

from .broker_config import BrokerSettings, write_broker_config
from .ca import (
    CA_DAYS,
    CLIENT_DAYS,
    CRL,
    DEVICE_DAYS,
    SERVER_CERT,
    SERVER_DAYS,
    SERVER_KEY,
    CaError,
    certificates_by_device,
    init_ca,
    issue_client_cert,
    issue_server_cert,
    issued_to,
    load_ca,
    parse_lifetime,
    revoke_device,
    revoked_serials,
)
from .files import write_atomic
from .identity import is_device_id
from .manifest import (
    BOOT_FILE_NAME,
    TOKEN_DAYS,
    FleetStore,
    ImportResult,
    ManifestError,
    SitesError,
    import_sites,
    reissue_tokens,
)

COMMANDS = frozenset({"ca", "fleet", "broker-config", "enroll-service", "revoke"})
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _days(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 36500:
        raise argparse.ArgumentTypeError("must be 1-36500 days")
    return value


def _lifetime(text: str) -> dt.timedelta:
    try:
        return parse_lifetime(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration(lifetime: dt.timedelta) -> str:
    seconds = int(lifetime.total_seconds())
    return f"{seconds // 86400} days" if seconds % 86400 == 0 else f"{seconds} s"


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"{text} is not a TCP port")
    return value


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``ca``, ``fleet`` and ``broker-config`` to the console's subcommands."""
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--dir", required=True, type=Path,
                       help="the centre's directory: the CA, the manifest, enrollment files")

    ca = sub.add_parser("ca", help="the centre's certificate authority")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True, metavar="ACTION")
    init = ca_sub.add_parser("init", parents=[common, where],
                             help="make the CA (EC P-256) and an empty revocation list")
    init.add_argument("--days", type=_days, default=CA_DAYS, help=f"(default {CA_DAYS})")
    init.add_argument("--force", action="store_true",
                      help="replace an existing CA: every certificate it signed stops working")
    server = ca_sub.add_parser("server-cert", parents=[common, where],
                               help="the broker's key and certificate")
    server.add_argument("--host", action="append", required=True, metavar="NAME",
                        help="a name or address the boxes connect to (repeat for more)")
    server.add_argument("--days", type=_days, default=SERVER_DAYS,
                        help=f"(default {SERVER_DAYS})")
    server.add_argument("--force", action="store_true", help="replace an existing one")
    client = ca_sub.add_parser("client-cert", parents=[common, where],
                               help="a key and certificate for one of the centre's identities")
    client.add_argument("--name", default="centre",
                        help="'centre' or 'centre-<name>' (default centre); one per console "
                             "that runs at the same time as another")
    client.add_argument("--days", type=_days, default=CLIENT_DAYS,
                        help=f"(default {CLIENT_DAYS})")
    client.add_argument("--force", action="store_true", help="replace an existing one")

    fleet = sub.add_parser("fleet", help="the fleet manifest and enrollment tokens")
    fleet_sub = fleet.add_subparsers(dest="fleet_command", required=True, metavar="ACTION")
    imp = fleet_sub.add_parser("import", parents=[common, where],
                               help="add sites from a CSV; a token and enrollment file per box")
    imp.add_argument("sites", type=Path, metavar="SITES_CSV")
    imp.add_argument("--service", metavar="URL",
                     help="the enrollment service, https://host[:port] (kept for later imports)")
    imp.add_argument("--token-days", type=_days, default=TOKEN_DAYS,
                     help=f"tokens expire after this many days (default {TOKEN_DAYS})")
    token = fleet_sub.add_parser("token", parents=[common, where],
                                 help="a new token and enrollment file (the old one stops working)")
    token.add_argument("devices", nargs="+", metavar="DEVICE")
    token.add_argument("--token-days", type=_days, default=TOKEN_DAYS,
                       help=f"(default {TOKEN_DAYS})")
    label = fleet_sub.add_parser("label", parents=[common, where],
                                 help="printable labels with a QR code (never the token)")
    label.add_argument("devices", nargs="*", metavar="DEVICE",
                       help="the boxes (default: every box in the manifest)")
    label.add_argument("--out", type=Path, help="where to write (default DIR/labels)")
    show = fleet_sub.add_parser("list", parents=[common, where],
                                help="the boxes in the manifest and their tokens")
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")

    broker = sub.add_parser("broker-config", parents=[common, where],
                            help="write Mosquitto's configuration and ACL for the fleet")
    broker.add_argument("--out", type=Path, help="where to write (default DIR/broker)")
    broker.add_argument("--port", type=_port, default=8883, help="(default 8883)")
    broker.add_argument("--bind", default="", metavar="ADDRESS",
                        help="listen on this address only (default: every address)")
    broker.add_argument("--run-as", default="mosquitto", metavar="USER",
                        help="the user Mosquitto runs as (default mosquitto)")
    broker.add_argument("--persistence-dir", default="/var/lib/mosquitto", metavar="DIR",
                        help="(default /var/lib/mosquitto)")
    broker.add_argument("--log-file", default="", metavar="FILE",
                        help="(default: stderr, which systemd puts in the journal)")
    broker.add_argument("--prefix", default="", metavar="DIR",
                        help="where the files will be on the broker host (default: --out)")

    service = sub.add_parser("enroll-service", parents=[common, where],
                             help="run the enrollment service (HTTPS) until stopped")
    service.add_argument("--broker", required=True, metavar="HOST[:PORT]",
                         help="the broker's address, as boxes reach it (port default 8883)")
    service.add_argument("--centre-key", action="append", required=True, type=Path,
                         metavar="FILE", help="a command-signing public key (PEM, as `keys "
                         "init` writes centre-signing.pub) boxes should trust; repeat for more")
    service.add_argument("--bind", default="", metavar="ADDRESS",
                         help="listen on this address only (default: every address)")
    service.add_argument("--port", type=_port, default=8443, help="(default 8443)")
    service.add_argument("--cert", type=Path, metavar="FILE",
                         help="the service's certificate (default DIR/broker.pem: it must name "
                              "the host in the enrollment files' service address)")
    service.add_argument("--key", type=Path, metavar="FILE",
                         help="its private key (default DIR/broker.key)")
    service.add_argument("--cert-lifetime", type=_lifetime, default=f"{DEVICE_DAYS}d",
                         metavar="DURATION",
                         help=f"how long a box's certificate is valid, like 365d, 12h or 60s "
                              f"(default {DEVICE_DAYS}d; boxes renew at two thirds of it)")

    revoke = sub.add_parser("revoke", parents=[common, where],
                            help="revoke every certificate of a box (it can no longer connect)")
    revoke.add_argument("device", metavar="DEVICE")
    revoke.add_argument("--broker-dir", type=Path, metavar="DIR",
                        help="also copy the new crl.pem here (default DIR/broker if it exists)")


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run one provisioning command; KeyExists goes up to the console (exit code 1)."""
    try:
        if args.command == "ca":
            return _ca(args, out)
        if args.command == "fleet":
            return _fleet(args, out)
        if args.command == "enroll-service":
            return _enroll_service(args, out)
        if args.command == "revoke":
            return _revoke(args, out)
        return _broker_config(args, out)
    except SitesError as exc:
        print(exc.report(), file=err)
        return EXIT_USAGE
    except (CaError, ManifestError, ValueError) as exc:
        print(f"diemcau-centre: {exc}", file=err)
        return EXIT_USAGE
    except BrokenPipeError:
        raise  # the reader of our output went away: main() ends quietly
    except OSError as exc:
        print(f"diemcau-centre: cannot write in {args.dir}: {exc}", file=err)
        return EXIT_FAILED


def _ca(args: argparse.Namespace, out: TextIO) -> int:
    if args.ca_command == "init":
        ca = init_ca(args.dir, force=args.force, days=args.days)
        print(f"wrote {ca.directory / 'ca.key'} (private, mode 0600), {ca.cert_file} and "
              f"{ca.crl_file}", file=out)
        print("Keep ca.key on the centre only, and a copy offline: whoever holds it can "
              "make any box or the centre.", file=out)
        return EXIT_OK
    ca = load_ca(args.dir)
    if args.ca_command == "server-cert":
        cert, key = issue_server_cert(ca, args.host, days=args.days, force=args.force)
        print(f"wrote {cert} and {key} (private, mode 0600) for {', '.join(args.host)}",
              file=out)
        return EXIT_OK
    cert, key = issue_client_cert(ca, args.name, days=args.days, force=args.force)
    print(f"wrote {cert} and {key} (private, mode 0600) for the centre identity {args.name}",
          file=out)
    print(f"\nFor the centre's configuration:\n\n  [mqtt.tls]\n"
          f"  ca_file = \"{ca.cert_file.resolve()}\"\n  cert_file = \"{cert.resolve()}\"\n"
          f"  key_file = \"{key.resolve()}\"", file=out)
    return EXIT_OK


def _utc(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M")


def _report(result: ImportResult, out: TextIO) -> None:
    for device in result.added:
        site = device.site
        print(f"  {device.id:<11} {site.commune.name}, {site.room_name or f'room {site.room}'}"
              f"  ->  {result.files[device.id]}", file=out)
    if result.files:
        print(f"Tokens expire {_utc(result.expires_at)} UTC. Copy each file to its box's SD "
              f"card (boot partition) as {BOOT_FILE_NAME}; each works once, for that box only.",
              file=out)


def _fleet(args: argparse.Namespace, out: TextIO) -> int:
    if args.fleet_command == "import":
        try:
            text = args.sites.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{args.sites}: not UTF-8 text (save it as 'CSV UTF-8'): {exc}"
                             ) from None
        except OSError as exc:
            raise ValueError(f"{args.sites}: cannot read: {exc.strerror}") from None
        result = import_sites(args.dir, text, str(args.sites), service=args.service,
                              token_days=args.token_days)
        print(f"{args.sites}: {len(result.added)} new box(es), {len(result.unchanged)} already "
              "in the manifest (unchanged)", file=out)
        _report(result, out)
        return EXIT_OK
    if args.fleet_command == "token":
        result = reissue_tokens(args.dir, args.devices, token_days=args.token_days)
        print(f"new tokens for {len(result.added)} box(es); their earlier tokens no longer work",
              file=out)
        _report(result, out)
        return EXIT_OK

    if args.fleet_command == "label":
        from .label import LABELS_DIR, write_labels

        out_dir = args.out or args.dir / LABELS_DIR
        written = write_labels(args.dir, args.devices, out_dir)
        print(f"wrote {len(written) // 2} label(s) in {out_dir}: DEVICE.svg to print "
              "(90 x 50 mm), DEVICE.png the QR code alone. They carry no secret: stick "
              "each on its box.", file=out)
        return EXIT_OK

    manifest = FleetStore(args.dir).load()
    now = time.time()
    certs = _certificates(args.dir, now)
    records = []
    for device in sorted(manifest.devices.values(), key=lambda d: d.id):
        token = manifest.latest_token(device.id)
        site = device.site
        cert_state, cert_until = certs.get(device.id, (None, None))
        records.append({
            "device": device.id, "province": site.province.code, "district": site.district.code,
            "commune": site.commune.code, "commune_name": site.commune.name, "room": site.room,
            "room_name": site.room_name, "groups": site.groups,
            "token": token.state(now) if token else None,
            "token_expires": token.expires_at if token else None,
            "enrolled": token.used_at if token else None,
            "certificate": cert_state, "certificate_expires": cert_until,
        })
    if args.json:
        print(json.dumps(records, ensure_ascii=False, indent=1), file=out)
        return EXIT_OK
    if not records:
        print(f"no boxes in {args.dir} (add them with `diemcau-centre fleet import`)", file=out)
        return EXIT_OK
    print(f"{'DEVICE':<11} {'PROV':<4} {'DIST':<5} {'COMMUNE':<28} {'TOKEN':<9} "
          f"{'EXPIRES/ENROLLED (UTC)':<22} {'CERTIFICATE':<11} UNTIL (UTC)", file=out)
    for r in records:
        when = r["enrolled"] if r["token"] == "used" else r["token_expires"]
        print(f"{r['device']:<11} {r['province']:<4} {r['district']:<5} {r['commune_name']:<28.28}"
              f" {r['token'] or '-':<9} {_utc(when):<22} {r['certificate'] or '-':<11} "
              f"{_utc(r['certificate_expires'])}".rstrip(), file=out)
    return EXIT_OK


def _certificates(directory: Path, now: float) -> dict[str, tuple[str, float]]:
    """Each box's latest certificate: ``valid``, ``expired`` or ``revoked``, and its end."""
    try:
        ca = load_ca(directory)
    except CaError:
        return {}  # no CA yet: no certificates either
    revoked = revoked_serials(directory)
    states = {}
    for device, certs in certificates_by_device(ca).items():
        latest = certs[-1]
        until = latest.not_valid_after_utc.timestamp()
        state = ("revoked" if latest.serial_number in revoked else
                 "expired" if until < now else "valid")
        states[device] = (state, until)
    return states


def _broker_config(args: argparse.Namespace, out: TextIO) -> int:
    out_dir = args.out or args.dir / "broker"
    settings = BrokerSettings(port=args.port, bind=args.bind, run_as=args.run_as,
                              persistence_dir=args.persistence_dir, log_file=args.log_file,
                              prefix=args.prefix)
    files = write_broker_config(args.dir, out_dir, settings)
    print(f"wrote {files.conf} and {files.acl}: {files.boxes} box(es), centre identities "
          f"{', '.join(files.centre)}", file=out)
    print(f"Mosquitto runs as {settings.run_as} and must be able to read broker.key: on the "
          f"broker host, chown it to {settings.run_as}. After a fleet import, run this "
          "again and reload Mosquitto (SIGHUP) so new boxes get their groups' commands.",
          file=out)
    return EXIT_OK


def _broker_address(text: str) -> Broker:
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:  # no port, or a bracketed IPv6 address alone
        host, port = text, "8883"
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--broker {text!r}: expected HOST or HOST:PORT")
    return Broker(host=host, port=int(port))


def _centre_keys(files: list[Path]) -> dict[str, str]:
    keys = {}
    for path in files:
        try:
            public = public_key_from_text(path.read_text())
        except OSError as exc:
            raise ValueError(f"--centre-key {path}: cannot read: {exc.strerror}") from None
        except ValueError as exc:
            raise ValueError(f"--centre-key {path}: not an Ed25519 public key ({exc})") from None
        keys[key_id(public)] = public_key_to_text(public)
    return keys


def _enroll_service(args: argparse.Namespace, out: TextIO) -> int:
    import signal
    import threading

    from .enroll_service import ServiceSettings, make_server

    settings = ServiceSettings(args.dir, _broker_address(args.broker),
                               _centre_keys(args.centre_key), args.cert_lifetime)
    # A service's log is its operators' view: each box enrolled or renewed, and each
    # request, are worth seeing without -v.
    logging.getLogger("diemcau_centre.enroll").setLevel(logging.INFO)
    cert = args.cert or args.dir / SERVER_CERT
    key = args.key or args.dir / SERVER_KEY
    server = make_server(settings, (args.bind, args.port), cert, key)

    def stop(signum: int, _frame: object) -> None:
        # shutdown() waits for serve_forever(), which runs in this thread: ask from another.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"enrollment service on {args.bind or '*'}:{server.server_address[1]}; boxes go to "
          f"{settings.broker.host}:{settings.broker.port}; centre keys "
          f"{', '.join(settings.centre_keys)}; certificates valid {_duration(settings.cert_lifetime)}",
          file=out, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return EXIT_OK


def _revoke(args: argparse.Namespace, out: TextIO) -> int:
    ca = load_ca(args.dir)
    if not is_device_id(args.device):
        raise ValueError(f"{args.device[:40]!r} is not a box's device id (like c00001-r1); "
                         "nothing was changed")
    if not issued_to(ca, args.device):
        # Nothing is written: a typo must not touch the CRL the whole fleet depends on.
        if args.device in FleetStore(args.dir).load().devices:
            raise ValueError(f"{args.device} has never enrolled: it has no certificate to "
                             "revoke; nothing was changed")
        raise ValueError(f"{args.device[:40]!r} is not a box of this centre (not in the "
                         "manifest, no certificate); nothing was changed. `diemcau-centre "
                         "fleet list` shows the boxes")
    new = revoke_device(ca, args.device)
    broker_dir = args.broker_dir or (args.dir / "broker")
    copied = ""
    if args.broker_dir or broker_dir.is_dir():
        write_atomic(broker_dir / CRL, ca.crl_file.read_bytes())
        copied = f" and {broker_dir / CRL}"
    what = (f"revoked {len(new)} certificate(s) of {args.device}" if new else
            f"every certificate of {args.device} was already revoked")
    print(f"{what}; wrote {ca.crl_file}{copied}", file=out)
    print("Copy crl.pem to the broker host and reload Mosquitto (systemctl reload mosquitto, "
          "i.e. SIGHUP): new connections with a revoked certificate are refused from then on. "
          "A box connected at that moment stays until it reconnects: restart Mosquitto "
          "(systemctl restart mosquitto) to cut it off at once.", file=out)
    return EXIT_OK
