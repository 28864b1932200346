"""A big sale through the purchase path: one sale of many units bought by twice as many users.

No HTTP: the actor tree is opened with :func:`flashflow.runtime.open_runtime`, exactly as a
server worker opens it (ledger, catalog, gate, stock feed, reconciler, serializer; the rate
limiter off, since every buyer asks once), and a fixed number of concurrent buyers call
:meth:`~actors.UserSerializer.purchase`, each user once. What it measures:

- purchases per second in each twentieth of the stock, so the rate at the start is set
  against the rate at the end, when ``sold`` is large;
- with ``max_quantity`` above 1, a sale whose buyers ask 1 to that many units each (the
  sale's per-user limit), whose rates are set beside a one-unit sale's measured in the same
  run (:func:`run_side_by_side`);
- the cost of one reconciler pass over the sale at 10%, 50% and 90% sold (under load) and
  once sold out (quiet);
- Redis's memory per buyer (MEMORY USAGE of the sale's keys, and INFO's used_memory growth);
- a gate rebuild: the sale's keys deleted, then :meth:`~actors.gate_store.GateStore.ensure_loaded`
  writes every buyer back from the ledger.

The sale is scheduled and every answer judged by the load harness
(:mod:`flashflow.capacity.harness`): each is held to :func:`flashflow.invariants.verify`
against PostgreSQL and Redis, once after the sale and again after the rebuild: a speed is
worth nothing for a wrong sale.
"""

from __future__ import annotations

import functools
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import trio
from redis.cluster import RedisCluster

from actors import FlashFlowError, Sale
from actors.keys import sale_keys
from actors.redis_url import sync_client

from ..http.errors import INTERNAL_ERROR, table_entry
from ..invariants import PURCHASE, Check, LedgerSnapshot, Record
from ..runtime import Runtime, open_runtime
from ..settings import Settings
from ._common import RedisTarget, load_average
from .harness import create_sale, judge

#: The stock is cut into this many equal parts, each timed on its own.
PARTS = 20
#: Sold shares at which a reconciler pass is timed while the sale runs.
RECONCILE_AT = (0.1, 0.5, 0.9)
#: How long the sale lasts: far longer than any run.
SALE_LASTS_S = 12 * 3600


