"""PostgreSQL and Redis as the fault tests read them: what is sold, what the gate holds,
and waits until the two agree."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import redis
import trio

from actors import Sale
from actors.keys import parse_holder, sale_keys
from flashflow.invariants import GateSnapshot, ledger_snapshot
from flashflow.invariants_read import holder_units
from flashflow.settings import Settings

from ..helpers import gate_of, ledger_of, redis_client
from .recorder import Outcome


@dataclass
class SoldWatch:
    """Polls ``flash_sales.sold`` to judge whether a ``SOLD_OUT`` was true when it was told.

    ``last_short_at`` is the latest ``time.monotonic()`` at which a poll *began* and then
    found fewer units committed than the stock. Rows never go away, so a ``SOLD_OUT``
    answered before that moment was told while units were still unsold. The check has no
    false alarms; it may miss a lie told within one poll of the sell-out.
    """

    settings: Settings
    sale: Sale
    poll_s: float = 0.05
    last_short_at: float = float("-inf")
    sold_out_at: float | None = None
    polls: int = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Poll until cancelled."""
        task_status.started()
        while True:
            began = time.monotonic()
            sold = await sold_counter(self.settings, self.sale)
            self.polls += 1
            if sold < self.sale.total_stock:
                self.last_short_at = max(self.last_short_at, began)
            elif self.sold_out_at is None:
                self.sold_out_at = time.monotonic()
            await trio.sleep(self.poll_s)

    def told_too_soon(self, outcomes: list[Outcome]) -> list[Outcome]:
        """The ``SOLD_OUT`` answers among ``outcomes`` told while units were unsold."""
        return [o for o in outcomes
                if o.code == "SOLD_OUT" and o.answered_at < self.last_short_at]


async def committed_rows(settings: Settings, sale: Sale) -> dict[str, str]:
    """user -> purchase id of every committed purchase of ``sale``."""
    return (await ledger_of(settings, sale.id)).purchases


async def sold_counter(settings: Settings, sale: Sale) -> int:
    """``flash_sales.sold`` of ``sale``."""
    return (await ledger_of(settings, sale.id)).sold


async def wait_for_sold(settings: Settings, sale: Sale, count: int, timeout_s: float) -> float:
    """Wait until ``count`` purchases of ``sale`` are committed; return the seconds it took."""
    started = trio.current_time()
    with trio.fail_after(timeout_s):
        while await sold_counter(settings, sale) < count:
            await trio.sleep(0.05)
    return trio.current_time() - started


async def wait_for_gate_to_agree(settings: Settings, sale: Sale, timeout_s: float) -> float:
    """Wait until Redis holds exactly the committed purchases, each with its units, and
    stock = total - their units; return the seconds it took.

    Raises:
        AssertionError: they still disagree after ``timeout_s`` (shows both sides).
    """
    started = trio.current_time()
    while True:
        ledger = await ledger_of(settings, sale.id)
        rows = ledger.purchases
        gate = await trio.to_thread.run_sync(gate_of, settings, sale.id)
        held = gate.buyers
        if (gate.stock == sale.total_stock - ledger.units and held == rows
                and all(gate.units_of(u) == ledger.units_of(u) for u in rows)):
            return trio.current_time() - started
        if trio.current_time() - started > timeout_s:
            extra = {u: p for u, p in held.items() if rows.get(u) != p}
            missing = {u: p for u, p in rows.items() if held.get(u) != p}
            units = {u: (gate.units_of(u), ledger.units_of(u)) for u in rows
                     if gate.units_of(u) != ledger.units_of(u)}
            raise AssertionError(
                f"after {timeout_s}s Redis stock={gate.stock}, total={sale.total_stock}, "
                f"committed={len(rows)} of {ledger.units} units; held without a row: {extra}; "
                f"rows not held: {missing}; (held, row) units that differ: {units}")
        await trio.sleep(0.1)


#: A sale's gate read in one step: its stock, its holders and the holders still in doubt.
GATE_AT_ONCE = """
return {redis.call('GET', KEYS[1]), redis.call('HGETALL', KEYS[2]),
        redis.call('ZRANGE', KEYS[3], 0, -1)}
"""


