"""The invariants of a flash sale, checked from what the clients were told and what the
stores hold: the one check that the stampede tests, the locust run, the benchmarks and the
fault tests all call.

:func:`verify` is a pure function of the answers (:class:`Record`) and two snapshots;
:func:`ledger_snapshot` and :func:`gate_snapshot` (or :func:`read_gate`, on a client of the
caller's) read those snapshots from PostgreSQL and Redis, and :func:`store_snapshots` both
at rest. A sale without holds is judged by the rules here; a sale with holds by those of
:mod:`flashflow.invariants_holds`. The data both judge is :mod:`flashflow.invariants_data`'s.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from actors.keys import parse_holder, sale_keys
from actors.redis_url import sync_client

from .database import run_on_connection
from .invariants_data import (
    CONFIRM,
    NO_ANSWER,
    PURCHASE,
    STANDING,
    STATUS,
    THROTTLED,
    UNAVAILABLE,
    WATCH,
    Check,
    EndingRow,
    GateSnapshot,
    HoldsLedger,
    LedgerSnapshot,
    PurchaseRow,
    Record,
    WaitlistRow,
)
from .invariants_data import failed as _failed
from .invariants_data import sample as _sample
from .invariants_data import throttled as _throttled
from .invariants_holds import CLOCK_SLACK_S, read_holds, verify_holds


@dataclass
class _Seen:
    """The purchase-side facts of the records, grouped by user."""

    users: set[str] = field(default_factory=set)
    won: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    first_win: dict[str, float] = field(default_factory=dict)
    by_user: dict[str, list[Record]] = field(default_factory=lambda: defaultdict(list))
    sold_out_told: int = 0
    #: Users one of whose attempts a fault cut short (503 or no answer): their commit may
    #: have happened with the reply lost.
    cut_short: set[str] = field(default_factory=set)
    #: The records a fault excuses, as given to :func:`verify`.
    excused: Collection[Record] = ()

    def excuses(self, record: Record) -> bool:
        """Whether ``record`` is a 503 or no answer sent while a fault lasted."""
        return record.status in (UNAVAILABLE, NO_ANSWER) and record in self.excused


def _gather(records: Iterable[Record], faulted: Collection[Record]
            ) -> tuple[_Seen, list[Record], list[Record]]:
    seen, statuses, failures = _Seen(excused=faulted), [], []
    for record in records:
        if seen.excuses(record):
            seen.cut_short.add(record.user)
        elif _failed(record):
            failures.append(record)
        if record.kind == STATUS:
            statuses.append(record)
        if record.kind != PURCHASE:
            continue
        if not _throttled(record):
            seen.users.add(record.user)  # demand: users the server answered on the merits
        seen.by_user[record.user].append(record)
        if record.status == 201 and record.purchase_id:
            seen.won[record.user].add(record.purchase_id)
            seen.first_win[record.user] = min(seen.first_win.get(record.user, record.finished),
                                              record.finished)
        elif record.code == "SOLD_OUT":
            seen.sold_out_told += 1
    return seen, statuses, failures


def verify(records: Iterable[Record], before: LedgerSnapshot, after: LedgerSnapshot,
           gate: GateSnapshot, *, faulted: Collection[Record] = (),
           clock_slack_s: float = CLOCK_SLACK_S) -> list[Check]:
    """Judge one run: a sale without holds by the rules below, a sale with holds (``after``
    carries its :class:`HoldsLedger`) by :func:`flashflow.invariants_holds.verify_holds`.

    Args:
        records: every response the clients saw.
        before: the ledger before the run (purchases there were not made by this run).
        after: the ledger after the run.
        gate: Redis after the run.
        faulted: those of ``records`` sent while a fault lasted (a backend down, a worker
            killed), until the servers had recovered. Among them, and only among them, a 503
            or no answer is no break; such an attempt may also have committed with its reply
            lost, so its user may hold a row that no 201 announced. Every other answer, and
            every answer after recovery, is held to the same rules as in a healthy run.
        clock_slack_s: with holds, how far the clients' clock (a record's times) and
            PostgreSQL's (the rows' times) may disagree.

    Returns:
        One :class:`Check` per invariant, in a stable order.
    """
    if after.holds is not None:
        return verify_holds(records, before, after, gate, faulted=faulted,
                            clock_slack_s=clock_slack_s)
    records = list(records)
    seen, statuses, failures = _gather(records, set(faulted))
    rows, total = after.purchases, after.total_stock
    committed = len(rows)
    demand = len(seen.users | set(before.purchases))
    expected = min(total, demand)
    checks = [Check(
        "no overselling",
        committed == after.sold == expected and committed <= total,
        f"committed {committed}, sold counter {after.sold}, stock {total}, "
        f"distinct buyers {demand}: expected {expected}")]
    checks.append(Check(
        "nothing unsold once SOLD_OUT was said",
        seen.sold_out_told == 0 or committed == total,
        f"{seen.sold_out_told} SOLD_OUT answers, {total - committed} units unsold"))

    doubled = {u for u, ids in seen.won.items() if len(ids) > 1}
    checks.append(Check("one purchase per user", not doubled,
                        f"users told two purchase ids: {_sample(doubled) or 'none'}"))
    successes = {u: sum(r.status == 201 for r in records) for u, records in seen.by_user.items()}
    twice = {u for u, n in successes.items() if n > 1}
    new_rows = committed - len(before.purchases)
    lost = {u for u in _untold(seen, before, rows) if u in seen.cut_short}
    checks.append(Check(
        "exactly one 201 per user: 201s counted = units sold",
        not twice and sum(successes.values()) == new_rows - len(lost),
        f"{sum(successes.values())} x 201 for {new_rows} new rows, {len(lost)} of them "
        f"with the reply lost in a fault; users told 201 twice: {_sample(twice) or 'none'}"))

    checks.append(_repeats(seen, rows))
    mismatched = {u for u, ids in seen.won.items() if rows.get(u) not in ids}
    checks.append(Check("every 201 is a row with its purchaseId", not mismatched,
                        f"{sum(map(len, seen.won.values()))} purchase ids told; "
                        f"not in PostgreSQL: {_sample(mismatched) or 'none'}"))
    untold = _untold(seen, before, rows) - lost
    checks.append(Check("no row that no client was told about", not untold,
                        f"{new_rows} new rows, {len(lost)} told a fault's 503 or nothing; "
                        f"untold: {_sample(untold) or 'none'}"))
    checks.append(Check(
        "gate agrees with ledger",
        gate.stock == total - committed and gate.buyers == rows,
        f"Redis stock {gate.stock} vs {total - committed}; Redis buyers {len(gate.buyers)} "
        f"vs rows {committed}" + ("" if gate.buyers == rows else " (they differ)")))
    checks.append(_losers(seen, rows, failures))
    checks.append(_status_reads(statuses, seen, rows))
    return checks


def _untold(seen: _Seen, before: LedgerSnapshot, rows: dict[str, str]) -> set[str]:
    """Users holding a new row whose purchase id no 201 told them."""
    return {u for u, pid in rows.items()
            if before.purchases.get(u) != pid and pid not in seen.won.get(u, ())}


def _repeats(seen: _Seen, rows: dict[str, str]) -> Check:
    """A winner's other attempts get ALREADY_PURCHASED (one of them the 201), never SOLD_OUT;
    once the winner has read their 201, every later attempt gets ALREADY_PURCHASED."""
    wrong: set[str] = set()
    repeats = 0
    for user, pid in rows.items():
        first = seen.first_win.get(user)
        for record in seen.by_user.get(user, ()):
            same = record.status == 201 and record.purchase_id == pid
            told = record.status == 409 and record.code == "ALREADY_PURCHASED"
            if _throttled(record) or seen.excuses(record):
                continue
            if first is not None and record.started > first:
                repeats += 1
                if not told:
                    wrong.add(user)
            elif not (same or told):
                wrong.add(user)
    return Check("repeats get ALREADY_PURCHASED", not wrong,
                 f"{repeats} attempts after a win; wrong answers for: {_sample(wrong) or 'none'}")


def _losers(seen: _Seen, rows: dict[str, str], failures: list[Record]) -> Check:
    """Users without a purchase hear 409 SOLD_OUT (or 429 when they spam), nothing else;
    nobody sees a 5xx or a cut connection, but for a fault's 503s and cut connections."""
    wrong = {u for u, records in seen.by_user.items() if u not in rows
             for r in records if not ((r.status == 409 and r.code == "SOLD_OUT")
                                      or _throttled(r) or seen.excuses(r))}
    throttled = sum(_throttled(r) for records in seen.by_user.values() for r in records)
    odd = {f"{r.kind} {r.status} {r.code}" for r in failures}
    excused = sum(seen.excuses(r) for records in seen.by_user.values() for r in records)
    return Check("losers get 409 SOLD_OUT, never a 5xx or a dropped connection",
                 not wrong and not failures,
                 f"{len(failures)} 5xx/dropped ({_sample(odd) or 'none'}), {excused} excused "
                 f"by a fault; "
                 f"losers told otherwise: {_sample(wrong) or 'none'}; {throttled} attempts 429")


