"""The invariant check's rules for purchases of several units, each seen holding and
breaking, on hand-built snapshots (no server)."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

from flashflow.http.replies import read_reply
from flashflow.invariants import (
    PURCHASE,
    GateSnapshot,
    HoldsLedger,
    LedgerSnapshot,
    PurchaseRow,
    Record,
    verify,
)
from loadtests.records import RecordWriter, read_records, record_of

OVERSELLING = "no overselling"
SOLD_OUT_SAID = "nothing unsold once SOLD_OUT was said"
REPEATS = "repeats get ALREADY_PURCHASED"
QUANTITY = "every 201 is a row of the quantity asked"
LIMIT = "no purchase over the per-user limit"
GATE = "gate agrees with ledger"
LOSERS = "losers get 409 SOLD_OUT, never a 5xx or a dropped connection"
REFUSED = "nobody refused while a purchase of their size could be served"

EMPTY = LedgerSnapshot(total_stock=10, sold=0, purchases={}, per_user_limit=4)
#: alice took 4, bob 3, carol 2 (after asking 4): 9 of 10 units sold, 1 left.
AFTER = LedgerSnapshot(total_stock=10, sold=9, purchases={"alice": "p1", "bob": "p2",
                                                          "carol": "p3"},
                       quantities={"alice": 4, "bob": 3, "carol": 2}, per_user_limit=4)


def gate_of(after: LedgerSnapshot) -> GateSnapshot:
    """The gate that keeps the conservation law with ``after``: stock = total - units."""
    return GateSnapshot(after.total_stock - after.units, dict(after.purchases),
                        dict(after.quantities))


def buy(user: str, quantity: int, status: int, at: float, pid: str | None = None,
        code: str | None = None, remaining: int | None = None) -> Record:
    return Record(PURCHASE, user, status, at, 10.0, purchase_id=pid, code=code,
                  quantity=quantity, remaining_stock=remaining)


def broken(records, after: LedgerSnapshot = AFTER, gate: GateSnapshot | None = None
           ) -> set[str]:
    checks = verify(records, EMPTY, after, gate_of(after) if gate is None else gate)
    return {c.name for c in checks if not c.held}


CLEAN = [
    buy("alice", 4, 201, 1.0, "p1"), buy("alice", 4, 409, 1.0, code="ALREADY_PURCHASED"),
    buy("bob", 3, 201, 1.1, "p2"),
    buy("carol", 4, 409, 1.2, code="INSUFFICIENT_STOCK", remaining=3),
    buy("carol", 2, 201, 1.5, "p3"),
    buy("dave", 2, 409, 2.0, code="INSUFFICIENT_STOCK", remaining=1),
    buy("eve", 3, 409, 2.1, code="INSUFFICIENT_STOCK", remaining=1),
]


def test_a_clean_sale_of_quantities_holds_every_invariant():
    """Buyers of 4, 3 and 2 units (one after a refusal for 4), two refused for more than
    the one unit left: nothing breaks, though a unit stays unsold."""
    assert broken(CLEAN) == set()


def test_a_unit_left_for_a_buyer_of_one_told_sold_out_breaks():
    """SOLD_OUT to a buyer of one while one unit is never sold: the sale was not sold out."""
    records = [*CLEAN, buy("frank", 1, 409, 2.5, code="SOLD_OUT")]
    assert broken(records) == {OVERSELLING, SOLD_OUT_SAID, REFUSED}


def test_insufficient_stock_while_their_size_was_left_breaks():
    """INSUFFICIENT_STOCK for one unit while one is never sold breaks; so does a told
    remainingStock no smaller than asked, or smaller than what stayed unsold."""
    assert broken([*CLEAN, buy("frank", 1, 409, 2.5, code="INSUFFICIENT_STOCK",
                               remaining=0)]) == {OVERSELLING, REFUSED}
    assert broken([*CLEAN, buy("gina", 3, 409, 2.5, code="INSUFFICIENT_STOCK",
                               remaining=3)]) == {REFUSED}
    assert broken([*CLEAN, buy("gina", 3, 409, 0.5, code="INSUFFICIENT_STOCK",
                               remaining=0)]) == {REFUSED}


def test_units_sold_are_counted_in_units():
    """A sold counter that counts rows, or rows that take more than the stock, break."""
    rows_counted = replace(AFTER, sold=3)
    assert broken(CLEAN, rows_counted) == {OVERSELLING}
    oversold = replace(AFTER, total_stock=8, sold=9)
    assert OVERSELLING in broken(CLEAN, oversold, gate_of(replace(AFTER, total_stock=9)))


def test_a_buyer_left_unserved_while_every_ask_fit_breaks():
    """When every buyer's units fit in the stock, each must get them."""
    after = replace(AFTER, total_stock=20)
    records = [*CLEAN[:5], buy("dave", 2, 503, 2.0, code="UNAVAILABLE")]
    assert OVERSELLING in broken(records, after)