def gate_at_once(client: Any, settings: Settings, sale: Sale, *, replica: bool = True
                 ) -> tuple[GateSnapshot, set[str]]:
    """The gate of ``sale`` read in one script: its stock and holders, and the holders still
    pending. Read-only (``EVAL_RO``), so a replica answers it too (a cluster's once
    ``READONLY``); with ``replica`` False, a plain ``EVAL`` for a primary of any version
    (the embedded Redis of the fault tests predates ``EVAL_RO``)."""
    keys = sale_keys(settings.key_prefix, sale.id)
    script = client.eval_ro if replica else client.eval
    stock, flat, pending = script(GATE_AT_ONCE, 3, keys.stock, keys.buyers, keys.pending)
    values = {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}
    held = {user: parse_holder(value)[0] for user, value in values.items()}
    return (GateSnapshot(None if stock is None else int(stock), held, holder_units(values)),
            set(pending))


def gate_law_breaks(client: Any, settings: Settings, sale: Sale, *, replica: bool = True
                    ) -> list[str]:
    """What keeps the gate of ``sale`` from the ledger's truth now, purchases flowing or not.

    The truth: every committed buyer is a holder under their purchase id, of its units;
    every other holder is a reservation still in doubt (pending); stock = total - the
    holders' units. With nothing pending that is exactly: the holders are the committed
    buyers, stock = total - the units committed. The gate is read in one script, the rows
    before it (for the first rule) and after it (for the second), so a commit landing
    meanwhile breaks neither.

    Args:
        client: a synchronous client on the test's Redis (:func:`tests.helpers.redis_client`).
        replica: as for :func:`gate_at_once`.
    """
    ledger = ledger_snapshot(settings.database_url, sale.id)
    before = ledger.purchases
    gate, pending = gate_at_once(client, settings, sale, replica=replica)
    after = ledger_snapshot(settings.database_url, sale.id).purchases
    held = gate.buyers
    breaks = []
    missing = sorted(u for u, pid in before.items()
                     if held.get(u) != pid or gate.units_of(u) != ledger.units_of(u))
    if missing:
        breaks.append(f"{len(missing)} committed buyers not held: {missing[:3]}")
    unbacked = sorted(u for u, pid in held.items() if u not in pending and after.get(u) != pid)
    if unbacked:
        breaks.append(f"{len(unbacked)} holders neither committed nor pending: {unbacked[:3]}")
    if gate.stock != sale.total_stock - gate.units:
        breaks.append(f"stock {gate.stock} for total {sale.total_stock} and {len(held)} holders "
                      f"of {gate.units} units")
    return breaks


@dataclass
class LawWatch:
    """Polls :func:`gate_law_breaks` while purchases flow: the scripts keep the law at every
    step, so in a run without faults any break seen, even one a reconciler heals a moment
    later, is a script that moved the stock by other units than its holders'.

    ``breaks`` keeps the first few breaks seen; ``polls`` counts the reads.
    """

    settings: Settings
    sale: Sale
    poll_s: float = 0.02
    breaks: list[str] = field(default_factory=list)
    polls: int = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Poll until cancelled."""
        client = redis_client(self.settings)
        task_status.started()
        try:
            while True:
                found = await trio.to_thread.run_sync(partial(
                    gate_law_breaks, client, self.settings, self.sale, replica=False))
                self.polls += 1
                if found and len(self.breaks) < 5:
                    self.breaks.extend(found)
                await trio.sleep(self.poll_s)
        finally:
            client.close()


async def wait_for_gate_law(settings: Settings, sale: Sale, timeout_s: float) -> float:
    """Wait until :func:`gate_law_breaks` finds nothing; return ``time.monotonic()`` then.

    Redis errors (a failover under way) count as not yet.

    Raises:
        AssertionError: still broken after ``timeout_s``; says how.
    """
    client = redis_client(settings)
    last: object = None
    try:
        with trio.move_on_after(timeout_s):
            while True:
                try:
                    last = await trio.to_thread.run_sync(gate_law_breaks, client, settings, sale)
                except redis.RedisError as exc:
                    last = exc
                if last == []:
                    return time.monotonic()
                await trio.sleep(0.05)
    finally:
        client.close()
    raise AssertionError(f"the gate was not the ledger's truth after {timeout_s} s: {last}")
