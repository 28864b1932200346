"""The invariant check's rules for a sale with holds, each seen holding and breaking, on
hand-built snapshots (no server)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from flashflow.http.replies import read_reply, read_standing
from flashflow.invariants import (
    CONFIRM,
    PURCHASE,
    STANDING,
    STATUS,
    EndingRow,
    GateSnapshot,
    HoldsLedger,
    LedgerSnapshot,
    PurchaseRow,
    Record,
    WaitlistRow,
    verify,
)
from loadtests.records import RecordWriter, read_records

UNITS = "confirmed + held <= total; sold counts every row"
ONE_EACH = "nobody holds or owns two units"
TOLD_ROWS = "every hold told is a row with its expiresAt"
ONE_201 = "one 201 per hold"
UNTOLD = "no hold that no client was told about"
PLACES = "every 202 place is a waitlist row"
CONFIRMS = "every confirm 200 is a confirmed row"
IN_TIME = ("no confirm after its hold's end, no lapse before it; no hold both kept and "
           "ended")
NOT_FREE = "no unit free while anyone waits"
ORDER = "offers follow the order of places"
SOLD_OUT = "SOLD_OUT and INSUFFICIENT_STOCK only once final"
GATE = "gate holders are the held and confirmed rows; stock = total - holders"
ANSWERS = "no 5xx, dropped connection or unexpected answer"


def ledger(rows=(), endings=(), places=(), *, total=2, sold=None, end_time=100.0,
           read_at=50.0) -> LedgerSnapshot:
    """A sale with holds as PostgreSQL would hold it (``sold`` counts the rows unless set)."""
    rows, endings, places = tuple(rows), tuple(endings), tuple(places)
    return LedgerSnapshot(total, len(rows) if sold is None else sold,
                          {r.user: r.purchase_id for r in rows},
                          HoldsLedger(5, end_time, read_at, rows, endings, places))


def gate_of(after: LedgerSnapshot) -> GateSnapshot:
    """The gate that keeps the conservation law with ``after``."""
    return GateSnapshot(after.total_stock - len(after.purchases), dict(after.purchases))


BEFORE = ledger()


def broken(records, after, gate=None, *, faulted=(), **kwargs) -> set[str]:
    checks = verify(records, BEFORE, after, gate_of(after) if gate is None else gate,
                    faulted=faulted, **kwargs)
    assert len({c.name for c in checks}) == len(checks) == 14
    return {c.name for c in checks if not c.held}


def press(user, status, at, pid=None, *, code=None, expires=None, position=None) -> Record:
    standing = "held" if status in (200, 201) else "waitlisted" if status == 202 else None
    return Record(PURCHASE, user, status, at, 10.0, purchase_id=pid, code=code,
                  standing=standing, expires_at=expires, position=position)


def confirm(user, pid, status, at, code=None) -> Record:
    return Record(CONFIRM, user, status, at, 10.0, purchase_id=pid, code=code,
                  standing="confirmed" if status == 200 else None)


def event(user, standing, at, pid=None, expires=None) -> Record:
    return Record(STANDING, user, 200, at, 0.0, purchase_id=pid, standing=standing,
                  expires_at=expires)


def held(pid, user, expires, confirmed=None) -> PurchaseRow:
    return PurchaseRow(pid, user, expires, confirmed)


def lapsed(pid, user, expires, ended, offered_to=None, offered_user=None,
           outcome="lapsed") -> EndingRow:
    return EndingRow(pid, user, outcome, expires, ended, offered_to, offered_user, True)


def place(user, number, joined, offered=None, pid=None) -> WaitlistRow:
    return WaitlistRow(user, number, joined, offered, pid)


# A checkout, stock 2, 3-second holds: alice holds and pays; bob holds and walks away, his
# hold lapses to carol, first in line, who pays from her stream; dave's place behind her
# stays (the line closed once both units were paid) and erin, late, hears SOLD_OUT.
STORY = [
    press("alice", 201, 1.0, "p1", expires=4.0), press("alice", 200, 1.2, "p1", expires=4.0),
    press("bob", 201, 1.1, "p2", expires=4.1),
    press("carol", 202, 1.5, position=1), press("dave", 202, 1.6, position=2),
    confirm("alice", "p1", 200, 2.0),
    Record(STATUS, "bob", 200, 2.5, 5.0, purchase_id="p2", purchased=True, standing="held",
           expires_at=4.1),
    event("carol", "waitlisted", 1.6), event("carol", "held", 4.3, "p3", expires=7.15),
    confirm("bob", "p2", 409, 4.5, "HOLD_EXPIRED"), confirm("carol", "p3", 200, 5.0),
    event("carol", "confirmed", 5.1, "p3"),
    press("erin", 409, 5.2, code="SOLD_OUT"),
]
AFTER = ledger(
    [held("p1", "alice", 4.0, 2.0), held("p3", "carol", 7.15, 5.0)],
    [lapsed("p2", "bob", 4.1, 4.2, "p3", "carol")],
    [place("carol", 10, 1.5, 4.15, "p3"), place("dave", 11, 1.6)])


def test_a_checkout_holds_every_rule():
    """Holds paid, a lapse handed to the first in line, a waiting place, SOLD_OUT once
    everything is paid: all 13 rules hold."""
    assert broken(STORY, AFTER) == set()


def test_a_sale_without_holds_keeps_its_own_rules():
    """A snapshot without holds is judged by the original rules, none of these."""
    plain = LedgerSnapshot(1, 1, {"alice": "p1"})
    names = {c.name for c in verify([press("alice", 201, 1.0, "p1")], LedgerSnapshot(1, 0, {}),
                                    plain, GateSnapshot(0, {"alice": "p1"}))}
    assert "no overselling" in names and UNITS not in names


def test_more_held_and_confirmed_than_units_breaks():
    """A third unit held in a sale of two breaks the count; a sold counter off the rows too."""
    extra = ledger([*AFTER.holds.rows, held("p9", "frank", 9.0)], AFTER.holds.endings,
                   AFTER.holds.places)
    records = [*STORY, press("frank", 201, 3.0, "p9", expires=9.0)]
    assert broken(records, extra) == {UNITS}
    assert broken(STORY, replace(AFTER, sold=3)) == {UNITS}


def test_two_holds_of_one_user_at_once_break():
    """A user told a second hold before the first had ended holds two units; told it after
    the first ended (within the clock slack), they do not."""
    def story(ended_at):
        after = ledger([held("p1", "alice", 9.0)], [lapsed("p2", "alice", 1.9, ended_at)])
        return [press("alice", 201, 1.0, "p2", expires=1.9),
                press("alice", 201, 2.0, "p1", expires=9.0)], after
    assert broken(*story(1.95)) == set()
    assert broken(*story(2.2)) == set()  # within the slack
    assert broken(*story(2.5)) == {ONE_EACH}


def test_one_purchase_id_for_two_gate_holders_breaks():
    """The gate naming one purchase id for two users breaks (and the conservation law)."""
    gate = GateSnapshot(0, {"alice": "p1", "carol": "p1"})
    assert broken(STORY, AFTER, gate) == {ONE_EACH, GATE}


@pytest.mark.parametrize("told", [
    press("gil", 201, 1.0, "p5", expires=4.0),
    press("bob", 201, 1.1, "p1", expires=4.0),
    press("alice", 201, 1.0, "p1", expires=4.5),
    event("carol", "held", 4.3, "p3", expires=7.0),
    Record(STATUS, "zoe", 200, 2.0, 1.0, purchase_id="p7", purchased=True),
], ids=["unknown id", "another user's", "another expiresAt", "stream", "status read"])
def test_a_hold_told_that_is_no_row_breaks(told):
    """A hold told (201, stream, status read) that PostgreSQL lacks, or holds for another
    user or with another end, breaks."""
    records = [r for r in STORY if r.kind != PURCHASE or r.user != "alice"] + [told]
    if told.user != "alice":
        records += [r for r in STORY if r.kind == PURCHASE and r.user == "alice"]
    assert TOLD_ROWS in broken(records, AFTER)


def test_expires_at_told_to_the_millisecond_holds():
    """expiresAt is told with milliseconds: a row's microseconds are no break."""
    records = [*STORY, press("alice", 200, 1.3, "p1", expires=3.9991)]
    assert broken(records, AFTER) == set()


