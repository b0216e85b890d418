"""A poor link in user space: a UDP relay that delays and drops, both ways, bounded.

Stands in for ``tc netem`` (this kernel has none): packets from the box to
``--listen`` go to ``--to`` after ``--delay-ms`` with probability
``1 - --loss`` of surviving; the answers come back the same way. The relay
holds at most ``--max-pending`` packets and ends after ``--seconds`` (or on
SIGTERM), printing what it forwarded and dropped.

    python -m tests.harness.udp_relay --listen 10.231.0.2:9000 --to 127.0.0.1:9001 \\
        --delay-ms 100 --loss 0.05 --seconds 120
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import select
import signal
import socket
import time


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=_address, required=True)
    parser.add_argument("--to", type=_address, required=True)
    parser.add_argument("--delay-ms", type=float, default=100.0)
    parser.add_argument("--loss", type=float, default=0.05)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--max-pending", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    chance = random.Random(args.seed)
    front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the box's side
    front.bind(args.listen)
    back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the server's side
    back.bind((args.to[0], 0))
    box: tuple[str, int] | None = None
    pending: list[tuple[float, int, socket.socket, bytes, tuple[str, int]]] = []
    order = itertools.count()
    delay_s = args.delay_ms / 1000
    end = time.monotonic() + args.seconds
    counts = {"forwarded": 0, "dropped": 0}
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda number, _frame: stopping.append(number))
    print(f"relaying {args.listen} -> {args.to}", flush=True)
    while time.monotonic() < end and not stopping:
        now = time.monotonic()
        while pending and pending[0][0] <= now:
            _, _, sock, data, where = heapq.heappop(pending)
            sock.sendto(data, where)
        wait = max(0.0, min(pending[0][0] - now if pending else 0.05, 0.05))
        readable, _, _ = select.select([front, back], [], [], wait)
        for sock in readable:
            data, source = sock.recvfrom(65536)
            if sock is front:
                box = source
                out, where = back, args.to
            elif box is not None:
                out, where = front, box
            else:
                continue
            if chance.random() < args.loss or len(pending) >= args.max_pending:
                counts["dropped"] += 1
                continue
            counts["forwarded"] += 1
            heapq.heappush(pending, (time.monotonic() + delay_s, next(order), out, data, where))
    print(f"done: {counts}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
