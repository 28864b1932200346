"""The flash-sale stampede as a locust file: buyers spamming Buy, status checks, watchers.

Run it through ``python -m loadtests`` (headless, then verified), or by hand with locust's
web UI to watch it::

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000

Buyers take user ids at random from a pool larger than the stock, press Buy several times
at once (like a double-clicking crowd on flaky mobile networks), then read their purchase
status. Watchers only refresh the sale. Every response is recorded for the verifier when
``--record-dir`` is set. With ``FLASHFLOW_AUTH_JWT_SECRET`` in the environment (and the
server holding the same secret), buyers send a token minted for their user id.

With ``--checkout`` (a sale with holds, ``--sale-id``, and the server's admin token in
``FLASHFLOW_ADMIN_TOKEN``), buyers go on to the payment step: a share of those who hold a
unit pay (confirm it) after a random delay and the rest walk away, so their holds lapse;
those who got a place in the waitlist follow their own stream and pay when it offers them
a hold.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.pool
import httpx
from httpx_sse import ServerSentEvent, SSEError, connect_sse
from locust import FastHttpUser, LoadTestShape, between, events, task

from flashflow.http.replies import Reply, read_reply_bytes, read_standing
from flashflow.http.wire import CURRENT, CURRENT_PURCHASE, HELD, confirm_path, purchase_events_path
from flashflow.settings import Settings
from flashflow.tokens import mint
from loadtests.records import (
    CONFIRM,
    PURCHASE,
    STANDING,
    STATUS,
    WATCH,
    Record,
    RecordWriter,
    record_of,
)
from loadtests.shape import Stages

#: The server's token settings, read from the same FLASHFLOW_* variables it reads.
AUTH = Settings.from_env()
#: Standings after which a buyer's stream has nothing more to offer.
OVER = frozenset({"confirmed", "closed", "lapsed", "cancelled"})


@events.init_command_line_parser.add_listener
def add_options(parser: Any) -> None:
    """Stage lengths, user counts and the buyers' behaviour, as locust options."""
    group = parser.add_argument_group("Flash Flow stampede")
    option = group.add_argument
    option("--ramp-s", type=float, default=10.0, env_var="LOCUST_RAMP_S",
           help="Seconds to ramp from 0 to --ramp-users.")
    option("--peak-s", type=float, default=30.0, env_var="LOCUST_PEAK_S",
           help="Seconds the peak of --peak-users lasts.")
    option("--cool-s", type=float, default=10.0, env_var="LOCUST_COOL_S",
           help="Seconds to cool down to 0 users.")
    option("--ramp-users", type=int, default=50, env_var="LOCUST_RAMP_USERS")
    option("--peak-users", type=int, default=200, env_var="LOCUST_PEAK_USERS")
    option("--user-pool", type=int, default=2000, env_var="LOCUST_USER_POOL",
           help="How many distinct user ids buyers draw from; make it larger than the stock.")
    option("--user-tag", default="lt", env_var="LOCUST_USER_TAG",
           help="Prefix of every user id, so runs do not reuse each other's users.")
    option("--attempts", type=int, default=3, env_var="LOCUST_ATTEMPTS",
           help="Concurrent purchase attempts per buyer visit.")
    option("--think-s", type=float, default=0.1, env_var="LOCUST_THINK_S",
           help="Mean pause of a buyer between visits.")
    option("--record-dir", default="", env_var="LOCUST_RECORD_DIR",
           help="Directory for the per-process response records; empty records nothing.")
    option("--checkout", action="store_true", default=False, env_var="LOCUST_CHECKOUT",
           help="Go on to the payment step (a sale with holds; needs --sale-id and the "
                "admin token in FLASHFLOW_ADMIN_TOKEN).")
    option("--sale-id", default="", env_var="LOCUST_SALE_ID",
           help="The sale's id, for the payment step's and the buyers' stream's paths.")
    option("--pay-share", type=float, default=0.6, env_var="LOCUST_PAY_SHARE",
           help="Share of holders who pay; the rest walk away and their holds lapse.")
    option("--pay-min-s", type=float, default=1.0, env_var="LOCUST_PAY_MIN_S",
           help="Shortest delay before a holder pays.")
    option("--pay-max-s", type=float, default=3.0, env_var="LOCUST_PAY_MAX_S",
           help="Longest delay before a holder pays (keep it under the hold's window).")
    option("--follow-s", type=float, default=20.0, env_var="LOCUST_FOLLOW_S",
           help="How long a waitlisted buyer follows their stream for an offer.")