def _status_reads(statuses: list[Record], seen: _Seen, rows: dict[str, str]) -> Check:
    """A status read names the user's purchase, and never denies one already confirmed."""
    wrong = set()
    for r in statuses:
        if r.status != 200:
            continue
        if r.purchased and r.purchase_id != rows.get(r.user):
            wrong.add(r.user)
        first = seen.first_win.get(r.user)
        if not r.purchased and first is not None and first < r.started:
            wrong.add(r.user)
    return Check("status reads agree with the ledger", not wrong,
                 f"{len(statuses)} reads; disagreeing for: {_sample(wrong) or 'none'}")


# -- reading the stores ------------------------------------------------------------------


async def _ledger(conn: Any, sale_id: uuid.UUID) -> LedgerSnapshot:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        sale = await conn.fetchrow(
            "SELECT total_stock, sold, hold_seconds, end_time, clock_timestamp() AS now "
            "FROM flash_sales WHERE id = $1", sale_id)
        if sale is None:
            raise LookupError(f"no sale {sale_id} in PostgreSQL")
        rows = await conn.fetch(
            "SELECT user_id, id::text AS id FROM purchases WHERE sale_id = $1", sale_id)
        holds = None if sale["hold_seconds"] is None else await read_holds(conn, sale_id, sale)
    return LedgerSnapshot(sale["total_stock"], sale["sold"],
                          {r["user_id"]: r["id"] for r in rows}, holds)


