"""``diemcau-centre console-web`` and ``diemcau-centre operator``: start the console, manage logins.

    diemcau-centre operator add admin --role admin            # password from stdin or a prompt
    diemcau-centre operator add hanoi --role province --province p01
    diemcau-centre console-web --listen 127.0.0.1:8080       # the service and the web app

The database is ``--database URL``, else ``$DIEMCAU_CONSOLE_DATABASE``, else
``console.db`` (SQLite) in the current directory; ``postgresql+psycopg://...``
for PostgreSQL.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import secrets
import sys
from pathlib import Path
from typing import TextIO

from diemcau.config import ConfigError

from ..fleet import DEFAULT_SILENCE_S, HEALTH_PERIODS_BEFORE_GONE
from . import DEFAULT_HISTORY_DAYS

COMMANDS = frozenset({"console-web", "operator"})
DATABASE_ENV = "DIEMCAU_CONSOLE_DATABASE"
DEFAULT_DATABASE = "sqlite:///console.db"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

log = logging.getLogger("diemcau_centre.web")


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, like 127.0.0.1:8080, not {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 1 <= value <= 86400 * 365:
        raise argparse.ArgumentTypeError(f"expected seconds (1 or more), not {text!r}")
    return value


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 36500:
        raise argparse.ArgumentTypeError(f"expected a number of days above 0, not {text!r}")
    return value


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    database = argparse.ArgumentParser(add_help=False)
    database.add_argument("--database", metavar="URL",
                          help=f"the console's database (default ${DATABASE_ENV}, else "
                               f"{DEFAULT_DATABASE} here)")
    web = sub.add_parser("console-web", parents=[common, database],
                         help="the operations web console and the centre service behind it")
    web.add_argument("--listen", type=_listen, default=("127.0.0.1", 8080), metavar="HOST:PORT",
                     help="where the web console listens (default 127.0.0.1:8080)")
    web.add_argument("--secret-file", type=Path, metavar="FILE",
                     help="key that signs login cookies (default: new on every start, so "
                          "operators log in again after a restart)")
    web.add_argument("--gone-after", type=_seconds, default=DEFAULT_SILENCE_S, metavar="SECONDS",
                     help="show a box gone when nothing came from it for this long (default "
                          f"{DEFAULT_SILENCE_S:.0f}: {HEALTH_PERIODS_BEFORE_GONE} of the boxes' "
                          "health periods; set it from their health.interval_s)")
    web.add_argument("--keep-history-days", type=_days, default=DEFAULT_HISTORY_DAYS,
                     metavar="DAYS", help="how long the boxes' timelines are kept (default "
                                          f"{DEFAULT_HISTORY_DAYS:.0f}); older is pruned hourly")
    web.add_argument("--https-only", action="store_true",
                     help="send the login cookie only over HTTPS (behind a TLS proxy)")

    op = sub.add_parser("operator", help="the web console's logins")
    actions = op.add_subparsers(dest="operator_command", required=True, metavar="ACTION")
    add = actions.add_parser("add", parents=[common, database],
                             help="add an operator, or set their password and role")
    add.add_argument("username")
    add.add_argument("--role", choices=("admin", "province"), required=True)
    add.add_argument("--province", action="append", default=[], metavar="CODE",
                     help="a province the operator sees and commands (p01); repeat for more")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from standard input (else a prompt)")
    actions.add_parser("list", parents=[common, database], help="list the operators")
    rm = actions.add_parser("remove", parents=[common, database], help="remove an operator")
    rm.add_argument("username")


def database_url(args: argparse.Namespace) -> str:
    return args.database or os.environ.get(DATABASE_ENV) or DEFAULT_DATABASE


def run(args: argparse.Namespace, out: TextIO, err: TextIO, load_config: object = None,
        signing: object = None) -> int:
    from .store import FleetDb, OperatorError

    url = database_url(args)
    if args.command == "operator":
        db = FleetDb(url)
        try:
            if args.operator_command == "add":
                password = _password(args.password_stdin, err)
                op = db.add_operator(args.username, password, args.role, args.province)
                print(f"operator {op.username}: {op.role}"
                      + (f" of {', '.join(sorted(op.provinces))}" if op.provinces else ""),
                      file=out)
            elif args.operator_command == "list":
                for op in db.operators_list():
                    print(f"{op.username}  {op.role}  {','.join(sorted(op.provinces)) or '-'}",
                          file=out)
            elif not db.remove_operator(args.username):
                print(f"diemcau-centre: no operator {args.username!r}", file=err)
                return EXIT_FAILED
        except OperatorError as exc:
            print(f"diemcau-centre: {exc}", file=err)
            return EXIT_USAGE
        finally:
            db.close()
        return EXIT_OK
    return _serve(args, url, out, err, load_config, signing)


def _password(from_stdin: bool, err: TextIO) -> str:
    if from_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise ConfigError("password", ["the two passwords differ"])
    return first


def _serve(args: argparse.Namespace, url: str, out: TextIO, err: TextIO, load_config: object,
           signing: object) -> int:
    import uvicorn

    from ..manifest import FleetStore, ManifestError
    from .app import make_app
    from .service import CentreService
    from .store import FleetDb

    cfg = load_config()  # type: ignore[operator]
    key, kid = (signing(cfg) if cfg.signing.key_file else (None, ""))  # type: ignore[operator]
    secret = secrets.token_hex(32)
    if args.secret_file:
        try:
            secret = args.secret_file.read_text().strip()
        except OSError as exc:
            raise ConfigError("--secret-file", [f"cannot read {args.secret_file}: {exc}"]
                              ) from None
    db = FleetDb(url, silence_s=args.gone_after, history_days=args.keep_history_days)
    if cfg.fleet_dir:
        try:
            count = db.load_manifest(FleetStore(Path(cfg.fleet_dir)).load())
        except ManifestError as exc:
            raise ConfigError("fleet_dir", [str(exc)]) from None
        print(f"the manifest lists {count} box(es)", file=err)
    if not db.operators_list():
        print("no operator yet: add one with `diemcau-centre operator add NAME --role admin`",
              file=err)
    service = CentreService(db, cfg.mqtt, cfg.client_id, key=key, kid=kid)
    service.start()
    host, port = args.listen
    print(f"web console on http://{host}:{port}/ (database {url}); "
          f"{'commands signed with kid ' + kid if key else 'no signing key: watching only'}",
          file=err, flush=True)
    app = make_app(db, service, secret_key=secret, https_only=args.https_only)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning",
                    timeout_graceful_shutdown=2)
    finally:
        service.stop()
        db.close()
    return EXIT_OK
