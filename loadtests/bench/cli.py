"""``python -m loadtests.bench``: measure the server side by side and write the results."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import signal
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from flashflow.capacity.harness import backing_services

from . import report, wrk
from .sale import SaleRun, run_sale
from .scenarios import Measurement, Options, run_configuration

ROOT = Path(__file__).resolve().parents[2]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line of the benchmark."""
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m loadtests.bench", description=__doc__)
    p.add_argument("--database-url", default=env("FLASHFLOW_DATABASE_URL"),
                   help="PostgreSQL URL allowed to create databases (default: embedded).")
    p.add_argument("--redis-url", default=env("FLASHFLOW_REDIS_URL"),
                   help="Redis URL (default: embedded).")
    p.add_argument("--duration-s", type=float, default=10.0,
                   help="Seconds per run (wrk counts whole seconds).")
    p.add_argument("--warmup-s", type=float, default=2.0,
                   help="Seconds of warm-up before each scenario's runs (0: none).")
    p.add_argument("--runs", type=int, default=3, help="Runs per figure; the median counts.")
    p.add_argument("--connections", type=int, action="append",
                   help="Connection counts to measure (repeatable); default 64 and 200.")
    p.add_argument("--threads", type=int, default=2, help="wrk threads.")
    p.add_argument("--workers", type=int, action="append",
                   help="Worker counts to measure (repeatable); default 1 and 2.")
    p.add_argument("--quick", action="store_true",
                   help="1 s runs, no warm-up, no whole sale: the harness in seconds.")
    p.add_argument("--sale-stock", type=int, default=10_000)
    p.add_argument("--sale-users", type=int, default=100_000)
    p.add_argument("--no-sale", action="store_true", help="Skip the whole-sale run.")
    p.add_argument("--profile", type=Path, help="Record py-spy profiles (raw) here; they "
                   "slow the server, so the figures of such a run are not the real ones.")
    p.add_argument("--auth", action="store_true",
                   help="Run Flash Flow with buyer authentication on (a fresh HS256 secret): "
                        "every purchase carries a minted bearer token.")
    p.add_argument("--auth-pool", type=int, default=20_000,
                   help="With --auth, tokens minted per wrk thread for each timed purchase "
                        "run; past them its users repeat (409 ALREADY_PURCHASED).")
    p.add_argument("--json", type=Path, help="Write the results as JSON here.")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "performance.md",
                   help="The Markdown page to write.")
    p.add_argument("--no-doc", action="store_true", help="Do not write the Markdown page.")
    p.add_argument("--before", type=Path,
                   help="The JSON of an earlier run (--json) to set beside this one's figures.")
    return p.parse_args(argv)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run every scenario and the whole sale, print and write the results."""
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: servers stop and databases are dropped on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    if wrk.available() is None:
        print("the benchmark needs wrk (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    command = "python -m loadtests.bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    if args.quick:
        args.duration_s, args.warmup_s, args.no_sale = 1.0, 0.0, True
    options = Options(tuple(sorted(set(args.connections or (64, 200)))), args.threads,
                      args.duration_s, args.warmup_s, args.runs, args.profile,
                      secrets.token_urlsafe(32) if args.auth else None, args.auth_pool)
    workers = sorted(set(args.workers or (1, 2)))
    measurements: list[Measurement] = []
    sales: list[SaleRun] = []
    with ExitStack() as stack:
        log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ffbench-")))
        admin_url, redis_url = stack.enter_context(backing_services(
            log_dir / "data", args.database_url or None, args.redis_url or None))
        for count in workers:
            print(f"measuring with {count} worker(s)", flush=True)
            measured = run_configuration(count, admin_url, redis_url, options, log_dir)
            measurements += measured
            for m in report.ordered(measured):
                print(f"  {m.scenario:<40} {m.connections:>4}c {m.per_s:>8,.0f}/s "
                      f"p99 {m.p99_ms:7.1f} ms  {report.answers(m.answers)}", flush=True)
            if not args.no_sale:
                sale = run_sale(count, admin_url, redis_url, options, log_dir,
                                args.sale_stock, args.sale_users)
                sales.append(sale)
                print(f"  whole sale: sold out in {sale.ledger_sold_out_s} s, "
                      f"invariants {'held' if sale.held else 'BROKEN'}", flush=True)
    before = json.loads(args.before.read_text()) if args.before else None
    page = report.markdown(command, options, workers, measurements, sales, before)
    print(page)
    print("\ngoals (reported, not asserted):")
    print("\n".join(report.goal_lines(measurements)))
    if not args.no_doc:
        args.doc.parent.mkdir(parents=True, exist_ok=True)
        existing = args.doc.read_text() if args.doc.exists() else ""
        args.doc.write_text(report.keep_other_sections(page, existing))
    if args.json:
        data = report.as_json(command, options, workers, measurements, sales)
        args.json.write_text(json.dumps(data, indent=2))
    return 0 if all(s.held for s in sales) else 1
