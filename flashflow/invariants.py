"""The invariants of a flash sale, checked from what the clients were told and what the
stores hold: the one check that the stampede tests, the locust run, the benchmarks and the
fault tests all call.

:func:`verify` is a pure function of the answers (:class:`Record`) and two snapshots;
:func:`ledger_snapshot` and :func:`gate_snapshot` (or :func:`read_gate`, on a client of the
caller's) read those snapshots from PostgreSQL and Redis, and :func:`store_snapshots` both
at rest (:mod:`flashflow.invariants_read`). A sale without holds is judged by the rules
here; a sale with holds by those of :mod:`flashflow.invariants_holds`. The data both judge
is :mod:`flashflow.invariants_data`'s. Every count of stock is of units: a purchase may take
several, up to the sale's per-user limit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from .invariants_data import (
    CONFIRM,
    NO_ANSWER,
    PURCHASE,
    REFUSALS,
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
from .invariants_holds import CLOCK_SLACK_S, verify_holds
from .invariants_read import gate_snapshot, ledger_snapshot, read_gate, store_snapshots


@dataclass
class _Seen:
    """The purchase-side facts of the records, grouped by user."""

    users: set[str] = field(default_factory=set)
    won: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    first_win: dict[str, float] = field(default_factory=dict)
    by_user: dict[str, list[Record]] = field(default_factory=lambda: defaultdict(list))
    sold_out_told: int = 0
    #: The fewest units each user asked for, among the attempts answered on the merits.
    asked: dict[str, int] = field(default_factory=dict)
    #: The 201s that name a purchase.
    wins: list[Record] = field(default_factory=list)
    #: The final refusals for stock: ``SOLD_OUT`` and ``INSUFFICIENT_STOCK``.
    refused: list[Record] = field(default_factory=list)
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
            seen.asked[record.user] = min(seen.asked.get(record.user, record.quantity),
                                          record.quantity)
        seen.by_user[record.user].append(record)
        if record.status == 201 and record.purchase_id:
            seen.won[record.user].add(record.purchase_id)
            seen.first_win[record.user] = min(seen.first_win.get(record.user, record.finished),
                                              record.finished)
            seen.wins.append(record)
        elif record.code in REFUSALS:
            seen.refused.append(record)
            seen.sold_out_told += record.code == "SOLD_OUT"
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
        return [*verify_holds(records, before, after, gate, faulted=faulted,
                              clock_slack_s=clock_slack_s), within_limit(after)]
    records = list(records)
    seen, statuses, failures = _gather(records, set(faulted))
    rows, total, units = after.purchases, after.total_stock, after.units
    committed = len(rows)
    checks = [_sold(seen, before, after)]
    checks.append(Check(
        "nothing unsold once SOLD_OUT was said",
        seen.sold_out_told == 0 or units == total,
        f"{seen.sold_out_told} SOLD_OUT answers, {total - units} units unsold"))

    doubled = {u for u, ids in seen.won.items() if len(ids) > 1}
    checks.append(Check("one purchase per user", not doubled,
                        f"users told two purchase ids: {_sample(doubled) or 'none'}"))
    successes = {u: sum(r.status == 201 for r in records) for u, records in seen.by_user.items()}
    twice = {u for u, n in successes.items() if n > 1}
    new_rows = committed - len(before.purchases)
    lost = {u for u in _untold(seen, before, rows) if u in seen.cut_short}
    checks.append(Check(
        "exactly one 201 per user: 201s counted = purchases made",
        not twice and sum(successes.values()) == new_rows - len(lost),
        f"{sum(successes.values())} x 201 for {new_rows} new rows, {len(lost)} of them "
        f"with the reply lost in a fault; users told 201 twice: {_sample(twice) or 'none'}"))

    checks.append(_repeats(seen, after))
    mismatched = {u for u, ids in seen.won.items() if rows.get(u) not in ids}
    checks.append(Check("every 201 is a row with its purchaseId", not mismatched,
                        f"{sum(map(len, seen.won.values()))} purchase ids told; "
                        f"not in PostgreSQL: {_sample(mismatched) or 'none'}"))
    checks.append(_quantities_told(seen, after))
    checks.append(within_limit(after))
    untold = _untold(seen, before, rows) - lost
    checks.append(Check("no row that no client was told about", not untold,
                        f"{new_rows} new rows, {len(lost)} told a fault's 503 or nothing; "
                        f"untold: {_sample(untold) or 'none'}"))
    checks.append(_gate_agrees(after, gate))
    checks.append(_losers(seen, rows, failures))
    checks.append(_refusals_final(seen, after))
    checks.append(_status_reads(statuses, seen, rows))
    return checks


def _sold(seen: _Seen, before: LedgerSnapshot, after: LedgerSnapshot) -> Check:
    """The rows take no more units than the stock, ``sold`` counts their units, and as many
    are sold as the demand allows: every buyer's units when all of them fit in the stock,
    else so many that fewer remain than the smallest unserved buyer asked for (with one unit
    each: every unit)."""
    rows, total, units = after.purchases, after.total_stock, after.units
    demand = seen.users | set(before.purchases)
    unserved = [seen.asked.get(u, 1) for u in demand if u not in rows]
    wanted = sum(map(after.units_of, demand & set(rows))) + sum(unserved)
    if wanted <= total:
        enough, expected = units == wanted, f"{wanted}"
    else:
        enough = total - units < min(unserved, default=1)
        expected = f"fewer than {min(unserved, default=1)} of {total} left unsold"
    return Check("no overselling",
                 units == after.sold and units <= total and enough,
                 f"units in rows {units} ({len(rows)} rows), sold counter {after.sold}, "
                 f"stock {total}, distinct buyers {len(demand)} asking {wanted} units: "
                 f"expected {expected}")


def _quantities_told(seen: _Seen, after: LedgerSnapshot) -> Check:
    """Every 201 that names the user's row answered a press for the units the row takes:
    the client got exactly the quantity it asked for."""
    wrong = {f"{r.user}:{r.quantity}!={after.units_of(r.user)}" for r in seen.wins
             if after.purchases.get(r.user) == r.purchase_id
             and r.quantity != after.units_of(r.user)}
    return Check("every 201 is a row of the quantity asked", not wrong,
                 f"{len(seen.wins)} x 201; rows of another quantity: {_sample(wrong) or 'none'}")


def within_limit(after: LedgerSnapshot) -> Check:
    """No purchase takes more units than the sale's per-user limit (with holds too)."""
    over = {f"{u}:{q}" for u, q in after.quantities.items()
            if u in after.purchases and q > after.per_user_limit}
    return Check("no purchase over the per-user limit", not over,
                 f"limit {after.per_user_limit}; rows over it: {_sample(over) or 'none'}")


