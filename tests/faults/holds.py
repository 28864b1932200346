"""Sales with holds as the fault tests drive and read them: the payment step's confirms, the
rows and endings PostgreSQL holds, and the rules each hold must keep (confirmed xor lapsed,
once, its unit sold once)."""

from __future__ import annotations

import statistics
import time
import uuid
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import httpx
import trio

from actors import Sale
from flashflow.http.wire import METRICS, confirm_path
from flashflow.invariants import LedgerSnapshot, ledger_snapshot
from flashflow.invariants_holds import ledger_checks
from flashflow.settings import Settings

from ..helpers import ServerProcess, pg

ADMIN = "admin-token-for-hold-faults"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
#: What a confirm may answer, as (status, error code).
CONFIRMED, EXPIRED = (200, None), (409, "HOLD_EXPIRED")


def with_payments(settings: Settings, **changes: Any) -> Settings:
    """``settings`` with the admin token the payment step confirms with, and ``changes``."""
    return replace(settings, admin_token=ADMIN, **changes)


@dataclass(frozen=True, slots=True)
class Row:
    """A purchases row of a sale with holds."""

    id: uuid.UUID
    user_id: str
    expires_at: datetime | None
    confirmed_at: datetime | None

    @property
    def held(self) -> bool:
        return self.expires_at is not None and self.confirmed_at is None


@dataclass(frozen=True, slots=True)
class End:
    """A hold_endings row."""

    purchase_id: uuid.UUID
    user_id: str
    outcome: str
    expires_at: datetime
    ended_at: datetime
    offered_to: uuid.UUID | None
    offered_user: str | None
    gate_done: bool


@dataclass(frozen=True, slots=True)
class LedgerView:
    """The ledger of a sale with holds as :func:`flashflow.invariants.ledger_snapshot` reads
    it (``snapshot``, which the one check judges), keyed for these tests: ids as UUIDs, times
    as datetimes."""

    snapshot: LedgerSnapshot
    sold: int
    rows: dict[uuid.UUID, Row]
    endings: dict[uuid.UUID, End]
    #: user -> (place, offered purchase id or None, offered or not)
    places: dict[str, tuple[int, uuid.UUID | None, bool]]

    @property
    def held(self) -> list[Row]:
        return [r for r in self.rows.values() if r.held]

    @property
    def confirmed(self) -> list[Row]:
        return [r for r in self.rows.values() if r.confirmed_at is not None]

    @property
    def waiting(self) -> list[str]:
        """The users still waiting, in the order of their places."""
        return sorted((u for u, (_, _, offered) in self.places.items() if not offered),
                      key=lambda u: self.places[u][0])