def test_a_201_for_another_quantity_than_the_row_breaks():
    """A client that asked for 2 units and was told 201 for a row of 3."""
    records = [buy("bob", 2, 201, 1.1, "p2") if r.user == "bob" else r for r in CLEAN]
    assert broken(records) == {QUANTITY}


def test_a_row_over_the_limit_breaks_with_holds_and_without():
    """A row of 5 units in a sale of at most 4 per user."""
    over = replace(AFTER, per_user_limit=3)
    assert broken(CLEAN, over) == {LIMIT}
    rows = (PurchaseRow("p1", "alice", None, None, 4), PurchaseRow("p2", "bob", 5.0, 4.0, 3))
    held = LedgerSnapshot(10, 7, {"alice": "p1", "bob": "p2"},
                          HoldsLedger(5, 100.0, 50.0, rows, (), ()),
                          {"alice": 4, "bob": 3}, per_user_limit=3)
    told = [buy("alice", 4, 201, 0.0, "p1"), buy("bob", 3, 201, 0.0, "p2")]
    assert broken(told, held) == {LIMIT}
    assert broken(told, replace(held, per_user_limit=4)) == set()


def test_a_gate_whose_holders_hold_other_units_breaks():
    """Holders counted instead of their units, or a holder of the wrong units."""
    counted = GateSnapshot(AFTER.total_stock - len(AFTER.purchases), dict(AFTER.purchases),
                           dict(AFTER.quantities))
    assert broken(CLEAN, gate=counted) == {GATE}
    wrong = GateSnapshot(2, dict(AFTER.purchases), {"alice": 4, "bob": 2, "carol": 2})
    assert broken(CLEAN, gate=wrong) == {GATE}


def test_insufficient_stock_for_what_was_then_bought_breaks():
    """A refusal for 2 units before a purchase of 2: one of the two answers was wrong."""
    records = [*CLEAN[:3], buy("carol", 2, 409, 1.2, code="INSUFFICIENT_STOCK", remaining=1),
               *CLEAN[4:]]
    assert broken(records) == {REPEATS}


def test_losers_may_hear_insufficient_stock_but_nothing_else():
    """A loser told 400 breaks as before; INSUFFICIENT_STOCK is a loser's answer."""
    records = [*CLEAN, buy("dave", 2, 400, 2.2, code="VALIDATION_ERROR")]
    assert broken(records) == {LOSERS}


def test_with_holds_units_count_and_refusals_wait_for_confirmed_units():
    """In a sale with holds the units count everywhere, and INSUFFICIENT_STOCK for q units
    is told only once fewer than q are unconfirmed."""
    rows = (PurchaseRow("p1", "alice", None, None, 4), PurchaseRow("p2", "bob", 5.0, None, 3))
    after = LedgerSnapshot(8, 7, {"alice": "p1", "bob": "p2"},
                           HoldsLedger(5, 100.0, 50.0, rows, (), ()), {"alice": 4, "bob": 3},
                           per_user_limit=4)
    told = [Record(PURCHASE, "alice", 201, 0.0, 10.0, purchase_id="p1", quantity=4),
            Record(PURCHASE, "bob", 201, 0.0, 10.0, purchase_id="p2", quantity=3,
                   standing="held", expires_at=5.0)]
    assert broken(told, after) == set()
    early = Record(PURCHASE, "carol", 409, 1.0, 10.0, code="INSUFFICIENT_STOCK", quantity=2,
                   remaining_stock=1)
    assert broken([*told, early], after) == {
        "SOLD_OUT and INSUFFICIENT_STOCK only once final"}
    assert broken(told, replace(after, sold=2)) == {
        "confirmed + held <= total; sold counts every row"}
    counted = GateSnapshot(6, dict(after.purchases), dict(after.quantities))
    assert broken(told, after, counted) == {
        "gate holders are the held and confirmed rows; stock = total - holders"}


def test_records_keep_quantities_and_old_records_still_read(tmp_path):
    """A record of several units round-trips; a line written before quantities reads as
    one unit; record_of keeps the remainingStock a refusal's details tell."""
    writer = RecordWriter(tmp_path)
    writer.write(CLEAN[3])
    writer.close()
    old = {k: v for k, v in asdict(CLEAN[0]).items() if k not in ("quantity", "remaining_stock")}
    (tmp_path / "records-0.jsonl").write_text(json.dumps(old) + "\n")
    assert list(read_records(tmp_path)) == [replace(CLEAN[0], quantity=1), CLEAN[3]]
    body = {"status": "error", "code": 409,
            "error": {"code": "INSUFFICIENT_STOCK", "message": "Sorry, only 3 units are left.",
                      "correlationId": "c", "details": {"remainingStock": 3}}}
    record = record_of(PURCHASE, "carol", 1.2, 10.0, read_reply(409, body),
                       "INSUFFICIENT_STOCK", quantity=4)
    assert record == CLEAN[3]