def test_two_201s_for_one_hold_break():
    """A second 201 for the same hold breaks; a 200 does not."""
    assert broken([*STORY, press("alice", 201, 1.3, "p1", expires=4.0)], AFTER) == {ONE_201}


def test_a_hold_nobody_was_told_of_breaks_unless_offered_or_hidden_by_a_fault():
    """A row no answer named breaks; the same row as an offer to a place, or for a user whose
    press a fault cut short, does not."""
    rows = [*AFTER.holds.rows, held("p9", "zed", 9.0)]
    after = ledger(rows, AFTER.holds.endings, AFTER.holds.places, total=3)
    records = [r for r in STORY if r.user != "erin"]
    assert broken(records, after) == {UNTOLD}
    cut = press("zed", 503, 3.0, code="UNAVAILABLE")
    assert broken([*records, cut], after, faulted=[cut]) == set()
    # offered ahead of carol (a unit an operator added), from a place before hers
    offered = ledger(rows, AFTER.holds.endings,
                     [place("zed", 9, 1.4, 4.1, "p9"), *AFTER.holds.places], total=3)
    assert broken(records, offered) == set()


def test_a_202_without_a_waitlist_row_breaks():
    """A place told that the waitlist does not hold breaks."""
    assert broken([*STORY, press("gil", 202, 1.7, position=3)], AFTER) == {PLACES}