@dataclass(frozen=True, slots=True)
class BigSaleRun:
    """The figures of one big sale, and the checks they stand on.

    Attributes:
        units: the stock.
        users: distinct users, each asking once.
        max_quantity: the per-user limit; user n asks ``1 + n % max_quantity`` units.
        purchases: purchases committed (each of one or more units).
        concurrency: purchases in flight at any time.
        part_rates: purchases per second in each twentieth of the stock, in order.
        sold_out_s: from the first purchase to the last unit committed.
        run_s: from the first purchase to the last user's answer.
        after_sold_out_per_s: answers per second once every unit was committed.
        reconcile_ms: (sold share, milliseconds) of each timed reconciler pass; the last
            one is the sale sold out, with no load.
        rebuild_s: a gate rebuild from the ledger, every buyer written back.
        bytes_per_buyer: MEMORY USAGE of the sale's keys over the buyers.
        used_memory_per_buyer: INFO used_memory's growth over the sale, over the buyers.
        redis_cpu_us_per_purchase: Redis CPU time over the sale (every node) per unit sold.
        client_cpu: the process's CPU time over the sale, in cores.
        answers: "status code" -> how many.
        load: the machine's 1-minute load average when the sale began and when it ended.
        checks: the invariants, after the sale and after the rebuild.
    """

    units: int
    users: int
    concurrency: int
    max_quantity: int
    purchases: int
    part_rates: list[float]
    sold_out_s: float
    run_s: float
    after_sold_out_per_s: float
    reconcile_ms: list[tuple[float, float]]
    rebuild_s: float
    bytes_per_buyer: float
    used_memory_per_buyer: float
    redis_cpu_us_per_purchase: float
    client_cpu: float
    answers: dict[str, int]
    load: tuple[float, float]
    checks: list[Check] = field(default_factory=list)

    @property
    def held(self) -> bool:
        """Whether every invariant held."""
        return bool(self.checks) and all(c.held for c in self.checks)

    @property
    def start_per_s(self) -> float:
        """Purchases per second over the first tenth of the stock."""
        return statistics.fmean(self.part_rates[:PARTS // 10])

    @property
    def end_per_s(self) -> float:
        """Purchases per second over the last tenth of the stock."""
        return statistics.fmean(self.part_rates[-(PARTS // 10):])

    @property
    def purchases_per_s(self) -> float:
        """Purchases per second from the first purchase until the last unit was sold."""
        return self.purchases / self.sold_out_s if self.sold_out_s > 0 else 0.0

    @property
    def units_per_s(self) -> float:
        """Units per second from the first purchase until the last unit was sold."""
        return self.units / self.sold_out_s if self.sold_out_s > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        """Every field, and the derived figures."""
        return {**asdict(self), "start_per_s": self.start_per_s, "end_per_s": self.end_per_s,
                "purchases_per_s": self.purchases_per_s, "units_per_s": self.units_per_s,
                "held": self.held}


def user_id(n: int) -> str:
    """The id of the n-th user of the crowd."""
    return f"buyer-{n:08d}"


def quantity(n: int, max_quantity: int) -> int:
    """How many units the n-th user asks for: 1 to ``max_quantity`` in turn."""
    return 1 + n % max_quantity


#: A :class:`Record`'s fields, in order, as a plain tuple. The garbage collector leaves
#: tuples of plain values alone, so keeping millions of answers during the sale does not
#: slow this client's collections as the sale fills (a cost no server pays).
Answer = tuple[str, str, int, float, float, str | None, str | None, int]


def answer_record(user: str, started: float, outcome: object, asked: int = 1) -> Answer:
    """What an HTTP client would have been told: the serializer's answer in wire terms,
    and the quantity it asked for."""
    elapsed_ms = (time.time() - started) * 1000
    if isinstance(outcome, FlashFlowError):
        status, code, _ = table_entry(outcome) or (500, INTERNAL_ERROR, False)
        return (PURCHASE, user, status, started, elapsed_ms, None, code, asked)
    return (PURCHASE, user, 201, started, elapsed_ms, str(outcome.id), None, asked)


def as_record(answer: Answer) -> Record:
    """The :class:`Record` of an answer."""
    return Record(*answer[:7], quantity=answer[7])


class _Progress:
    """Counts units and purchases, and notes the time (and the purchases made by then) each
    twentieth of the stock was reached."""

    def __init__(self, units: int, nursery: trio.Nursery, runtime: Runtime, sale: Sale) -> None:
        self.units = units
        self.sold = 0
        self.purchases = 0
        self.marks: list[float] = [trio.current_time()]
        self.marked_purchases: list[int] = [0]
        self.reconcile_ms: list[tuple[float, float]] = []
        self._nursery, self._runtime, self._sale = nursery, runtime, sale
        self._next_check = 0
        self._one_pass = trio.Lock()  # fair: passes run one at a time, in the order they began

    def bought(self, units: int) -> None:
        self.sold += units
        self.purchases += 1
        while len(self.marks) <= PARTS and self.sold >= len(self.marks) * self.units / PARTS:
            self.marks.append(trio.current_time())
            self.marked_purchases.append(self.purchases)
        if (self._next_check < len(RECONCILE_AT)
                and self.sold >= RECONCILE_AT[self._next_check] * self.units):
            self._nursery.start_soon(self.time_reconcile, RECONCILE_AT[self._next_check])
            self._next_check += 1

    async def time_reconcile(self, share: float) -> None:
        async with self._one_pass:
            started = trio.current_time()
            await self._runtime.reconciler.reconcile(self._sale)
            self.reconcile_ms.append((share, (trio.current_time() - started) * 1000))

    def part_rates(self) -> list[float]:
        """Purchases per second in each twentieth of the stock."""
        made = [b - a for a, b in zip(self.marked_purchases, self.marked_purchases[1:],
                                      strict=False)]
        return [n / (b - a) if b > a else float("inf")
                for n, a, b in zip(made, self.marks, self.marks[1:], strict=False)]


async def _buy(runtime: Runtime, sale: Sale, users: int, concurrency: int,
               progress: _Progress, max_quantity: int) -> list[Answer]:
    answers: list[Answer] = []
    pending = iter(range(users))

    async def buyer() -> None:
        for n in pending:
            user, started, asked = user_id(n), time.time(), quantity(n, max_quantity)
            try:
                outcome: object = await runtime.serializer.purchase_unchecked(
                    sale, user, quantity=asked)
            except FlashFlowError as exc:
                outcome = exc
            else:
                progress.bought(asked)
            answers.append(answer_record(user, started, outcome, asked))

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(buyer)
    return answers


def _memory(url: str, keys: list[str]) -> tuple[int, int]:
    """(MEMORY USAGE of ``keys`` summed, INFO used_memory of the node holding them)."""
    client = sync_client(url, socket_timeout=120)
    try:
        usage = sum(client.memory_usage(k, samples=0) or 0 for k in keys)
        if isinstance(client, RedisCluster):
            info = client.info("memory", target_nodes=client.get_node_from_key(keys[0]))
        else:
            info = client.info("memory")
        return usage, int(info["used_memory"])
    finally:
        client.close()


async def run_big_sale(database_url: str, target: RedisTarget, key_prefix: str, *,
                       units: int, users: int, concurrency: int = 512,
                       max_quantity: int = 1) -> BigSaleRun:
    """Sell ``units`` to ``users`` distinct users through the actor tree, measure, verify.

    With ``max_quantity`` above 1 the sale's per-user limit is that, and user n asks
    :func:`quantity` units."""
    sale: Sale = await trio.to_thread.run_sync(functools.partial(
        create_sale, database_url, "Capacity sale", units, SALE_LASTS_S,
        per_user_limit=max_quantity))
    with tempfile.TemporaryDirectory(prefix="ffcap-") as data_dir:
        settings = Settings(database_url=database_url, redis_url=target.url,
                            key_prefix=key_prefix, data_dir=Path(data_dir),
                            rate_limit_enabled=False, log_level="WARNING")
        async with open_runtime(settings) as runtime:
            await runtime.gate.store.ensure_loaded(sale)
            keys = sale_keys(settings.key_prefix, sale.id)
            key_list = [keys.stock, keys.buyers, keys.pending]
            _, memory_before = await trio.to_thread.run_sync(_memory, target.url, key_list)
            cpu_before, process_before = target.cpu_seconds(), time.process_time()
            load_before = load_average()
            async with trio.open_nursery() as nursery:
                progress = _Progress(units, nursery, runtime, sale)
                answers = await _buy(runtime, sale, users, concurrency, progress, max_quantity)
            ended, load_after = trio.current_time(), load_average()
            cpu_after, process_after = target.cpu_seconds(), time.process_time()
            records = [as_record(answer) for answer in answers]
            del answers
            sold_out_at = progress.marks[-1] if len(progress.marks) > PARTS else ended
            await progress.time_reconcile(1.0)
            usage, memory_after = await trio.to_thread.run_sync(_memory, target.url, key_list)
            before = LedgerSnapshot(sale.total_stock, 0, {})
            judged = functools.partial(judge, records, before, settings.database_url,
                                       settings.redis_url, settings.key_prefix, sale.id)
            checks = await trio.to_thread.run_sync(functools.partial(judged, label="after sale"))

            client = sync_client(target.url, socket_timeout=30)
            try:
                client.delete(*key_list)
            finally:
                client.close()
            rebuild_started = trio.current_time()
            await runtime.gate.store.ensure_loaded(sale)
            rebuild_s = trio.current_time() - rebuild_started
            checks += await trio.to_thread.run_sync(functools.partial(judged,
                                                                      label="after rebuild"))
    began = progress.marks[0]
    sold = progress.purchases or 1
    after_s = ended - sold_out_at
    losers = sum(r.status != 201 for r in records)
    return BigSaleRun(
        units=units, users=users, concurrency=concurrency, max_quantity=max_quantity,
        purchases=progress.purchases, part_rates=progress.part_rates(),
        sold_out_s=sold_out_at - began, run_s=ended - began,
        after_sold_out_per_s=losers / after_s if after_s > 0 else 0.0,
        reconcile_ms=progress.reconcile_ms, rebuild_s=rebuild_s,
        bytes_per_buyer=usage / sold, used_memory_per_buyer=(memory_after - memory_before) / sold,
        redis_cpu_us_per_purchase=(sum(cpu_after) - sum(cpu_before)) / sold * 1e6,
        client_cpu=(process_after - process_before) / (ended - began),
        answers=dict(Counter(f"{r.status} {r.code or ''}".strip() for r in records)),
        load=(load_before, load_after), checks=checks)


def side_by_side_rows(one: BigSaleRun, many: BigSaleRun) -> list[tuple[str, str, str, str]]:
    """A one-unit sale's rates beside a sale of quantities', measured in the same run:
    (figure, one unit, 1 to N units, ratio)."""
    def row(name: str, a: float, b: float) -> tuple[str, str, str, str]:
        return (name, f"{a:,.0f}", f"{b:,.0f}", f"{b / a:.2f}" if a else "-")
    return [
        row("Purchases/s to sold out", one.purchases_per_s, many.purchases_per_s),
        row("Units/s to sold out", one.units_per_s, many.units_per_s),
        row("Purchases/s, first 10% of the stock", one.start_per_s, many.start_per_s),
        row("Purchases/s, last 10% of the stock", one.end_per_s, many.end_per_s),
        row("Redis CPU per purchase (ns)", one.redis_cpu_us_per_purchase * 1000,
            many.redis_cpu_us_per_purchase * 1000),
        row("Purchases committed", one.purchases, many.purchases),
    ]


def summary_rows(run: BigSaleRun) -> list[tuple[str, str]]:
    """The figures of a run as (figure, value) rows."""
    passes = ", ".join(f"{ms:,.1f} ms at {share:.0%}" for share, ms in run.reconcile_ms)
    return [
        ("Units / users / in flight", f"{run.units:,} / {run.users:,} / {run.concurrency}"),
        ("Units per user (per-user limit)", f"1 to {run.max_quantity}"
         if run.max_quantity > 1 else "1"),
        ("Purchases / units per second to sold out",
         f"{run.purchases_per_s:,.0f} / {run.units_per_s:,.0f}"),
        ("Sold out after", f"{run.sold_out_s:,.1f} s"),
        ("Purchases/s, first 10% of the stock", f"{run.start_per_s:,.0f}"),
        ("Purchases/s, last 10% of the stock", f"{run.end_per_s:,.0f}"),
        ("Purchases/s in each 5% of the stock", " ".join(f"{r:,.0f}" for r in run.part_rates)),
        ("Answers/s once sold out (from memory)", f"{run.after_sold_out_per_s:,.0f}"),
        ("Whole run (every user answered)", f"{run.run_s:,.1f} s"),
        ("Reconciler pass (sold share)", passes),
        ("Gate rebuild from the ledger", f"{run.rebuild_s:,.2f} s for {run.units:,} buyers"),
        ("Redis bytes per buyer (MEMORY USAGE)", f"{run.bytes_per_buyer:,.0f}"),
        ("Redis bytes per buyer (used_memory growth)", f"{run.used_memory_per_buyer:,.0f}"),
        ("Redis CPU per purchase", f"{run.redis_cpu_us_per_purchase:,.1f} µs"),
        ("Client CPU over the sale", f"{run.client_cpu:.0%}"),
        ("Machine load average, start → end", f"{run.load[0]:.1f} → {run.load[1]:.1f}"),
        ("Answers", ", ".join(f"{k}: {v:,}" for k, v in sorted(run.answers.items()))),
        ("Invariants (after the sale, after the rebuild)",
         "held" if run.held else "BROKEN: " + "; ".join(
             f"{c.name} ({c.detail})" for c in run.checks if not c.held)),
    ]
