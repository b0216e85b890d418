"""The ``diemcau-centre`` console: the centre's keys, commands to boxes, the fleet's state.

    diemcau-centre keys init --dir /etc/diemcau/centre
    diemcau-centre keys show
    diemcau-centre send c00001-r1 audio.volume --arg percent=30
    diemcau-centre send group:p01 meeting.invite --arg meeting_id=hop-tinh-2024
    diemcau-centre devices [--json] [--match 'c00001-*']
    diemcau-centre watch [--once] [--interval 1]

Provisioning, in the centre's directory (no configuration needed; see docs/provisioning.md):

    diemcau-centre ca init --dir /srv/centre
    diemcau-centre ca server-cert --dir /srv/centre --host mqtt.diemcau.gov.vn
    diemcau-centre ca client-cert --dir /srv/centre --name centre
    diemcau-centre fleet import sites.csv --dir /srv/centre --service https://enroll.example.vn
    diemcau-centre fleet token c00001-r1 --dir /srv/centre
    diemcau-centre fleet list --dir /srv/centre
    diemcau-centre fleet label --dir /srv/centre
    diemcau-centre broker-config --dir /srv/centre --out /srv/centre/broker
    diemcau-centre enroll-service --dir /srv/centre --broker mqtt.diemcau.gov.vn:8883 \
        --centre-key /srv/centre/centre-signing.pub
    diemcau-centre revoke c00001-r1 --dir /srv/centre

The operations web console (see docs/centre.md):

    diemcau-centre operator add admin --role admin
    diemcau-centre operator add hanoi --role province --province p01
    diemcau-centre console-web --listen 127.0.0.1:8080

Releases (see docs/updates.md):

    diemcau-centre release keys init --dir /srv/centre/release
    diemcau-centre release pack build/release/wheels --out out
    diemcau-centre release sign out/diemcau-0.2.0.tar --key KEY --url URL

The configuration is ``--config FILE``, else ``$DIEMCAU_CENTRE_CONFIG``, else
/etc/diemcau/centre.toml. See docs/centre.md.

Exit codes: 0 done (for ``send``: succeeded or accepted), 1 the command did
not succeed or got no reply, a box of the manifest did not answer or was not
seen (``fleet_dir`` set), or a key would be overwritten, 2 bad command
line or configuration, 3 the broker cannot be reached or refused us,
130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TextIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from diemcau.config import ConfigError
from diemcau.protocol import key_id
from diemcau.protocol.commands import MAX_TOKEN_LIFETIME_S

from . import __version__, console, provision, release
from .config import DEFAULT_PATH, ENV_VAR, CentreConfig, config_path, load_config
from .keys import KeyExists, box_config_line, init_keys, load_signing_key
from .manifest import FleetStore, ManifestError
from .mqtt import MqttError, Session
from .runs import RunError, RunStore, default_state_dir
from .send import (
    UsageError,
    build_args,
    check_command,
    group_members,
    parse_target,
    resend,
    send,
    send_to_group,
)
from .web import run as web_run

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BROKER, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a tool cut off by `| head`
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _ttl(text: str) -> int:
    value = int(text)
    # No longer than a box accepts by default (commands.max_token_lifetime_s).
    if not 1 <= value <= MAX_TOKEN_LIFETIME_S:
        raise argparse.ArgumentTypeError(f"must be 1-{MAX_TOKEN_LIFETIME_S} seconds (a box"
                                         " refuses a command valid for longer)")
    return value


def _parser() -> argparse.ArgumentParser:
    # --config and -v are accepted before and after the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE",
                        help=f"configuration file (default ${ENV_VAR}, else {DEFAULT_PATH})")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log what the console does, to stderr")

    parser = argparse.ArgumentParser(
        prog="diemcau-centre", parents=[common],
        description="Command and watch diemcau boxes from the centre.",
        epilog="exit codes: 0 done, 1 command failed or no reply, 2 bad usage or "
               "configuration, 3 broker unreachable or refused us, 141 output cut off (| head)")
    parser.add_argument("--version", action="version", version=f"diemcau-centre {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    keys = sub.add_parser("keys", help="the centre's signing key")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    init = keys_sub.add_parser("init", parents=[common], help="make the centre's Ed25519 key pair")
    init.add_argument("--dir", default=".", type=Path,
                      help="where to write centre-signing.key and .pub (default: here)")
    init.add_argument("--force", action="store_true", help="replace an existing key pair")
    show = keys_sub.add_parser("show", parents=[common],
                               help="print the kid and the line for a box's config")
    show.add_argument("--key", type=Path, help="private key file (default: signing.key_file)")

    send = sub.add_parser("send", parents=[common], help="send a signed command, wait for replies")
    send.add_argument("target", metavar="TARGET", help="a device id, or group:CODE (group:p01)")
    send.add_argument("cmd", metavar="CMD", help="command name, like meeting.join")
    send.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                      help="an argument; VALUE is JSON if it parses (true, 30), else text")
    send.add_argument("--json", dest="json_args", metavar="OBJECT",
                      help="arguments as one JSON object (--arg values win)")
    send.add_argument("--ttl", type=_ttl, default=120, metavar="S",
                      help="the command expires after S seconds (default 120)")
    send.add_argument("--timeout", type=_positive, default=10.0, metavar="S",
                      help="wait S seconds for replies (default 10)")
    send.add_argument("--no-wait-offline", dest="skip_offline", action="store_true",
                      help="stop once every box has a final answer or is offline by its "
                           "presence, without waiting out --timeout for the offline ones")
    send.add_argument("--json-report", dest="as_json", action="store_true",
                      help="for a group with fleet_dir: the roll-call as JSON, every box named")

    again = sub.add_parser("resend", parents=[common],
                           help="send a group command again to the boxes that did not answer")
    again.add_argument("run", metavar="RUN", nargs="?", default="last",
                       help="the command id of the run (its first characters will do; "
                            "default: the last run)")
    again.add_argument("--timeout", type=_positive, default=10.0, metavar="S",
                       help="wait S seconds for replies (default 10)")
    again.add_argument("--no-wait-offline", dest="skip_offline", action="store_true",
                      help="stop once every box has a final answer or is offline by its "
                           "presence, without waiting out --timeout for the offline ones")
    again.add_argument("--json-report", dest="as_json", action="store_true",
                       help="the roll-call as JSON, every box named")

    dev = sub.add_parser("devices", parents=[common], help="list the boxes the broker knows")
    dev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    dev.add_argument("--match", metavar="PATTERN", help="only device ids like PATTERN (c00001-*)")
    dev.add_argument("--max-wait", type=_positive, default=10.0, metavar="S",
                     help="stop collecting after S seconds (default 10)")

    watch = sub.add_parser("watch", parents=[common], help="a live table of the boxes")
    watch.add_argument("--once", action="store_true", help="print one snapshot and exit")
    watch.add_argument("--interval", type=_positive, default=1.0, metavar="S",
                       help="redraw every S seconds (default 1)")
    watch.add_argument("--match", metavar="PATTERN", help="only device ids like PATTERN")
    watch.add_argument("--max-wait", type=_positive, default=10.0, metavar="S",
                       help="wait at most S seconds for the retained state (default 10)")
    provision.add_parsers(sub, common)
    release.add_parsers(sub, common)
    web_run.add_parsers(sub, common)
    return parser


def _keys_init(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        pair = init_keys(args.dir, force=args.force)
    except OSError as exc:
        print(f"diemcau-centre: cannot write the key pair in {args.dir}: {exc}", file=err)
        return EXIT_FAILED
    print(f"wrote {pair.private_file} (private, mode 0600) and {pair.public_file}", file=out)
    print(f"kid: {pair.kid}", file=out)
    print("\nFor the centre's configuration:\n", file=out)
    print(f'  [signing]\n  key_file = "{pair.private_file.resolve()}"', file=out)
    print("\nBoxes that enroll get this key from the enrollment service (enroll-service "
          f"--centre-key {pair.public_file}). For a box configured by hand, in its "
          "[commands] centre_keys table:\n", file=out)
    print(f"  {box_config_line(pair.public_key)}", file=out)
    return EXIT_OK


def _signing(cfg: CentreConfig) -> tuple[Ed25519PrivateKey, str]:
    """The centre's private key and its kid (configured, else derived from the key)."""
    if not cfg.signing.key_file:
        raise ConfigError("signing", ["signing.key_file: not set; sending needs the centre's "
                                      "key (make one with `diemcau-centre keys init`)"])
    key = load_signing_key(cfg.signing.key_file)
    return key, cfg.signing.kid or key_id(key.public_key())


