"""The flash-sale stampede as a locust file: buyers spamming Buy, status checks, watchers.

Run it through ``python -m loadtests`` (headless, then verified), or by hand with locust's
web UI to watch it::

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000

Buyers take user ids at random from a pool larger than the stock, press Buy several times
at once (like a double-clicking crowd on flaky mobile networks), then read their purchase
status. Watchers only refresh the sale. Every response is recorded for the verifier when
``--record-dir`` is set. With ``FLASHFLOW_AUTH_JWT_SECRET`` in the environment (and the
server holding the same secret), buyers send a token minted for their user id.
"""

from __future__ import annotations

import functools
import random
import time
from pathlib import Path
from typing import Any

import gevent.pool
from locust import FastHttpUser, LoadTestShape, between, events, task

from flashflow.http.wire import CURRENT, CURRENT_PURCHASE, read_reply_bytes
from flashflow.settings import Settings
from flashflow.tokens import mint
from loadtests.records import PURCHASE, STATUS, WATCH, Record, RecordWriter
from loadtests.shape import Stages

#: The server's token settings, read from the same FLASHFLOW_* variables it reads.
AUTH = Settings.from_env()



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


class _Recording(FastHttpUser):
    abstract = True

    def _call(self, kind: str, method: str, path: str, user: str, expected: set[int],
              **kwargs: Any) -> None:
        started, t0 = time.time(), time.perf_counter()
        with self.client.request(method, path, name=kind, catch_response=True,
                                 **kwargs) as response:
            elapsed_ms = (time.perf_counter() - t0) * 1000
            reply = read_reply_bytes(response.status_code or 0, response.content)
            code = reply.error_code
            if reply.status == 0:
                code = type(response.error).__name__ if response.error else "NO_RESPONSE"
            self.environment.flashflow_records.write(Record(
                kind=kind, user=user, status=reply.status, started=started,
                elapsed_ms=elapsed_ms, purchase_id=reply.purchase_id, code=code,
                purchased=reply.purchased))
            if reply.status in expected:
                response.success()
            else:
                response.failure(f"{reply.status} {code}")


class Buyer(_Recording):
    """A crowd member: picks a user id, presses Buy several times at once, checks status."""

    weight = 4

    def wait_time(self) -> float:
        return random.uniform(0, 2 * self.environment.parsed_options.think_s)

    @task
    def stampede(self) -> None:
        """One visit: concurrent purchase attempts for one user, then the status read."""
        options = self.environment.parsed_options
        user = f"{options.user_tag}-{random.randrange(options.user_pool):07d}"
        attempts = gevent.pool.Group()
        for _ in range(max(options.attempts, 1)):
            attempts.spawn(self._call, PURCHASE, "POST", CURRENT_PURCHASE, user, {201, 409, 429},
                           json={"userId": user}, headers=auth_headers(user))
        attempts.join()
        self._call(STATUS, "GET", f"{CURRENT_PURCHASE}?userId={user}", user, {200, 429},
                   headers=auth_headers(user))


class Watcher(_Recording):
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
