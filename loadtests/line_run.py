"""``python -m loadtests --line``: a sale's waiting room under a crowd, then its rules checked.

The run schedules a fresh sale (``--stock``) whose waiting room is open already and whose
start, the opening that orders the tickets taken before it, is ``--opens-in-s`` away.
``--line-before`` users join before the opening and ``--line-after`` after it; each follows
their ticket's stream and buys once admitted (:mod:`loadtests.line_locustfile`). The run is
judged by the one invariant check of a sale beside the line's rules
(:func:`flashflow.invariants_line.verify_line`), and by :func:`~flashflow.invariants_line.shuffled`
when enough tickets were taken before the opening to tell a shuffle from arrival order.
"""

from __future__ import annotations

import argparse
import math
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from flashflow.capacity.harness import WaitingRoom, create_sale, judge
from flashflow.http.wire import queue_path
from flashflow.invariants_line import LineTold, line_snapshot, shuffled, verify_line

from . import backends
from .launch import LINE_LOCUSTFILE, RunError, locust_base, run_locust
from .records import JOIN, read_records
from .summary import line_figures, summarise
from .verify import Check

#: The stock of the line's sale unless ``--stock`` says otherwise.
LINE_STOCK = 500
#: The fewest early tickets :func:`shuffled` judges.
SHUFFLE_MIN = 100


def add_line_options(parser: argparse.ArgumentParser) -> None:
    """The waiting-room mode's options of ``python -m loadtests``."""
    line = parser.add_argument_group("waiting-room mode")
    option = line.add_argument
    option("--line", action="store_true",
           help=f"Load a fresh sale with a waiting room (of --stock units, default {LINE_STOCK}).")
    option("--line-before", type=int, default=2000, help="Users who join before the opening.")
    option("--line-after", type=int, default=1000, help="Users who join after it.")
    option("--opens-in-s", type=float, default=15.0,
           help="Seconds from the sale's creation to its start, the opening.")
    option("--admit-per-s", type=float, default=200.0, help="Tickets admitted a second.")
    option("--admission-s", type=int, default=30, help="Each admission's window to buy in.")
    option("--line-spawn-rate", type=float, default=500.0, help="Users started a second.")
    option("--line-s", type=float, default=60.0,
           help="The longest the crowd stays after the opening.")


def line_command(args: argparse.Namespace, host: str, records: Path, tag: str,
                 sale_id: uuid.UUID, opens_at: float) -> list[str]:
    """The locust command line of a waiting-room run."""
    return [*locust_base(args, LINE_LOCUSTFILE, host, records, tag),
            "--sale-id", str(sale_id), "--opens-at", f"{opens_at:.3f}",
            "--line-before", str(args.line_before), "--line-after", str(args.line_after),
            "--line-spawn-rate", str(args.line_spawn_rate), "--line-s", str(args.line_s)]


def wait_for_line(host: str, sale_id: uuid.UUID, timeout_s: float = 20.0) -> dict[str, Any]:
    """The sale's line once the server serves it."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with httpx.Client(base_url=host, timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                answer = client.get(queue_path(sale_id))
                if answer.status_code == 200:
                    return answer.json()["data"]
                last = f"{answer.status_code} {answer.text[:200]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.2)
    raise RunError(f"the server at {host} did not serve the line of {sale_id} in "
                   f"{timeout_s}s: {last}")


def load_line_and_verify(args: argparse.Namespace, host: str, database_url: str,
                         redis_url: str, key_prefix: str, records: Path) -> dict[str, Any]:
    """Create the sale and its line, run the crowd, and judge it; return the summary."""
    stock = LINE_STOCK if args.stock is None else args.stock
    room = WaitingRoom(opens_before_s=math.ceil(args.opens_in_s) + 60,
                       admit_per_s=args.admit_per_s, window_s=args.admission_s)
    sale = create_sale(database_url, "Waiting Room Sneakers", stock,
                       args.line_s + args.admission_s + 60, starts_in_s=args.opens_in_s,
                       waiting_room=room)
    wait_for_line(host, sale.id)
    before = backends.ledger_snapshot(database_url, sale.id)
    opens_at = sale.start_time.timestamp()
    print(f"waiting room of sale {sale.id} ({stock} units) at {host}: {args.line_before} "
          f"users before the opening in {opens_at - time.time():.1f} s, {args.line_after} "
          f"after, {args.admit_per_s:g} admitted a second", flush=True)
    tag = f"wr{uuid.uuid4().hex[:8]}"
    run_locust(line_command(args, host, records, tag, sale.id, opens_at),
               records / "locust.log", max(opens_at - time.time(), 0) + args.line_s + 120)
    time.sleep(args.settle_s)
    seen = list(read_records(records))
    checks = judge(seen, before, database_url, redis_url, key_prefix, sale.id)
    line = line_snapshot(database_url, sale.id)
    checks += verify_line(line, LineTold.of(seen))
    if sum(t.early for t in line.tickets) >= SHUFFLE_MIN:
        checks.append(shuffled(line))
    if not any(r.kind == JOIN for r in seen):
        checks.append(Check("the load reached the server", False, "no join was recorded"))
    summary = summarise(seen, checks)
    summary.update(sale_id=str(sale.id), host=host, records=str(records),
                   line=line_figures(seen, line))
    return summary