class _NoRecords:
    def write(self, record: Record) -> None:
        pass

    def flush(self) -> None:
        pass


@events.init.add_listener
def open_records(environment: Any, **_: Any) -> None:
    """Give each locust process its record writer."""
    directory = environment.parsed_options.record_dir if environment.parsed_options else ""
    environment.flashflow_records = RecordWriter(Path(directory)) if directory else _NoRecords()


@events.test_stop.add_listener
@events.quitting.add_listener
def flush_records(environment: Any, **_: Any) -> None:
    """Push this process's records to disk when the run stops."""
    writer = getattr(environment, "flashflow_records", None)
    if writer is not None:
        writer.flush()


@functools.lru_cache(maxsize=100_000)
def auth_headers(user: str) -> dict[str, str]:
    """The Authorization header for ``user`` when auth is on, else none."""
    if AUTH.auth_jwt_secret is None:
        return {}
    return {"Authorization": f"Bearer {mint(AUTH, user, ttl_s=4 * 3600)}"}


@functools.cache
def stream_client(host: str) -> httpx.Client:
    """The one client of this process for every stream its users follow: a client each
    would spend the process's CPU building TLS contexts, and its pool holds any number."""
    return httpx.Client(base_url=host, timeout=httpx.Timeout(10, read=30),
                        limits=httpx.Limits(max_connections=None))


class Recording(FastHttpUser):
    """A user whose every answer is recorded for the verifier."""

    abstract = True

    def _call(self, kind: str, method: str, path: str, user: str, expected: set[int],
              purchase_id: str | None = None, **kwargs: Any) -> Reply:
        started, t0 = time.time(), time.perf_counter()
        try:
            with self.client.request(method, path, name=kind, catch_response=True,
                                     **kwargs) as response:
                return self._answered(kind, user, expected, purchase_id, started, t0,
                                      response)
        except gevent.GreenletExit:
            # The run stopped this user mid-request: the request may have done its work
            # with the answer unread, which the verifier must know.
            self.environment.flashflow_records.write(Record(
                kind, user, 0, started, (time.perf_counter() - t0) * 1000,
                purchase_id=purchase_id, code="STOPPED"))
            raise

    def _answered(self, kind: str, user: str, expected: set[int], purchase_id: str | None,
                  started: float, t0: float, response: Any) -> Reply:
        elapsed_ms = (time.perf_counter() - t0) * 1000
        reply = read_reply_bytes(response.status_code or 0, response.content)
        code = reply.error_code
        if reply.status == 0:
            code = type(response.error).__name__ if response.error else "NO_RESPONSE"
        self.environment.flashflow_records.write(
            record_of(kind, user, started, elapsed_ms, reply, code, purchase_id))
        if reply.status in expected:
            response.success()
        else:
            response.failure(f"{reply.status} {code}")
        return reply

    def events(self, kind: str, user: str, path: str, ticket: str | None = None,
               **kwargs: Any) -> Iterator[ServerSentEvent]:
        """The events of the stream at ``path`` (``kwargs`` go to the request) until it ends.
        A refusal (not a 200) or a cut connection is recorded as a ``kind`` record naming
        ``ticket``, and ends them."""
        records = self.environment.flashflow_records
        started = time.time()
        try:
            with connect_sse(stream_client(self.host), "GET", path, **kwargs) as source:
                if source.response.status_code != 200:
                    source.response.read()
                    reply = read_reply_bytes(source.response.status_code,
                                             source.response.content)
                    records.write(record_of(kind, user, started, 0.0, reply, reply.error_code,
                                            ticket))
                    return
                yield from source.iter_sse()
        except (httpx.TransportError, SSEError) as exc:
            records.write(Record(kind, user, 0, started, (time.time() - started) * 1000,
                                 purchase_id=ticket, code=type(exc).__name__))