def _expected(cfg: CentreConfig, group: str | None = None) -> set[str] | None:
    """The boxes of the manifest (of ``group``), or None without ``fleet_dir``."""
    if not cfg.fleet_dir:
        return None
    try:
        devices = FleetStore(Path(cfg.fleet_dir)).load().devices.values()
    except ManifestError as exc:
        raise ConfigError("fleet_dir", [str(exc)]) from None
    if group is None:
        return {d.id for d in devices}
    return group_members(((d.id, d.site.groups) for d in devices), group)


def _expected_places(cfg: CentreConfig, group: str) -> dict[str, str] | None:
    """The boxes of ``group`` in the manifest, each with its province; None without fleet_dir."""
    if not cfg.fleet_dir:
        return None
    try:
        devices = FleetStore(Path(cfg.fleet_dir)).load().devices.values()
    except ManifestError as exc:
        raise ConfigError("fleet_dir", [str(exc)]) from None
    return {d.id: f"{d.site.province.code} {d.site.province.name}" for d in devices
            if group in d.site.groups}


def _runs(cfg: CentreConfig) -> RunStore:
    return RunStore(Path(cfg.state_dir) if cfg.state_dir else default_state_dir())


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.command in provision.COMMANDS:
        return provision.run(args, out, err)
    if args.command in release.COMMANDS:
        return release.run(args, out, err)
    if args.command in web_run.COMMANDS:
        return web_run.run(args, out, err,
                           load_config=lambda: load_config(config_path(getattr(args, "config",
                                                                                None))),
                           signing=_signing)
    if args.command == "keys" and args.keys_command == "init":
        return _keys_init(args, out, err)
    if args.command == "keys" and args.keys_command == "show" and args.key:
        key = load_signing_key(args.key, "--key")
        print(f"kid: {key_id(key.public_key())}\n{box_config_line(key.public_key())}", file=out)
        return EXIT_OK

    cfg = load_config(config_path(getattr(args, "config", None)))
    if args.command == "keys":
        key, kid = _signing(cfg)
        print(f"kid: {kid}\n{box_config_line(key.public_key(), kid)}", file=out)
        return EXIT_OK

    if args.command == "send":
        target = parse_target(args.target)
        cmd = check_command(args.cmd)
        cmd_args = build_args(cmd, args.arg, args.json_args)
        key, kid = _signing(cfg)
        places = (_expected_places(cfg, target.aud.removeprefix("group:"))
                  if target.is_group else None)
        with Session(cfg.mqtt, cfg.client_id) as session:
            session.open()
            if places is not None:
                return send_to_group(session, key, kid, target, cmd, cmd_args,
                                     expected=places, ttl_s=args.ttl, timeout_s=args.timeout,
                                     store=_runs(cfg), out=out, err=err, tty=_tty(err),
                                     as_json=args.as_json, skip_offline=args.skip_offline)
            return send(session, key, kid, target, cmd, cmd_args, ttl_s=args.ttl,
                        timeout_s=args.timeout, out=out, err=err)

    if args.command == "resend":
        store = _runs(cfg)
        record = store.load(args.run)
        key, kid = _signing(cfg)
        with Session(cfg.mqtt, cfg.client_id) as session:
            session.open()
            return resend(session, key, kid, record, timeout_s=args.timeout, store=store,
                          out=out, err=err, tty=_tty(err), as_json=args.as_json,
                          skip_offline=args.skip_offline)

    expected = _expected(cfg)
    with Session(cfg.mqtt, cfg.client_id) as session:
        session.open()
        if args.command == "devices":
            return console.devices(session, as_json=args.json, match=args.match,
                                   max_wait_s=args.max_wait, out=out, err=err,
                                   expected=expected)
        return console.watch(session, once=args.once, interval_s=args.interval,
                             match=args.match, max_wait_s=args.max_wait, out=out, err=err,
                             expected=expected)