@pytest.mark.parametrize(("answer", "ok"), [
    (confirm("bob", "p2", 200, 4.5), False),
    (confirm("alice", "p1", 409, 2.5, "HOLD_EXPIRED"), False),
    (confirm("bob", "p2", 409, 4.5, "HOLD_CANCELLED"), False),
    (confirm("bob", "p2", 409, 4.6, "HOLD_EXPIRED"), True),
    (confirm("alice", "p1", 200, 2.5), True),
], ids=["200 for a lapsed hold", "expired but confirmed", "cancelled but lapsed",
        "expired and lapsed", "confirmed twice"])
def test_confirm_answers_agree_with_the_ledger(answer, ok):
    """A confirm's 200 is a confirmed row; HOLD_EXPIRED never one; HOLD_CANCELLED a cancel."""
    assert broken([*STORY, answer], AFTER) == (set() if ok else {CONFIRMS})


def test_a_confirm_at_its_end_or_a_hold_both_kept_and_ended_breaks():
    """confirmed_at >= expires_at breaks; so does a purchase id both a row and an ending, and
    a lapse before its hold's end."""
    late = ledger([held("p1", "alice", 4.0, 4.0), AFTER.holds.rows[1]], AFTER.holds.endings,
                  AFTER.holds.places)
    assert broken(STORY, late) == {IN_TIME}
    both = ledger(AFTER.holds.rows, [*AFTER.holds.endings, lapsed("p1", "alice", 4.0, 4.2,
                                                                   "p3", "carol")],
                  AFTER.holds.places)
    assert broken(STORY, both) == {IN_TIME}
    early = ledger(AFTER.holds.rows, [lapsed("p2", "bob", 4.1, 4.05, "p3", "carol")],
                   AFTER.holds.places)
    assert broken(STORY, early) == {IN_TIME}


def test_a_free_unit_while_someone_waits_breaks_until_the_sale_ends():
    """A waiting place with a unit free breaks, unless the sale had ended (the line closed)."""
    one = ledger([AFTER.holds.rows[0]], AFTER.holds.endings, AFTER.holds.places)
    records = [r for r in STORY if r.user not in ("carol", "erin")]
    records += [press("carol", 202, 1.5, position=1)]
    assert NOT_FREE in broken(records, one)
    ended = replace(one, holds=replace(one.holds, read_at=101.0))
    assert NOT_FREE not in broken(records, ended)


@pytest.mark.parametrize(("joined", "offered", "ended_at", "ok"), [
    (2.0, None, 3.0, False),
    (2.0, 4.0, 3.0, False),
    (3.5, None, 3.0, True),
    (2.0, 2.9, 3.0, True),
    (2.0, None, 100.5, True),
], ids=["waiting", "offered later", "joined later", "offered before", "after the end"])
def test_a_hold_ending_without_an_offer_while_a_place_waited_breaks(joined, offered,
                                                                    ended_at, ok):
    """An ended hold whose unit went to nobody while a place was in line breaks (before
    the sale's end); a place that joined after, or was offered before, is no break."""
    after = ledger([held("p1", "alice", 9.0, 2.0), held("p4", "hal", 9.0)],
                   [lapsed("p2", "bob", ended_at - 0.1, ended_at)],
                   [place("hal", 1, joined, offered, "p4" if offered else None)])
    if offered is None:
        after = ledger(after.holds.rows[:1], after.holds.endings, after.holds.places, total=1,
                       end_time=100.0, read_at=200.0)
    records = [press("alice", 201, 1.0, "p1", expires=9.0), press("bob", 201, 1.1, "p2",
                                                                  expires=ended_at - 0.1),
               press("hal", 202, joined, position=1)]
    if offered is not None:
        records.append(event("hal", "held", offered + 0.1, "p4", expires=9.0))
    assert broken(records, after) == (set() if ok else {NOT_FREE})


