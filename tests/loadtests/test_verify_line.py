"""The line's rules, each seen holding and breaking, on hand-built ledgers (no server)."""

from __future__ import annotations

import hashlib
import random
import uuid
from dataclasses import replace

import pytest

from actors.places_sql import line_order
from flashflow.invariants_data import Record
from flashflow.invariants_line import (
    JOIN,
    LINE_FINAL,
    LineLedger,
    LineTold,
    TicketRow,
    shuffled,
    verify_line,
)

COMMITTED = "the seed is the committed one"
SEED_ORDER = "the early tickets are in the seed's order"
LATE_ORDER = "later arrivals follow in arrival order"
IN_ORDER = "admissions follow the published order"
ONCE = "each ticket is admitted once"
BOUGHT = "nobody bought without an admitted ticket"
CLOSED = "a sold-out line leaves nobody waiting"

SEED = bytes(range(32))
#: The opening, and the first admission a second later; one a second after that.
OPENS = 1_000.0
WINDOW_S = 30


def _ticket(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def placed(early: int, late: int, seed: bytes = SEED, *, rng_seed: int = 1) -> list[TicketRow]:
    """``early`` tickets placed in the seed's order, then ``late`` ones in arrival order
    (arrival numbers 1.., users ``u<arrival>``), none admitted."""
    rng = random.Random(rng_seed)
    ids = [_ticket(rng) for _ in range(early + late)]
    order = {str(t): i for i, t in enumerate(
        line_order(seed, [uuid.UUID(t) for t in ids[:early]]), start=1)}
    return [TicketRow(t, f"u{n}", n, n <= early,
                      order[t] if n <= early else n, None)
            for n, t in enumerate(ids, start=1)]


def admit(tickets: list[TicketRow], upto: int) -> list[TicketRow]:
    """Admit positions 1..``upto``, one a second from a second after the opening."""
    return [replace(t, admitted_at=OPENS + t.position)
            if t.position is not None and t.position <= upto else t for t in tickets]


def by_position(tickets: list[TicketRow], position: int) -> TicketRow:
    return next(t for t in tickets if t.position == position)


# 40 tickets taken before the opening, 20 after; 25 admitted; the first 10 admitted bought
# (stock 10) within their window, the line closed as sold out after the 25th admission.
TICKETS = admit(placed(40, 20), 25)
LEDGER = LineLedger(
    commitment=hashlib.sha256(SEED).hexdigest(), seed=SEED, length=60, admitted=25,
    closed="sold_out", closed_at=OPENS + 25.5, window_s=WINDOW_S, tickets=TICKETS,
    bought={by_position(TICKETS, p).user: OPENS + p + 3 for p in range(1, 11)},
    sold_out=True)


def told_of(ledger: LineLedger) -> LineTold:
    """Every ticket's stream followed to its final event, as the records would tell it."""
    records = [Record(LINE_FINAL, t.user, 200, OPENS, 0.0, purchase_id=t.ticket,
                      code="admitted" if t.admitted_at is not None else "closed",
                      expires_at=t.admitted_at) for t in ledger.tickets]
    joins = [Record(JOIN, t.user, 201, 0.0, 1.0, purchase_id=t.ticket) for t in ledger.tickets]
    return LineTold.of([*joins, *records])


def broken(ledger: LineLedger, told: LineTold | None = None) -> set[str]:
    checks = verify_line(ledger, told_of(ledger) if told is None else told)
    assert len({c.name for c in checks}) == len(checks) == 7
    return {c.name for c in checks if not c.held}


def test_a_fair_line_holds_every_rule():
    """Early tickets in the seed's order, later ones by arrival, admissions in order, buyers
    admitted, the sold-out line closed with every stream ended: all seven rules hold."""
    assert broken(LEDGER) == set()


def test_the_records_tell_each_final_and_admission():
    """LineTold gathers each followed ticket's final event and its admission moment."""
    told = told_of(LEDGER)
    assert len(told.finals) == 60 and len(told.admissions) == 25
    assert told.admissions[by_position(TICKETS, 1).ticket] == {OPENS + 1}
    assert told.finals[by_position(TICKETS, 60).ticket] == "closed"


def test_a_line_before_its_opening_holds():
    """Before the reveal no seed is known and no early ticket placed: nothing breaks."""
    waiting = [replace(t, position=None, admitted_at=None) for t in placed(30, 0)]
    ledger = replace(LEDGER, seed=None, length=30, admitted=0, closed=None, closed_at=None,
                     tickets=waiting, bought={}, sold_out=False)
    assert broken(ledger, LineTold()) == set()


def test_early_tickets_placed_before_the_reveal_break():
    """An early ticket holding a position while no seed is revealed breaks the commitment."""
    ledger = replace(LEDGER, seed=None)
    assert broken(ledger) == {COMMITTED}


def test_another_commitment_breaks():
    """A seed whose sha256 is not the published commitment breaks that rule only."""
    assert broken(replace(LEDGER, commitment=hashlib.sha256(b"other").hexdigest())) == {COMMITTED}


def test_an_order_not_the_seeds_breaks():
    """Tickets placed by one seed while another is committed and revealed break the seed's
    order; revealing a seed other than the committed one breaks both."""
    other = b"another seed, 32 bytes long....."
    assert broken(replace(LEDGER, seed=other,
                          commitment=hashlib.sha256(other).hexdigest())) == {SEED_ORDER}
    assert broken(replace(LEDGER, seed=other)) == {COMMITTED, SEED_ORDER}


def test_two_early_tickets_swapped_break():
    """Two early tickets (not yet admitted) in each other's places break the seed's order."""
    a, b = by_position(TICKETS, 30), by_position(TICKETS, 31)
    swapped = [replace(t, position=31) if t is a else replace(t, position=30) if t is b else t
               for t in TICKETS]
    assert broken(replace(LEDGER, tickets=swapped)) == {SEED_ORDER}


def test_an_early_position_skipped_breaks():
    """The early tickets must hold positions 1..E: a hole among them breaks the seed's order."""
    last = by_position(TICKETS, 40)
    moved = [replace(t, position=99) if t is last else t for t in TICKETS]
    assert SEED_ORDER in broken(replace(LEDGER, tickets=moved))


def test_a_later_ticket_out_of_arrival_order_breaks():
    """Two later arrivals in each other's places break the arrival order, and only that."""
    a, b = by_position(TICKETS, 50), by_position(TICKETS, 51)
    swapped = [replace(t, arrival=b.arrival) if t is a else replace(t, arrival=a.arrival)
               if t is b else t for t in TICKETS]
    assert broken(replace(LEDGER, tickets=swapped)) == {LATE_ORDER}


def test_a_later_ticket_ahead_of_the_early_ones_breaks():
    """A ticket taken after the opening placed among the early ones breaks both orders."""
    late = by_position(TICKETS, 41)
    early = by_position(TICKETS, 35)
    moved = [replace(t, position=35) if t is late else replace(t, position=41)
             if t is early else t for t in TICKETS]
    assert broken(replace(LEDGER, tickets=moved)) >= {SEED_ORDER, LATE_ORDER}


def test_an_admission_gap_breaks():
    """Position 20 skipped while 21..25 are admitted breaks the published order."""
    gap = [replace(t, admitted_at=None) if t.position == 20 else t for t in TICKETS]
    assert broken(replace(LEDGER, tickets=gap)) == {IN_ORDER}


def test_admissions_beyond_the_count_break():
    """A ticket admitted past the line's "admitted up to" breaks the published order."""
    beyond = replace(LEDGER, tickets=admit(TICKETS, 26), closed_at=OPENS + 26.5)
    assert broken(beyond) == {IN_ORDER}


def test_admissions_out_of_time_order_break():
    """Position 22 admitted before position 21 breaks the published order."""
    flipped = [replace(t, admitted_at=OPENS + 22) if t.position == 21 else
               replace(t, admitted_at=OPENS + 21) if t.position == 22 else t for t in TICKETS]
    assert broken(replace(LEDGER, tickets=flipped)) == {IN_ORDER}


def test_a_ticket_told_two_admissions_breaks():
    """A stream that told one ticket two admission moments, or one PostgreSQL lacks, breaks."""
    told = told_of(LEDGER)
    first = by_position(TICKETS, 1).ticket
    twice = LineTold(told.finals, {**told.admissions, first: {OPENS + 1, OPENS + 7}})
    assert broken(LEDGER, twice) == {ONCE}
    other = LineTold(told.finals, {**told.admissions, first: {OPENS + 1.5}})
    assert broken(LEDGER, other) == {ONCE}
    waiting = by_position(TICKETS, 30).ticket
    unadmitted = LineTold(told.finals, {**told.admissions, waiting: {OPENS + 30}})
    assert broken(LEDGER, unadmitted) == {ONCE}


def test_the_same_admission_told_twice_holds():
    """A ticket told its admission twice at the same moment (a stream and a ticket read)
    holds, and so does the millisecond the wire rounds a row's microseconds to."""
    first = by_position(TICKETS, 1)
    records = [Record(LINE_FINAL, first.user, 200, OPENS, 0.0, purchase_id=first.ticket,
                      code="admitted", expires_at=OPENS + 1.0004) for _ in range(2)]
    assert broken(LEDGER, LineTold.of(records)) == set()


def test_a_buyer_never_admitted_breaks():
    """A purchase by a user whose ticket waits, or who has no ticket, breaks."""
    waiting = by_position(TICKETS, 30).user
    assert broken(replace(LEDGER, bought={**LEDGER.bought, waiting: OPENS + 31})) == {BOUGHT}
    assert broken(replace(LEDGER, bought={**LEDGER.bought, "stranger": OPENS + 5})) == {BOUGHT}


@pytest.mark.parametrize(("after_s", "ok"), [
    (-5.0, False), (-1.0, True), (WINDOW_S + 9.0, True), (WINDOW_S + 11.0, False)])
def test_a_purchase_outside_the_admission_window_breaks(after_s, ok):
    """A purchase before its admission (beyond the clock slack) or committed after its window
    and the purchase's wait breaks."""
    first = by_position(TICKETS, 1)
    bought = {**LEDGER.bought, first.user: OPENS + 1 + after_s}
    assert broken(replace(LEDGER, bought=bought)) == (set() if ok else {BOUGHT})


def test_a_sold_out_line_still_open_breaks():
    """A line left open once SOLD_OUT is final breaks; the same line not sold out holds."""
    still = replace(LEDGER, closed=None, closed_at=None)
    assert broken(still) == {CLOSED}
    assert broken(replace(still, sold_out=False)) == set()


def test_an_admission_after_the_close_breaks():
    """A ticket admitted after the line closed as sold out breaks."""
    assert broken(replace(LEDGER, closed_at=OPENS + 24.5)) == {CLOSED}


def test_a_followed_stream_without_a_final_event_breaks():
    """A stream a client followed that ended without ``admitted`` or ``closed`` breaks once
    sold out; while the sale still sells, a client may stop following."""
    told = told_of(LEDGER)
    cut = LineTold({**told.finals, by_position(TICKETS, 50).ticket: None}, told.admissions)
    assert broken(LEDGER, cut) == {CLOSED}
    assert broken(replace(LEDGER, closed=None, closed_at=None, sold_out=False), cut) == set()


def test_a_final_event_after_none_counts():
    """A ticket's later record with its final event outweighs an earlier one without (a
    stream cut, with the transport's error as its code), which is no final event."""
    ticket = by_position(TICKETS, 50)
    cut = Record(LINE_FINAL, ticket.user, 0, OPENS, 0.0, purchase_id=ticket.ticket,
                 code="ReadError")
    assert LineTold.of([cut]).finals == {ticket.ticket: None}
    records = [cut,
               Record(LINE_FINAL, ticket.user, 200, OPENS, 0.0, purchase_id=ticket.ticket,
                      code="closed")]
    assert LineTold.of(records).finals == {ticket.ticket: "closed"}


SHUFFLE = "the early order is not the order of arrival"


def test_a_fair_shuffle_of_a_thousand_passes():
    """1,000 early tickets placed by a seed's order show no rank correlation with arrival."""
    ledger = replace(LEDGER, tickets=placed(1000, 0, hashlib.sha256(b"fair").digest(),
                                            rng_seed=7))
    check = shuffled(ledger)
    assert check.name == SHUFFLE and check.held, check.detail


@pytest.mark.parametrize("reverse", [False, True], ids=["arrival", "reversed"])
def test_the_order_of_arrival_fails_the_shuffle(reverse):
    """Early tickets placed in (or against) the order they arrived in fail."""
    tickets = [replace(t, position=1001 - t.arrival if reverse else t.arrival)
               for t in placed(1000, 0)]
    check = shuffled(replace(LEDGER, tickets=tickets))
    assert not check.held and ("+1.0000" in check.detail or "-1.0000" in check.detail)


def test_a_shuffle_of_fewer_than_a_hundred_is_no_evidence():
    """99 early tickets are too few to judge: the check fails and says so."""
    check = shuffled(replace(LEDGER, tickets=placed(99, 10)))
    assert not check.held and "only 99" in check.detail
    assert shuffled(replace(LEDGER, tickets=placed(100, 10))).held