def _moment(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def _id(text: str | None) -> uuid.UUID | None:
    return None if text is None else uuid.UUID(text)


def _view(snapshot: LedgerSnapshot) -> LedgerView:
    ledger = snapshot.holds
    assert ledger is not None, "not a sale with holds"
    rows = {uuid.UUID(r.purchase_id): Row(uuid.UUID(r.purchase_id), r.user,
                                          _moment(r.expires_at), _moment(r.confirmed_at))
            for r in ledger.rows}
    endings = {uuid.UUID(e.purchase_id): End(
        uuid.UUID(e.purchase_id), e.user, e.outcome, _moment(e.expires_at),
        _moment(e.ended_at), _id(e.offered_to), e.offered_user, e.gate_done)
        for e in ledger.endings}
    places = {p.user: (p.place, _id(p.purchase_id), not p.waiting) for p in ledger.places}
    return LedgerView(snapshot, snapshot.sold, rows, endings, places)


async def holds_ledger(settings: Settings, sale: Sale) -> LedgerView:
    """The sale's rows, endings and places, as PostgreSQL holds them now."""
    return _view(await trio.to_thread.run_sync(ledger_snapshot, settings.database_url,
                                               sale.id))


@dataclass(frozen=True, slots=True)
class Unsettled:
    """What of a sale with holds is not final yet: holds unpaid, places still waiting."""

    #: (purchase id, expires_at) of each hold neither confirmed nor ended
    holds: list[tuple[uuid.UUID, datetime]]
    waiting: int
    confirmed: int


async def _unsettled(conn: Any, sale_id: uuid.UUID) -> Unsettled:
    rows = await conn.fetch("SELECT id, expires_at, confirmed_at FROM purchases "
                            "WHERE sale_id = $1 AND expires_at IS NOT NULL", sale_id)
    waiting = await conn.fetchval("SELECT count(*) FROM waitlist WHERE sale_id = $1 "
                                  "AND offered_at IS NULL", sale_id)
    return Unsettled([(r["id"], r["expires_at"]) for r in rows if r["confirmed_at"] is None],
                     waiting, sum(r["confirmed_at"] is not None for r in rows))


async def unsettled(settings: Settings, sale: Sale) -> Unsettled:
    """The holds of ``sale`` still unpaid and how many wait for a unit, read now."""
    return await pg(settings.database_url, _unsettled, sale.id)


@dataclass(frozen=True, slots=True)
class ConfirmAnswer:
    """One confirm as the payment step saw it."""

    purchase_id: uuid.UUID
    #: when it was sent, in seconds after the hold's end (negative: before it)
    sent_after_end_s: float
    status: int
    code: str | None
    #: how long the answer took, in seconds
    took_s: float = 0.0

    @property
    def answer(self) -> tuple[int, str | None]:
        return self.status, self.code


@dataclass
class PaymentStep:
    """Confirms holds over HTTP so that each lands at a chosen moment around its hold's end,
    and keeps every answer.

    A confirm is sent early by the median time the last few took to be answered, so that on
    a busy machine it still reaches PostgreSQL around the moment aimed at.
    """

    sale: Sale
    answers: list[ConfirmAnswer] = field(default_factory=list)
    #: the times the latest confirms took, in seconds
    recent: deque[float] = field(default_factory=lambda: deque([0.02], maxlen=20))

    async def confirm_at(self, client: httpx.AsyncClient, purchase_id: uuid.UUID,
                         expires_at: datetime, after_end_s: float) -> None:
        """Send one confirm to land ``after_end_s`` after the hold's end (by this host's
        clock, which the local PostgreSQL shares) and record its answer."""
        aim = expires_at.timestamp() + after_end_s - statistics.median(self.recent)
        await trio.sleep(max(0.0, aim - time.time()))
        sent = time.time()
        response = await client.post(confirm_path(self.sale.id, purchase_id), headers=AUTH)
        took = time.time() - sent
        self.recent.append(took)
        body = response.json()
        code = body["error"]["code"] if response.status_code >= 400 else None
        self.answers.append(ConfirmAnswer(purchase_id, sent - expires_at.timestamp(),
                                          response.status_code, code, took))

    def by_purchase(self) -> dict[uuid.UUID, set[tuple[int, str | None]]]:
        """Each purchase's distinct answers."""
        found: dict[uuid.UUID, set[tuple[int, str | None]]] = {}
        for a in self.answers:
            found.setdefault(a.purchase_id, set()).add(a.answer)
        return found


def hold_rule_breaks(sale: Sale, ledger: LedgerView, ended: set[uuid.UUID],
                     answers: Sequence[ConfirmAnswer] = ()) -> list[str]:
    """What breaks the rules of holds among ``ended``, holds that must be over by now.

    Each of ``ended`` is confirmed xor lapsed, never neither; a confirm's 200 is a confirmed
    row and its ``HOLD_EXPIRED`` a lapsed one; a unit handed on went to one new hold, each
    place offered one. With them, the rules the ledger keeps by itself, as the one check
    judges them (:func:`flashflow.invariants_holds.ledger_checks`: the units, confirm xor
    lapse in time, no unit free while anyone waits, offers in the order of places).
    """
    breaks = [f"{c.name}: {c.detail}" for c in ledger_checks(ledger.snapshot) if not c.held]
    rows, endings = ledger.rows, ledger.endings
    confirmed = {p for p in ended if p in rows and rows[p].confirmed_at is not None}
    lapsed = {p for p in ended if p in endings and endings[p].outcome == "lapsed"}
    neither = ended - confirmed - lapsed
    if neither:
        breaks.append(f"{len(neither)} holds neither confirmed nor lapsed: "
                      f"{[str(p) for p in list(neither)[:3]]}")
    wrong: Counter[str] = Counter()
    for a in answers:
        if a.answer == CONFIRMED and a.purchase_id not in confirmed:
            wrong["200 without a confirmed row"] += 1
        elif a.answer == EXPIRED and a.purchase_id not in lapsed:
            wrong["HOLD_EXPIRED without a lapse"] += 1
        elif a.answer not in (CONFIRMED, EXPIRED):
            wrong[f"answered {a.answer}"] += 1
    breaks += [f"{n} confirms {what}" for what, n in wrong.items()]
    if len(rows) > sale.total_stock:
        breaks.append(f"{len(rows)} rows for a stock of {sale.total_stock}")
    handed = [e.offered_to for e in endings.values() if e.offered_to is not None]
    if len(handed) != len(set(handed)):
        breaks.append("a hold was handed the unit of two endings")
    offered = {pid: u for u, (_, pid, done) in ledger.places.items() if done and pid}
    if set(offered) != set(handed):
        breaks.append(f"places offered {len(offered)} holds, endings handed on {len(handed)}")
    return breaks


async def metric(server: ServerProcess, name: str) -> float:
    """A counter of a server's /metrics (its workers' summed)."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        text = (await client.get(METRICS)).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))