def ledger_snapshot(database_url: str, sale_id: uuid.UUID) -> LedgerSnapshot:
    """The sale row and its purchases, as committed (with holds: its rows, ended holds and
    waitlist too), read in one snapshot."""
    return run_on_connection(database_url, _ledger, sale_id)


def read_gate(client: Any, key_prefix: str, sale_id: uuid.UUID) -> GateSnapshot:
    """The remaining stock and the buyers (user -> purchase id) the gate keeps in Redis, read
    through a synchronous client of any shape (single, Sentinel, cluster) opened with
    ``decode_responses=True``; the client stays open."""
    keys = sale_keys(key_prefix, sale_id)
    stock = client.get(keys.stock)
    buyers = {user: parse_holder(value)[0] for user, value in client.hgetall(keys.buyers).items()}
    return GateSnapshot(None if stock is None else int(stock), buyers)


def gate_snapshot(redis_url: str, key_prefix: str, sale_id: uuid.UUID) -> GateSnapshot:
    """:func:`read_gate` on a client of its own (generous timeout: a big sale's buyers hash
    holds millions of entries)."""
    client = sync_client(redis_url, decode_responses=True, socket_timeout=120)
    try:
        return read_gate(client, key_prefix, sale_id)
    finally:
        client.close()


def _settled(first: LedgerSnapshot, then: LedgerSnapshot) -> bool:
    """Nothing moved between two reads of a sale with holds, and every ended hold had
    reached the gate by the first."""
    if first.holds is None or then.holds is None:
        return first == then
    return ((first.total_stock, first.sold, first.holds.state())
            == (then.total_stock, then.sold, then.holds.state())
            and all(e.gate_done for e in first.holds.endings))


def store_snapshots(database_url: str, redis_url: str, key_prefix: str, sale_id: uuid.UUID,
                    *, settle_s: float = 10.0) -> tuple[LedgerSnapshot, GateSnapshot]:
    """The ledger and the gate of a sale at rest, for :func:`verify`.

    Without holds: the ledger, then the gate. With holds, holds go on lapsing after the
    clients stop, and the gate hears of each just after PostgreSQL: this reads the ledger,
    the gate, and the ledger again until nothing moved in between and every ending had
    reached the gate before the gate was read (so the gate read shows the ledger's state),
    for at most ``settle_s``; past it, the last reads are judged as they are.
    """
    ledger = ledger_snapshot(database_url, sale_id)
    gate = gate_snapshot(redis_url, key_prefix, sale_id)
    deadline = time.monotonic() + settle_s
    while ledger.holds is not None:
        again = ledger_snapshot(database_url, sale_id)
        if _settled(ledger, again) or time.monotonic() >= deadline:
            return again, gate
        time.sleep(0.05)
        ledger, gate = again, gate_snapshot(redis_url, key_prefix, sale_id)
    return ledger, gate


__all__ = ["CLOCK_SLACK_S", "CONFIRM", "NO_ANSWER", "PURCHASE", "STANDING", "STATUS",
           "THROTTLED", "UNAVAILABLE", "WATCH", "Check", "EndingRow", "GateSnapshot",
           "HoldsLedger", "LedgerSnapshot", "PurchaseRow", "Record", "WaitlistRow",
           "gate_snapshot", "ledger_snapshot", "read_gate", "store_snapshots", "verify"]