def _tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _drop_output(out: TextIO) -> None:
    """Point ``out``'s descriptor at /dev/null, so flushing it at exit raises nothing."""
    try:
        fd = out.fileno()
    except (OSError, ValueError):
        return  # not a file (a StringIO in tests): nothing is flushed at exit
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)


def main(argv: list[str] | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    """Run one console command; return its exit code."""
    out, err = out or sys.stdout, err or sys.stderr
    for stream in (out, err):
        # A site name in Vietnamese must not crash a console on an ASCII terminal.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else
                        logging.WARNING, format=LOG_FORMAT, stream=err)
    try:
        return _run(args, out, err)
    except ConfigError as exc:
        print(exc.report(), file=err)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"diemcau-centre: {exc}", file=err)
        return EXIT_USAGE
    except RunError as exc:
        print(f"diemcau-centre: {exc}", file=err)
        return EXIT_USAGE
    except KeyExists as exc:
        print(f"diemcau-centre: refusing to overwrite: {exc}", file=err)
        return EXIT_FAILED
    except MqttError as exc:
        print(f"diemcau-centre: {exc}", file=err)
        return EXIT_BROKER
    except BrokenPipeError:
        # The output's reader stopped (`| head`): stop quietly, as other shell tools do.
        _drop_output(out)
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        # watch ends this way; for send, the command may still arrive and run.
        return EXIT_OK if args.command == "watch" else EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