def test_offers_out_of_the_order_of_places_break():
    """A later place offered before an earlier one, a waiting place passed over by a later
    one, and an offer to a user with no place each break; offers in order do not."""
    def judged(places, endings=()):
        rows = [held(p.purchase_id, p.user, 9.0) for p in places if p.purchase_id]
        records = [press(p.user, 202, p.joined_at, position=1) for p in places]
        records += [event(p.user, "held", 8.0, p.purchase_id, 9.0) for p in places
                    if p.purchase_id]
        return broken(records, ledger(rows, endings, places, total=len(rows)))
    assert judged([place("ann", 1, 1.0, 4.0, "q1"), place("ben", 2, 1.1, 5.0, "q2")]) == set()
    assert judged([place("ann", 1, 1.0, 5.0, "q1"), place("ben", 2, 1.1, 4.0, "q2")]) == {ORDER}
    assert judged([place("ann", 1, 1.0), place("ben", 2, 1.1, 4.0, "q2")]) == {ORDER}
    stray = [lapsed("p0", "cat", 3.0, 4.0, "q9", "nobody")]
    assert judged([place("ann", 1, 1.0, 4.0, "q1")], stray) == {ORDER, UNTOLD}


def test_sold_out_before_every_unit_was_confirmed_breaks():
    """SOLD_OUT read before the last confirm (past the clock slack) breaks; within the
    slack, or with a wider one, it does not."""
    early = press("erin", 409, 4.5, code="SOLD_OUT")  # finished 4.51; carol paid at 5.0
    records = [r for r in STORY if r.user != "erin"]
    assert broken([*records, early], AFTER) == {SOLD_OUT}
    assert broken([*records, early], AFTER, clock_slack_s=0.6) == set()
    near = press("erin", 409, 4.8, code="SOLD_OUT")  # finished 4.81, within 0.25 s
    assert broken([*records, near], AFTER) == set()


def test_a_gate_off_the_held_and_confirmed_rows_breaks():
    """Redis stock not total - holders, or holders not the rows, breaks."""
    assert broken(STORY, AFTER, GateSnapshot(1, dict(AFTER.purchases))) == {GATE}
    assert broken(STORY, AFTER, GateSnapshot(0, {"alice": "p1", "bob": "p2"})) == {GATE}


def test_5xx_cut_and_unexpected_answers_break_unless_a_fault_excuses_them():
    """A 500, a 404 to a confirm, a 201 naming no purchase break; a fault's 503 does not."""
    fault = press("gil", 503, 3.0, code="UNAVAILABLE")
    assert broken([*STORY, fault], AFTER, faulted=[fault]) == set()
    for odd in (press("gil", 500, 3.0, code="INTERNAL"), press("gil", 0, 3.0, code="reset"),
                confirm("alice", "p1", 404, 3.0, "PURCHASE_NOT_FOUND"),
                press("gil", 201, 3.0), press("gil", 409, 3.0, code="ALREADY_CONFIRMED")):
        assert broken([*STORY, odd], AFTER) == {ANSWERS}, odd
    assert broken([*STORY, fault], AFTER) == {ANSWERS}


def test_replies_of_holds_are_read_from_the_wire():
    """201 held, 202 waitlisted and a standing event read into what the records keep."""
    hold = read_reply(201, {"data": {"purchaseId": "p1", "userId": "u", "productName": "x",
                                     "status": "held", "purchasedAt": "2026-01-01T00:00:00.000Z",
                                     "expiresAt": "2026-01-01T00:00:05.250Z"}})
    assert (hold.purchase_id, hold.standing) == ("p1", "held")
    assert hold.expires_at is not None and hold.expires_at.timestamp() == 1767225605.25
    place_ = read_reply(202, {"data": {"userId": "u", "productName": "x", "status": "waitlisted",
                                       "position": 3, "waitlistLength": 7}})
    assert (place_.standing, place_.position, place_.waitlist_length) == ("waitlisted", 3, 7)
    sale = read_reply(200, {"data": {"status": "active", "remainingStock": 4}})
    assert (sale.standing, sale.remaining_stock) == (None, 4)
    offer = read_standing('{"purchased":true,"purchaseId":"p2","status":"held",'
                          '"expiresAt":"2026-01-01T00:00:05.000Z"}')
    assert (offer.status, offer.purchase_id, offer.standing) == (200, "p2", "held")
    assert read_standing("not json") == read_reply(200, None)


def test_records_of_holds_round_trip(tmp_path):
    """The new fields (standing, expiresAt, position) survive the record files."""
    writer = RecordWriter(tmp_path)
    for record in STORY:
        writer.write(record)
    writer.close()
    assert list(read_records(tmp_path)) == STORY
