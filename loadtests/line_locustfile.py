"""A sale's waiting room as a locust file: a crowd joins the line before the opening, more
join after it, each follows their ticket's stream and buys once admitted.

Run it through ``python -m loadtests --line`` (which creates the sale, then verifies the
run), or by hand with the sale's id and opening::

    locust -f loadtests/line_locustfile.py --host http://127.0.0.1:8000 \\
        --sale-id ID --opens-at EPOCH_SECONDS --line-before 2000 --line-after 1000

Each user takes one fresh user id and makes one journey: join (``POST .../queue``), follow
the ticket's stream to its final event (reconnecting when it ends without one), and, when
the event is ``admitted`` with an admission token, buy with it. It then idles until the run
ends. Besides the answers (as :mod:`loadtests.locustfile` records them), each followed
stream leaves one ``line_final`` record: its final event, or none.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

import gevent
import httpx
from locust import LoadTestShape, constant, events, task

from flashflow.http.replies import Reply, read_ticket
from flashflow.http.wire import purchase_path, queue_path, ticket_events_path
from flashflow.invariants_line import FINAL_EVENTS
from loadtests.locustfile import Recording, auth_headers
from loadtests.records import JOIN, LINE_FINAL, PURCHASE, Record

#: Users spawned this long after the opening join as later arrivals, whatever the clocks say.
AFTER_OPENING_S = 1.0
#: How long the run goes on once every user is spawned and the line is done: for the last
#: final events and purchases to land.
GRACE_S = 3.0
#: Pause before following a stream again that ended without its final event.
RECONNECT_S = 1.0
#: Connections in a row that bring no event at all before a follower gives up.
FAILED_CONNECTIONS = 3
#: One journey a user: then they wait for the run to end.
IDLE_S = 24 * 3600

_SERIAL = itertools.count(1)


@events.init_command_line_parser.add_listener
def add_line_options(parser: Any) -> None:
    """The line's crowd and its timing, as locust options (``--sale-id`` and the recording
    are :mod:`loadtests.locustfile`'s)."""
    group = parser.add_argument_group("Flash Flow waiting room")
    option = group.add_argument
    option("--opens-at", type=float, default=0.0, env_var="LOCUST_OPENS_AT",
           help="The sale's start (epoch seconds): the opening that orders the early tickets.")
    option("--line-before", type=int, default=2000, env_var="LOCUST_LINE_BEFORE",
           help="Users who join before the opening.")
    option("--line-after", type=int, default=1000, env_var="LOCUST_LINE_AFTER",
           help="Users who join after it.")
    option("--line-spawn-rate", type=float, default=500.0, env_var="LOCUST_LINE_SPAWN_RATE",
           help="Users started a second, before the opening and after it.")
    option("--line-s", type=float, default=60.0, env_var="LOCUST_LINE_S",
           help="The longest the run goes on after the opening.")


class LineBuyer(Recording):
    """Someone in the waiting room: joins, follows their ticket to its turn, buys with the
    admission, then idles."""

    wait_time = constant(IDLE_S)

    @task
    def journey(self) -> None:
        """Join, wait for the turn, buy if admitted."""
        options = self.environment.parsed_options
        user = f"{options.user_tag}-{os.getpid()}-{next(_SERIAL):06d}"
        joined = self._call(JOIN, "POST", queue_path(options.sale_id), user, {200, 201, 409},
                            json={"userId": user}, headers=auth_headers(user))
        if joined.ticket is None:
            return
        turn = self._await_turn(user, joined.ticket)
        if turn is not None and turn.admission_token:
            self._call(PURCHASE, "POST", purchase_path(options.sale_id), user, {201, 409},
                       json={"userId": user, "admissionToken": turn.admission_token},
                       headers=auth_headers(user))

    def _await_turn(self, user: str, ticket: str) -> Reply | None:
        """Follow the ticket's stream until its final event, or the line's deadline; record
        how it ended (also when the run stops the user first). Returns the ``admitted``
        event's ticket, or None."""
        options = self.environment.parsed_options
        path = ticket_events_path(options.sale_id, ticket)
        final: tuple[str, Reply] | None = None
        failed = 0
        started = time.time()
        try:
            with gevent.Timeout(max(options.opens_at + options.line_s - started, 0.1), False):
                while final is None and failed < FAILED_CONNECTIONS:
                    heard = False
                    for sse in self.events(LINE_FINAL, user, path, ticket,
                                           headers=auth_headers(user)):
                        heard = True
                        if sse.event in FINAL_EVENTS:
                            final = sse.event, read_ticket(sse.data)
                            break
                    failed = 0 if heard else failed + 1
                    if final is None:
                        gevent.sleep(RECONNECT_S)
        finally:
            self.environment.flashflow_records.write(_ending(user, ticket, started, final))
        return final[1] if final is not None and final[0] == "admitted" else None


def _ending(user: str, ticket: str, started: float, final: tuple[str, Reply] | None) -> Record:
    """The ``line_final`` record of a followed ticket: its final event and, once admitted,
    when (``expires_at``); or no event."""
    if final is None:
        return Record(LINE_FINAL, user, 200, started, (time.time() - started) * 1000,
                      purchase_id=ticket)
    event, reply = final
    admitted_at = reply.admitted_at.timestamp() if reply.admitted_at else None
    return Record(LINE_FINAL, user, 200, time.time(), 0.0, purchase_id=ticket, code=event,
                  expires_at=admitted_at, position=reply.position)


class LineShape(LoadTestShape):
    """``--line-before`` users until just after the opening, then ``--line-after`` more; the
    run ends a moment after everyone is spawned and the line is done (closed, or everyone in
    it admitted), or ``--line-s`` after the opening."""

    def __init__(self) -> None:
        super().__init__()
        self._done_at: float | None = None

    def tick(self) -> tuple[int, float] | None:
        options = self.runner.environment.parsed_options
        now = time.time()
        if now >= options.opens_at + options.line_s:
            return None
        rate = options.line_spawn_rate
        if now < options.opens_at + AFTER_OPENING_S:
            return options.line_before, rate
        everyone = options.line_before + options.line_after
        if (self._done_at is None and self.runner.user_count >= everyone
                and _line_done(self.runner.environment.host, options.sale_id)):
            self._done_at = now
        if self._done_at is not None and now >= self._done_at + GRACE_S:
            return None
        return everyone, rate


def _line_done(host: str, sale_id: str) -> bool:
    """Whether the sale's line is closed or has admitted everyone in it."""
    try:
        answer = httpx.get(host.rstrip("/") + queue_path(sale_id), timeout=2)
    except httpx.HTTPError:
        return False
    line = answer.json().get("data") if answer.status_code == 200 else None
    return isinstance(line, dict) and ("closedReason" in line
                                       or line["admittedUpTo"] >= line["lineLength"])
