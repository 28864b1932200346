"""``python -m loadtests``: run the stampede headless, then verify the invariants.

Against ``--host URL`` it needs the server's PostgreSQL and Redis (``--database-url``,
``--redis-url``, ``--key-prefix``, or the matching ``FLASHFLOW_*`` variables); without a
URL it starts ``flashflow up`` on embedded servers in a temporary directory and uses theirs.
The fresh sale (``--stock``) and the judgement are the load harness's
(:mod:`flashflow.capacity.harness`).

``--checkout`` loads a sale with holds (``--hold-s``) through the payment step: a share of
holders pay after a random delay, the rest walk away, and waitlisted buyers follow their
stream and pay when offered a hold (:mod:`loadtests.locustfile`). It needs the server's
admin token (``--admin-token``; an embedded server is started with a fresh one).
``--line`` loads a fresh sale's waiting room instead (:mod:`loadtests.line_run`).
Exit status: 0 when every invariant held, 1 when one broke, 2 when the run could not happen.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from actors.keys import KEY_PREFIX
from flashflow.capacity.harness import create_sale, judge, new_key_prefix
from flashflow.http.wire import CURRENT, READYZ

from . import backends
from .launch import LOCUSTFILE, RunError, locust_base, run_locust
from .line_run import add_line_options, load_line_and_verify
from .records import PURCHASE, read_records
from .server import ServerStartError, start_embedded
from .shape import Stages
from .summary import checkout_figures, render, summarise
from .verify import Check


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line of ``python -m loadtests``."""
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m loadtests", description=__doc__.splitlines()[0])
    p.add_argument("--host", help="Base URL of a running server; omitted: start `flashflow up`.")
    p.add_argument("--database-url", default=env("FLASHFLOW_DATABASE_URL"))
    p.add_argument("--redis-url", default=env("FLASHFLOW_REDIS_URL"))
    p.add_argument("--key-prefix", default=env("FLASHFLOW_KEY_PREFIX", KEY_PREFIX))
    p.add_argument("--stock", type=int, help="Schedule a fresh sale of this stock and load it "
                   "(needs the database); default: load the current sale as it is.")
    p.add_argument("--ramp-s", type=float, default=10.0)
    p.add_argument("--peak-s", type=float, default=30.0)
    p.add_argument("--cool-s", type=float, default=10.0)
    p.add_argument("--ramp-users", type=int, default=50)
    p.add_argument("--peak-users", type=int, default=200)
    p.add_argument("--attempts", type=int, default=3, help="Concurrent attempts per visit.")
    p.add_argument("--think-s", type=float, default=0.1)
    p.add_argument("--user-pool", type=int, help="Distinct user ids (default 10x the stock left).")
    p.add_argument("--processes", type=int, default=1, help="Locust processes (-1: one a core).")
    p.add_argument("--records", type=Path, help="Where clients record responses (default: temp).")
    p.add_argument("--json", type=Path, help="Also write the summary as JSON here.")
    p.add_argument("--web", action="store_true", help="Show locust's web UI while it runs.")
    p.add_argument("--auth-secret", default=env("FLASHFLOW_AUTH_JWT_SECRET"),
                   help="The server's HS256 secret: buyers send tokens minted with it (an "
                        "embedded server is started with it) [FLASHFLOW_AUTH_JWT_SECRET].")
    p.add_argument("--settle-s", type=float, default=1.0,
                   help="Pause between the last response and reading the backends.")
    checkout = p.add_argument_group("checkout mode")
    checkout.add_argument("--checkout", action="store_true",
                          help="Buyers go on to pay for holds, or wait in line for one.")
    checkout.add_argument("--hold-s", type=int, default=5,
                          help="The payment window of the fresh sale (with --stock).")
    checkout.add_argument("--pay-share", type=float, default=0.6,
                          help="Share of holders who pay; the rest walk away.")
    checkout.add_argument("--pay-min-s", type=float, default=1.0)
    checkout.add_argument("--pay-max-s", type=float, default=3.0,
                          help="Holders pay after a delay drawn between these two.")
    checkout.add_argument("--follow-s", type=float, default=20.0,
                          help="How long a waitlisted buyer follows their stream.")
    checkout.add_argument("--admin-token", default=env("FLASHFLOW_ADMIN_TOKEN"),
                          help="The server's admin token, which the payment step confirms "
                               "with [FLASHFLOW_ADMIN_TOKEN].")
    add_line_options(p)
    return p.parse_args(argv)


