"""The verifier's judgement, the stampede's stages and wrk's output, without any server."""

from __future__ import annotations

from loadtests.bench.wrk import parse
from loadtests.records import PURCHASE, STATUS, Record, RecordWriter, read_records
from loadtests.shape import Stages
from loadtests.verify import GateSnapshot, LedgerSnapshot, verify

EMPTY = LedgerSnapshot(total_stock=1, sold=0, purchases={})
SOLD = LedgerSnapshot(total_stock=1, sold=1, purchases={"alice": "p1"})
GATE = GateSnapshot(stock=0, buyers={"alice": "p1"})


def buy(user: str, status: int, at: float, pid: str | None = None,
        code: str | None = None) -> Record:
    return Record(PURCHASE, user, status, at, 10.0, purchase_id=pid, code=code)


def broken(records: list[Record], after: LedgerSnapshot = SOLD,
           gate: GateSnapshot = GATE, faulted: list[Record] | None = None) -> set[str]:
    return {c.name for c in verify(records, EMPTY, after, gate, faulted=faulted or ())
            if not c.held}


CLEAN = [buy("alice", 201, 1.0, "p1"), buy("alice", 409, 1.0, code="ALREADY_PURCHASED"),
         buy("alice", 409, 2.0, code="ALREADY_PURCHASED"), buy("bob", 409, 1.5, code="SOLD_OUT"),
         Record(STATUS, "alice", 200, 3.0, 5.0, purchase_id="p1", purchased=True)]


def test_a_clean_sale_holds_every_invariant():
    """One winner, her coalesced retries and repeats, one loser: nothing breaks."""
    assert broken(CLEAN) == set()


def test_a_second_201_for_one_user_breaks():
    """Coalesced presses that all hear 201 count more successes than units sold."""
    records = [*CLEAN, buy("alice", 201, 1.0, "p1")]
    assert broken(records) == {"exactly one 201 per user: 201s counted = purchases made"}


def test_a_row_no_client_heard_of_breaks():
    """A committed purchase that no 201 announced is caught."""
    after = LedgerSnapshot(total_stock=2, sold=2, purchases={"alice": "p1", "carol": "p9"})
    gate = GateSnapshot(stock=0, buyers=after.purchases)
    assert "no row that no client was told about" in broken(CLEAN, after, gate)


def test_a_winner_told_sold_out_and_a_5xx_break():
    """SOLD_OUT for a winner and a 503 for a loser are both failures."""
    records = [*CLEAN, buy("alice", 409, 2.5, code="SOLD_OUT"), buy("bob", 503, 2.0,
                                                                    code="UNAVAILABLE")]
    assert broken(records) == {"repeats get ALREADY_PURCHASED",
                               "losers get 409 SOLD_OUT, never a 5xx or a dropped connection"}


def test_a_faults_503s_and_cut_connections_are_excused_only_while_it_lasted():
    """During a fault a 503 or no answer is no break, nor is the row of a user whose commit
    reply it lost; the same answers after recovery still break."""
    after = LedgerSnapshot(total_stock=2, sold=2, purchases={"alice": "p1", "carol": "p9"})
    gate = GateSnapshot(stock=0, buyers=after.purchases)
    during = [buy("bob", 503, 1.2, code="UNAVAILABLE"), buy("carol", 0, 1.3, code="reset"),
              buy("alice", 503, 1.4, code="UNAVAILABLE")]
    later = [buy("carol", 409, 4.0, code="ALREADY_PURCHASED")]
    records = [*CLEAN, *during, *later]
    assert broken(records, after, gate, faulted=during) == set()
    assert broken(records, after, gate) == {
        "exactly one 201 per user: 201s counted = purchases made", "repeats get ALREADY_PURCHASED",
        "no row that no client was told about",
        "losers get 409 SOLD_OUT, never a 5xx or a dropped connection"}
    assert broken([*records, buy("bob", 503, 5.0, code="UNAVAILABLE")], after, gate,
                  faulted=during) == {
        "losers get 409 SOLD_OUT, never a 5xx or a dropped connection"}


def test_a_fault_excuses_no_other_5xx_nor_an_untold_row_of_a_user_it_spared():
    """A 500 during a fault breaks; a row for a user who never saw a fault's 503 breaks."""
    after = LedgerSnapshot(total_stock=2, sold=2, purchases={"alice": "p1", "carol": "p9"})
    gate = GateSnapshot(stock=0, buyers=after.purchases)
    during = [buy("bob", 500, 1.2, code="INTERNAL")]
    assert broken([*CLEAN, *during], after, gate, faulted=during) == {
        "exactly one 201 per user: 201s counted = purchases made",
        "no row that no client was told about",
        "losers get 409 SOLD_OUT, never a 5xx or a dropped connection"}


def test_gate_disagreeing_with_ledger_and_overselling_break():
    """A stale Redis stock and a sold counter off the rows are caught."""
    after = LedgerSnapshot(total_stock=1, sold=2, purchases={"alice": "p1"})
    assert broken(CLEAN, after, GateSnapshot(stock=1, buyers={})) == {
        "no overselling", "gate agrees with ledger"}


def test_records_round_trip_per_process(tmp_path):
    """What a writer appends, the reader gives back; a torn last line is skipped."""
    writer = RecordWriter(tmp_path)
    writer.write(CLEAN[0])
    writer.close()
    (tmp_path / "records-1.jsonl").write_text('{"kind": "purch')
    assert list(read_records(tmp_path)) == [CLEAN[0]]


def test_stages_ramp_peak_cool_then_stop():
    """The shape aims at the ramp, then the peak, then zero, then ends the run."""
    stages = Stages(ramp_s=2, peak_s=3, cool_s=1, ramp_users=5, peak_users=20)
    assert [stages.at(t)[0] for t in (0, 1.9, 2, 4.9, 5.5)] == [5, 5, 20, 20, 0]
    assert stages.at(6) is None


def test_wrk_output_is_parsed():
    """The WRK_JSON line and WON lines become a result."""
    out = ('WON u-1-1 p1\nWRK_JSON {"requests": 10, "duration_us": 2000000, "p50_us": 1500, '
           '"p90_us": 2000, "p99_us": 3000, "max_us": 4000, "mean_us": 1.0, "errors": '
           '{"connect": 0, "read": 0, "write": 0, "status": 9, "timeout": 0}, '
           '"answers": {"201": 1, "409 SOLD_OUT": 9}}\n')
    result = parse(out, "", 0, 0.5)
    assert (result.per_s, result.p99_ms, result.won) == (5.0, 3.0, [("u-1-1", "p1")])
    assert result.answers == {"201": 1, "409 SOLD_OUT": 9}
    assert "status" not in result.socket_errors, "a 409 is an answer, not a socket error"