class Buyer(Recording):
    """A crowd member: picks a user id, presses Buy several times at once, checks status;
    with ``--checkout``, pays for a hold or waits in line for one."""

    weight = 4

    def wait_time(self) -> float:
        return random.uniform(0, 2 * self.environment.parsed_options.think_s)

    @task
    def stampede(self) -> None:
        """One visit: concurrent purchase attempts for one user, then the status read."""
        options = self.environment.parsed_options
        user = f"{options.user_tag}-{random.randrange(options.user_pool):07d}"
        attempts = gevent.pool.Group()
        # with holds, pressing again while holding is 200 and a place in line 202
        expected = {201, 409, 429} | ({200, 202} if options.checkout else set())
        presses = [attempts.spawn(self._call, PURCHASE, "POST", CURRENT_PURCHASE, user,
                                  expected, json={"userId": user}, headers=auth_headers(user))
                   for _ in range(max(options.attempts, 1))]
        attempts.join()
        self._call(STATUS, "GET", f"{CURRENT_PURCHASE}?userId={user}", user, {200, 429},
                   headers=auth_headers(user))
        if options.checkout:
            self._checkout(user, [p.value for p in presses if p.value is not None])

    def _checkout(self, user: str, replies: list[Reply]) -> None:
        """Pay for the hold (a share of holders, after a delay), walk away, or follow the
        stream from a place in line."""
        options = self.environment.parsed_options
        hold = next((r.purchase_id for r in replies
                     if r.status in (200, 201) and r.standing == HELD and r.purchase_id), None)
        if hold is not None:
            if random.random() < options.pay_share:
                gevent.sleep(random.uniform(options.pay_min_s, options.pay_max_s))
                self._confirm(user, hold)
        elif any(r.status == 202 for r in replies):
            self._follow(user)

    def _confirm(self, user: str, purchase_id: str) -> None:
        """The payment step: confirm the hold with the admin token."""
        options = self.environment.parsed_options
        self._call(CONFIRM, "POST", confirm_path(options.sale_id, purchase_id), user,
                   {200, 409}, purchase_id=purchase_id,
                   headers={"Authorization": f"Bearer {AUTH.admin_token}"})

    def _follow(self, user: str) -> None:
        """Wait in line: follow the stream until it offers a hold, then pay for it after
        the same delay as a holder."""
        options = self.environment.parsed_options
        offer = self._await_offer(user)
        if offer is not None:
            gevent.sleep(random.uniform(options.pay_min_s, options.pay_max_s))
            self._confirm(user, offer)

    def _await_offer(self, user: str) -> str | None:
        """Follow the buyer's own stream, recording each standing, until it offers a hold
        (its purchase id), says the wait is over, or ``--follow-s`` has passed."""
        options = self.environment.parsed_options
        records = self.environment.flashflow_records
        with gevent.Timeout(options.follow_s, False):
            for sse in self.events(STANDING, user, purchase_events_path(options.sale_id),
                                   params={"userId": user}, headers=auth_headers(user)):
                if sse.event != STANDING:
                    continue
                reply = read_standing(sse.data)
                records.write(record_of(STANDING, user, time.time(), 0.0, reply, None))
                if reply.standing == HELD and reply.purchase_id:
                    return reply.purchase_id
                if reply.standing in OVER:
                    return None
        return None


class Watcher(Recording):
    """Someone who only watches the sale, refreshing it now and then."""

    weight = 1
    wait_time = between(0.5, 1.5)

    @task
    def watch(self) -> None:
        """Read the current sale."""
        self._call(WATCH, "GET", CURRENT, "", {200})


class StampedeShape(LoadTestShape):
    """Ramp to ``--ramp-users``, hold ``--peak-users``, cool down, stop."""

    def tick(self) -> tuple[int, float] | None:
        options = self.runner.environment.parsed_options
        stages = Stages(ramp_s=options.ramp_s, peak_s=options.peak_s, cool_s=options.cool_s,
                        ramp_users=options.ramp_users, peak_users=options.peak_users)
        return stages.at(self.get_run_time())