def wait_for_sale(host: str, sale_id: str | None, timeout_s: float = 20.0) -> dict[str, Any]:
    """The current sale once it is ``sale_id`` (any, if None) and the server is ready."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with httpx.Client(base_url=host, timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                current = client.get(CURRENT)
                sale = current.json().get("data") if current.status_code == 200 else None
                ready = client.get(READYZ).status_code == 200
                if sale and (sale_id is None or sale["id"] == sale_id) and ready:
                    return sale
                last = f"current {current.status_code} {sale and sale['id']}, ready {ready}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.2)
    raise RunError(f"the server at {host} did not serve the sale in {timeout_s}s: {last}")


def locust_command(args: argparse.Namespace, host: str, records: Path, pool: int,
                   tag: str, sale_id: str = "") -> list[str]:
    """The locust command line for this run."""
    command = [*locust_base(args, LOCUSTFILE, host, records, tag),
               "--ramp-s", str(args.ramp_s), "--peak-s", str(args.peak_s),
               "--cool-s", str(args.cool_s), "--ramp-users", str(args.ramp_users),
               "--peak-users", str(args.peak_users), "--attempts", str(args.attempts),
               "--think-s", str(args.think_s), "--user-pool", str(pool)]
    if args.checkout:
        command += ["--checkout", "--sale-id", sale_id, "--pay-share", str(args.pay_share),
                    "--pay-min-s", str(args.pay_min_s), "--pay-max-s", str(args.pay_max_s),
                    "--follow-s", str(args.follow_s)]
    return command


def load_and_verify(args: argparse.Namespace, host: str, database_url: str, redis_url: str,
                    key_prefix: str, records: Path) -> dict[str, Any]:
    """Prepare the sale, run the stampede, and judge it; return the summary."""
    stages = Stages(args.ramp_s, args.peak_s, args.cool_s, args.ramp_users, args.peak_users)
    sale_id = None
    if args.stock is not None:
        sale_id = str(create_sale(database_url, "Load Test Sneakers", args.stock,
                                  stages.total_s + 60, current=True,
                                  hold_seconds=args.hold_s if args.checkout else None).id)
    sale = wait_for_sale(host, sale_id)
    if sale["status"] != "active":
        raise RunError(f"the current sale is {sale['status']}, not active")
    if args.checkout and "holdSeconds" not in sale:
        raise RunError("the current sale has no holds to check out: give --stock for one")
    if not args.checkout and "holdSeconds" in sale:
        raise RunError("the current sale sells holds: give --checkout to load it through the "
                       "payment step, or --stock for a fresh sale without holds")
    sale_uuid = uuid.UUID(sale["id"])
    before = backends.ledger_snapshot(database_url, sale_uuid)
    pool = args.user_pool or max(10 * sale["remainingStock"], 200)
    tag = f"lt{uuid.uuid4().hex[:8]}"
    print(f"loading sale {sale['id']} ({sale['remainingStock']} of {sale['totalStock']} left) "
          f"at {host}: {pool} users, {stages.total_s:.0f} s", flush=True)
    run_locust(locust_command(args, host, records, pool, tag, sale["id"]),
               records / "locust.log", stages.total_s + 120)
    time.sleep(args.settle_s)
    seen = list(read_records(records))
    checks = judge(seen, before, database_url, redis_url, key_prefix, sale_uuid)
    if not any(r.kind == PURCHASE for r in seen):
        checks.append(Check("the load reached the server", False, "no purchase was recorded"))
    summary = summarise(seen, checks)
    summary.update(sale_id=sale["id"], host=host, records=str(records))
    if args.checkout:
        summary["checkout"] = checkout_figures(
            seen, backends.ledger_snapshot(database_url, sale_uuid))
    return summary


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run, verify, print the summary; return the exit status."""
    args = parse_args(argv)
    if args.auth_secret:
        # The embedded server and the locust processes read it from their environment.
        os.environ["FLASHFLOW_AUTH_JWT_SECRET"] = args.auth_secret
    if args.checkout and not args.admin_token and not args.host:
        args.admin_token = secrets.token_urlsafe(24)  # the embedded server's, and the payer's
    if args.admin_token:
        os.environ["FLASHFLOW_ADMIN_TOKEN"] = args.admin_token
    # SIGTERM unwinds like Ctrl-C, so the children below are stopped on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    with ExitStack() as stack:
        host, db, rd, prefix = args.host, args.database_url, args.redis_url, args.key_prefix
        try:
            if not host:
                data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(
                    prefix="flashflow-loadtest-")))
                prefix = new_key_prefix("loadtest")
                server = start_embedded(data_dir / "data", prefix)
                stack.callback(server.stop)
                host, db, rd = server.url, server.database_url, server.redis_url
                print(f"started flashflow up at {host}", flush=True)
            if not db or not rd:
                raise RunError("verification needs --database-url and --redis-url with --host")
            if args.checkout and not args.admin_token:
                raise RunError("checkout pays with the server's admin token: --admin-token")
            records = args.records or Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix="flashflow-records-")))
            records.mkdir(parents=True, exist_ok=True)
            load = load_line_and_verify if args.line else load_and_verify
            summary = load(args, host.rstrip("/"), db, rd, prefix, records)
        except (RunError, ServerStartError, OSError, LookupError) as exc:
            print(f"load test could not run: {exc}", file=sys.stderr)
            return 2
    print(render(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if summary["held"] else 1