def _gate_agrees(after: LedgerSnapshot, gate: GateSnapshot) -> Check:
    """The gate's holders are the rows, each holding the row's units, and its stock is the
    total less the units held: stock = total - the holders' units = total - units sold."""
    rows, total = after.purchases, after.total_stock
    held = {u: (pid, gate.units_of(u)) for u, pid in gate.buyers.items()}
    kept = {u: (pid, after.units_of(u)) for u, pid in rows.items()}
    differ = {f"{u}: {held.get(u)} vs {kept.get(u)}" for u in held.keys() | kept.keys()
              if held.get(u) != kept.get(u)}
    return Check(
        "gate agrees with ledger",
        not differ and gate.stock == total - gate.units == total - after.units,
        f"Redis stock {gate.stock} vs {total - after.units}; Redis buyers {len(gate.buyers)} "
        f"holding {gate.units} units vs rows {len(rows)} of {after.units} units; (buyer, "
        f"units) that differ from the rows': {_sample(differ) or 'none'}")


def _refusals_final(seen: _Seen, after: LedgerSnapshot) -> Check:
    """Nobody was refused for stock while a purchase of their size could still be served.

    Without holds the units unsold for good (free, or reserved by a commit in doubt) only
    shrink, so those still unsold at the end were unsold at every refusal: a ``SOLD_OUT`` or
    ``INSUFFICIENT_STOCK`` told for q units breaks when q or more are unsold at the end; the
    ``remainingStock`` an ``INSUFFICIENT_STOCK`` tells must be under q and no fewer than
    are unsold at the end.
    """
    left = after.total_stock - after.units
    wrong = {f"{r.user}:{r.code}:{r.quantity}" for r in seen.refused
             if (left >= r.quantity or (
                 r.remaining_stock is not None
                 and not left <= r.remaining_stock < r.quantity))}
    return Check("nobody refused while a purchase of their size could be served", not wrong,
                 f"{len(seen.refused)} refused for stock, {left} units unsold at the end; "
                 f"refused wrongly: {_sample(wrong) or 'none'}")


def _untold(seen: _Seen, before: LedgerSnapshot, rows: dict[str, str]) -> set[str]:
    """Users holding a new row whose purchase id no 201 told them."""
    return {u for u, pid in rows.items()
            if before.purchases.get(u) != pid and pid not in seen.won.get(u, ())}


def _asked_more(record: Record, units: int) -> bool:
    """An ``INSUFFICIENT_STOCK`` for more units than the user then bought: no break."""
    return record.code == "INSUFFICIENT_STOCK" and record.quantity > units


def _repeats(seen: _Seen, after: LedgerSnapshot) -> Check:
    """A winner's other attempts get ALREADY_PURCHASED (one of them the 201), never SOLD_OUT
    (before the win, an INSUFFICIENT_STOCK for more units than they bought is no break);
    once the winner has read their 201, every later attempt gets ALREADY_PURCHASED."""
    wrong: set[str] = set()
    repeats = 0
    for user, pid in after.purchases.items():
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
            elif not (same or told or _asked_more(record, after.units_of(user))):
                wrong.add(user)
    return Check("repeats get ALREADY_PURCHASED", not wrong,
                 f"{repeats} attempts after a win; wrong answers for: {_sample(wrong) or 'none'}")


def _losers(seen: _Seen, rows: dict[str, str], failures: list[Record]) -> Check:
    """Users without a purchase hear 409 SOLD_OUT or INSUFFICIENT_STOCK (or 429 when they
    spam), nothing else; nobody sees a 5xx or a cut connection, but for a fault's 503s and
    cut connections."""
    wrong = {u for u, records in seen.by_user.items() if u not in rows
             for r in records if not ((r.status == 409 and r.code in REFUSALS)
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


__all__ = ["CLOCK_SLACK_S", "CONFIRM", "NO_ANSWER", "PURCHASE", "REFUSALS", "STANDING",
           "STATUS", "THROTTLED", "UNAVAILABLE", "WATCH", "Check", "EndingRow", "GateSnapshot",
           "HoldsLedger", "LedgerSnapshot", "PurchaseRow", "Record", "WaitlistRow",
           "gate_snapshot", "ledger_snapshot", "read_gate", "store_snapshots", "verify",
           "within_limit"]
