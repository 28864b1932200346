"""The invariants of a sale with holds: what the clients were told against the rows,
ended holds and waitlist PostgreSQL holds and the gate in Redis.

:func:`flashflow.invariants.verify` judges a sale by these rules when its ledger snapshot
carries a :class:`~flashflow.invariants_data.HoldsLedger` (read by
:func:`flashflow.invariants_read.read_holds`).
Every rule is one :class:`~flashflow.invariants_data.Check`; what each compares is in its
docstring. Times told to clients are their wall clock, the rows' are PostgreSQL's: where
the two meet, they may disagree by ``clock_slack_s`` (:data:`CLOCK_SLACK_S` by default).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from itertools import pairwise

from .invariants_data import (
    CONFIRM,
    NO_ANSWER,
    PURCHASE,
    REFUSALS,
    STANDING,
    STATUS,
    UNAVAILABLE,
    Check,
    GateSnapshot,
    HoldsLedger,
    LedgerSnapshot,
    Record,
    failed,
    sample,
    throttled,
)

#: How far a client's clock and PostgreSQL's may disagree, by default: both run on one host
#: (or NTP-synced ones), so a quarter second is far past any real skew yet far below a hold.
CLOCK_SLACK_S = 0.25
#: A told ``expiresAt`` has milliseconds; the row keeps microseconds.
_TOLD_PRECISION_S = 0.0015
#: The answers a sale with holds may give, by record kind (the error code for a 409).
_ALLOWED: dict[str, set[int | tuple[int, str]]] = {
    PURCHASE: {201, 200, 202, (409, "SOLD_OUT"), (409, "INSUFFICIENT_STOCK"),
               (409, "ALREADY_PURCHASED"),
               (409, "SALE_NOT_ACTIVE")},
    CONFIRM: {200, (409, "HOLD_EXPIRED"), (409, "HOLD_CANCELLED")},
    STATUS: {200},
    STANDING: {200},
}


@dataclass
class _Told:
    """What the records told, sorted by what the rules need."""

    excused: Collection[Record]
    #: purchase id -> the records that named it as the user's hold or purchase
    holds: dict[str, list[Record]] = field(default_factory=lambda: defaultdict(list))
    wins: Counter[str] = field(default_factory=Counter)
    places: list[Record] = field(default_factory=list)
    confirms: list[Record] = field(default_factory=list)
    #: SOLD_OUT and INSUFFICIENT_STOCK answers.
    refused: list[Record] = field(default_factory=list)
    failures: list[Record] = field(default_factory=list)
    unexpected: list[Record] = field(default_factory=list)
    cut_short: set[str] = field(default_factory=set)

    @classmethod
    def gather(cls, records: Iterable[Record], faulted: Collection[Record]) -> _Told:
        told = cls(excused=faulted)
        for r in records:
            if r.status in (UNAVAILABLE, NO_ANSWER) and r in told.excused:
                told.cut_short.add(r.user)
                continue
            if failed(r):
                told.failures.append(r)
            elif _unexpected(r):
                told.unexpected.append(r)
            if r.kind == CONFIRM:
                told.confirms.append(r)
            elif r.purchase_id and r.status in (200, 201) and (
                    r.kind == PURCHASE or (r.kind == STATUS and r.purchased)
                    or (r.kind == STANDING and r.standing in ("held", "confirmed"))):
                told.holds[r.purchase_id].append(r)
                told.wins[r.purchase_id] += r.kind == PURCHASE and r.status == 201
            elif r.kind == PURCHASE and r.status == 202:
                told.places.append(r)
            elif r.kind == PURCHASE and r.code in REFUSALS:
                told.refused.append(r)
        return told


def _unexpected(r: Record) -> bool:
    """An answer no rule allows (a 429 is always allowed; kinds not listed are not judged
    here), or a success of a purchase or confirm that names no purchase."""
    allowed = _ALLOWED.get(r.kind)
    if allowed is None or throttled(r):
        return False
    if r.status not in allowed and (r.status, r.code) not in allowed:
        return True
    return r.kind in (PURCHASE, CONFIRM) and r.status in (200, 201) and not r.purchase_id


def verify_holds(records: Iterable[Record], before: LedgerSnapshot, after: LedgerSnapshot,
                 gate: GateSnapshot, *, faulted: Collection[Record] = (),
                 clock_slack_s: float = CLOCK_SLACK_S) -> list[Check]:
    """Judge a run on a sale with holds (``after.holds`` set); see :func:`verify
    <flashflow.invariants.verify>` for the arguments. One :class:`Check` per rule, in a
    stable order."""
    ledger = after.holds
    if ledger is None:
        raise ValueError("verify_holds judges a sale with holds: after.holds is None")
    told = _Told.gather(records, set(faulted))
    return [_units(after, ledger), _one_unit_each(told, ledger, gate, clock_slack_s),
            _holds_are_rows(told, ledger), _one_201_per_hold(told),
            _untold(told, before, ledger), _places_are_rows(told, ledger),
            _confirms(told, ledger), _in_time(ledger), _never_free_while_waiting(after, ledger),
            _offers_in_order(ledger), _refusals_final(told, after, ledger, clock_slack_s),
            _conservation(after, ledger, gate), _answers(told)]


def ledger_checks(after: LedgerSnapshot) -> list[Check]:
    """The rules the ledger of a sale with holds keeps by itself, whatever the clients were
    told: the units, confirm xor lapse in time, no unit free while anyone waits, offers in
    the order of places. :func:`verify_holds` judges them among the others; a test that
    keeps its own record of the answers judges the ledger with these alone.
    """
    ledger = after.holds
    if ledger is None:
        raise ValueError("ledger_checks judges a sale with holds: after.holds is None")
    return [_units(after, ledger), _in_time(ledger), _never_free_while_waiting(after, ledger),
            _offers_in_order(ledger)]


def _units(after: LedgerSnapshot, ledger: HoldsLedger) -> Check:
    """confirmed + held units <= total, and the sale's ``sold`` counts every row's units."""
    confirmed = sum(r.quantity for r in ledger.rows if r.confirmed)
    held = sum(r.quantity for r in ledger.rows) - confirmed
    return Check("confirmed + held <= total; sold counts every row",
                 confirmed + held <= after.total_stock and after.sold == confirmed + held,
                 f"confirmed {confirmed}, held {held} units of {len(ledger.rows)} rows, total "
                 f"{after.total_stock}, sold counter {after.sold}")


def _one_unit_each(told: _Told, ledger: HoldsLedger, gate: GateSnapshot,
                   slack_s: float) -> Check:
    """Nobody holds or owns two units: one row per user, one gate holder per purchase id;
    and of any two holds told to one user, one had ended (by PostgreSQL's clock) before
    the user was told of the other."""
    twice = {u for u, n in Counter(r.user for r in ledger.rows).items() if n > 1}
    shared = {p for p, n in Counter(gate.buyers.values()).items() if n > 1}
    ended = {e.purchase_id: e.ended_at for e in ledger.endings}
    first: dict[str, dict[str, float]] = defaultdict(dict)
    for pid, said in told.holds.items():
        for r in said:
            first[r.user][pid] = min(first[r.user].get(pid, math.inf), r.finished)
    overlapping = set()
    for user, ids in first.items():
        pairs = [(p, q) for p in ids for q in ids if p < q]
        for p, q in pairs:
            if not (ended.get(p, math.inf) <= ids[q] + slack_s
                    or ended.get(q, math.inf) <= ids[p] + slack_s):
                overlapping.add(user)
    return Check("nobody holds or owns two units", not (twice or shared or overlapping),
                 f"users with two rows: {sample(twice) or 'none'}; purchase ids held twice in "
                 f"the gate: {sample(shared) or 'none'}; users told two holds at once: "
                 f"{sample(overlapping) or 'none'}")


def _holds_are_rows(told: _Told, ledger: HoldsLedger) -> Check:
    """Every hold or purchase told (a 201, the 200 of the same hold, a status read, a
    standing event) is the user's row, or an ended hold of theirs, with the expiresAt told."""
    kept: dict[str, tuple[str, float | None]] = {r.purchase_id: (r.user, r.expires_at)
                                                 for r in ledger.rows}
    kept.update((e.purchase_id, (e.user, e.expires_at)) for e in ledger.endings)
    missing, wrong_end = set(), set()
    for pid, said in told.holds.items():
        for r in said:
            found = kept.get(pid)
            if found is None or found[0] != r.user:
                missing.add(f"{r.user}:{pid}")
            elif r.expires_at is not None and (
                    found[1] is None or abs(r.expires_at - found[1]) > _TOLD_PRECISION_S):
                wrong_end.add(f"{r.user}:{pid}")
    return Check("every hold told is a row with its expiresAt", not (missing or wrong_end),
                 f"{len(told.holds)} holds told; not in PostgreSQL: {sample(missing) or 'none'};"
                 f" another expiresAt: {sample(wrong_end) or 'none'}")


def _one_201_per_hold(told: _Told) -> Check:
    """A hold is announced by one 201; the same user pressing again hears 200."""
    twice = {pid for pid, n in told.wins.items() if n > 1}
    return Check("one 201 per hold", not twice,
                 f"{sum(told.wins.values())} x 201; holds told 201 twice: "
                 f"{sample(twice) or 'none'}")


def _untold(told: _Told, before: LedgerSnapshot, ledger: HoldsLedger) -> Check:
    """Every hold the run made is one a client was told of, or an offer to a place in line
    (the buyer learns of it from their stream), or one a fault's 503 may have hidden."""
    old = set(before.purchases.values())
    if before.holds is not None:
        old.update(e.purchase_id for e in before.holds.endings)
    offers = {e.offered_to for e in ledger.endings} | {p.purchase_id for p in ledger.places}
    made = [(r.purchase_id, r.user) for r in ledger.rows]
    made += [(e.purchase_id, e.user) for e in ledger.endings]
    untold = {f"{user}:{pid}" for pid, user in made
              if pid not in old and pid not in told.holds and pid not in offers
              and user not in told.cut_short}
    return Check("no hold that no client was told about", not untold,
                 f"{len(made)} holds made or ended, {len(offers - {None})} offers; untold: "
                 f"{sample(untold) or 'none'}")


def _places_are_rows(told: _Told, ledger: HoldsLedger) -> Check:
    """Every 202 is the user's row in the waitlist, at a position of 1 or more."""
    users = {p.user for p in ledger.places}
    wrong = {r.user for r in told.places
             if r.user not in users or (r.position is not None and r.position < 1)}
    return Check("every 202 place is a waitlist row", not wrong,
                 f"{len(told.places)} x 202; not in the waitlist: {sample(wrong) or 'none'}")


def _confirms(told: _Told, ledger: HoldsLedger) -> Check:
    """A confirm's 200 is a confirmed row; its 409 HOLD_EXPIRED a hold never confirmed; its
    409 HOLD_CANCELLED a cancelled hold."""
    confirmed = {r.purchase_id for r in ledger.rows if r.confirmed}
    cancelled = {e.purchase_id for e in ledger.endings if e.outcome == "cancelled"}
    wrong = set()
    for r in told.confirms:
        pid = r.purchase_id or ""
        if ((r.status == 200 and pid not in confirmed)
                or (r.code == "HOLD_EXPIRED" and pid in confirmed)
                or (r.code == "HOLD_CANCELLED" and pid not in cancelled)):
            wrong.add(f"{r.status} {r.code or ''} {pid}")
    paid = sum(r.status == 200 for r in told.confirms)
    return Check("every confirm 200 is a confirmed row", not wrong,
                 f"{len(told.confirms)} confirms, {paid} x 200; disagreeing with PostgreSQL: "
                 f"{sample(wrong) or 'none'}")


def _in_time(ledger: HoldsLedger) -> Check:
    """No row was confirmed at or after its expiresAt, and no hold lapsed before it (both
    PostgreSQL's clock); no hold is both a row and an ended hold: confirmed xor lapsed."""
    late = {r.purchase_id for r in ledger.rows
            if r.confirmed_at is not None and r.expires_at is not None
            and r.confirmed_at >= r.expires_at}
    early = {e.purchase_id for e in ledger.endings
             if e.outcome == "lapsed" and e.ended_at < e.expires_at}
    both = {r.purchase_id for r in ledger.rows} & {e.purchase_id for e in ledger.endings}
    return Check("no confirm after its hold's end, no lapse before it; no hold both kept and "
                 "ended", not (late or early or both),
                 f"confirmed at or after expiresAt: {sample(late) or 'none'}; lapsed before "
                 f"it: {sample(early) or 'none'}; rows that also ended: "
                 f"{sample(both) or 'none'}")


def _never_free_while_waiting(after: LedgerSnapshot, ledger: HoldsLedger) -> Check:
    """While anyone waits, no unit is free: at the snapshot, a waiting place means sold =
    total (unless the sale had ended, which closes the line); and no hold that ended before
    the sale's end without an offer did so while a place was waiting (joined before it
    ended, offered after or never)."""
    waiting = [p for p in ledger.places if p.waiting]
    now_free = bool(waiting) and not ledger.ended and after.sold < after.total_stock
    joined = sorted(p.joined_at for p in ledger.places)
    left = sorted(p.offered_at for p in ledger.places if p.offered_at is not None)
    passed = [e for e in ledger.endings if e.offered_to is None and e.ended_at < ledger.end_time]
    # places in line at a moment t: joined before t, minus offered at or before t
    skipped = {e.purchase_id for e in passed
               if bisect.bisect_left(joined, e.ended_at) - bisect.bisect_right(left, e.ended_at)
               > 0}
    return Check("no unit free while anyone waits", not (now_free or skipped),
                 f"{len(waiting)} waiting, sold {after.sold} of {after.total_stock}"
                 f"{' (sale ended)' if ledger.ended else ''}; units returned while a place "
                 f"waited: {sample(skipped) or 'none'}")


def _offers_in_order(ledger: HoldsLedger) -> Check:
    """Offers follow the order of places: offered places, by place, were offered at
    non-decreasing times; no place still waiting is ahead of (a smaller place than) one
    offered after it joined; and every offer went to a user with a place."""
    offered = sorted((p for p in ledger.places if not p.waiting), key=lambda p: p.place)
    backwards = {f"{a.place}>{b.place}" for a, b in pairwise(offered)
                 if (a.offered_at or 0) > (b.offered_at or 0)}
    places = [p.place for p in offered]
    latest = [0.0] * len(offered)  # latest[i]: the last offer to a place at or past offered[i]
    running = -math.inf
    for i in range(len(offered) - 1, -1, -1):
        running = latest[i] = max(running, offered[i].offered_at or 0.0)
    jumped = set()
    for w in (p for p in ledger.places if p.waiting):
        i = bisect.bisect_right(places, w.place)
        if i < len(offered) and latest[i] > w.joined_at:
            jumped.add(w.user)
    in_line = {p.user for p in ledger.places}
    strays = {e.offered_user or "" for e in ledger.endings
              if e.offered_to is not None and e.offered_user not in in_line}
    return Check("offers follow the order of places", not (backwards or jumped or strays),
                 f"{len(offered)} places offered; offered out of order: "
                 f"{sample(backwards) or 'none'}; waiting behind a later place offered: "
                 f"{sample(jumped) or 'none'}; offers to no place: {sample(strays) or 'none'}")


def _refusals_final(told: _Told, after: LedgerSnapshot, ledger: HoldsLedger,
                    slack_s: float) -> Check:
    """SOLD_OUT was told only when every unit was confirmed, INSUFFICIENT_STOCK for q units
    only when fewer than q were unconfirmed: for each, the units of the rows confirmed at or
    before it was read (its finished time plus the clock slack) leave fewer unconfirmed than
    it needed (one for SOLD_OUT)."""
    paid = sorted((-math.inf if r.confirmed_at is None else r.confirmed_at, r.quantity)
                  for r in ledger.rows if r.confirmed)
    times = [at for at, _ in paid]
    by = [0, *itertools.accumulate(n for _, n in paid)]  # by[i]: units of the first i paid

    def unpaid_at(moment: float) -> int:
        return after.total_stock - by[bisect.bisect_right(times, moment)]

    early = [r for r in told.refused
             if unpaid_at(r.finished + slack_s) >= (1 if r.code == "SOLD_OUT" else r.quantity)]
    return Check("SOLD_OUT and INSUFFICIENT_STOCK only once final", not early,
                 f"{len(told.refused)} refused for stock; {by[-1]} of {after.total_stock} "
                 f"units confirmed; told too early to: "
                 f"{sample({r.user for r in early}) or 'none'} (clock slack {slack_s} s)")


def _conservation(after: LedgerSnapshot, ledger: HoldsLedger, gate: GateSnapshot) -> Check:
    """The gate's holders are exactly the rows held or confirmed, each holding its row's
    units; stock = total - the holders' units."""
    rows = {r.user: (r.purchase_id, r.quantity) for r in ledger.rows}
    held = {u: (pid, gate.units_of(u)) for u, pid in gate.buyers.items()}
    differ = {f"{u}: {held.get(u)} vs {rows.get(u)}" for u in held.keys() | rows.keys()
              if held.get(u) != rows.get(u)}
    expected = after.total_stock - sum(r.quantity for r in ledger.rows)
    return Check("gate holders are the held and confirmed rows; stock = total - holders",
                 not differ and gate.stock == expected == after.total_stock - gate.units,
                 f"Redis stock {gate.stock} vs {expected}; Redis holders {len(gate.buyers)} "
                 f"holding {gate.units} units vs rows {len(rows)}; (holder, units) that "
                 f"differ from the rows': {sample(differ) or 'none'}")


def _answers(told: _Told) -> Check:
    """No 5xx or cut connection but for a fault's, and no answer the rules do not allow."""
    odd = {f"{r.kind} {r.status} {r.code or ''}".strip() for r in told.failures + told.unexpected}
    return Check("no 5xx, dropped connection or unexpected answer",
                 not (told.failures or told.unexpected),
                 f"{len(told.failures)} 5xx/dropped, {len(told.unexpected)} unexpected: "
                 f"{sample(odd) or 'none'}")


__all__ = ["CLOCK_SLACK_S", "ledger_checks", "verify_holds"]
