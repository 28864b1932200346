"""What a sale that lived through faults must hold, and the figures recorded of it."""

from __future__ import annotations

import os
import statistics
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from actors import Sale
from flashflow.settings import Settings

from ..helpers import ServerProcess, judge
from .fleet import reconciler_returns
from .recorder import HUNG, NO_ANSWER, Outcome, Recorder
from .stores import wait_for_gate_to_agree

#: What the README promises past ``purchase_wait_s``: the answer's own way out (a reservation
#: returned to Redis, the HTTP reply) on a busy 2-core machine.
ANSWER_SLACK_S = 2.0


def redis_fault_bound_s(settings: Settings) -> float:
    """The longest a purchase may take to be refused while Redis is down or stuck.

    The purchase wait bounds every step of a purchase, however many batches queue ahead of
    it in the gate or the limiter, so the bound is the wait plus the stated slack. A request
    that waited for Redis to come back would take the whole outage: tests keep the outage
    longer than this bound.
    """
    return settings.purchase_wait_s + ANSWER_SLACK_S


def latency_figures(outcomes: list[Outcome]) -> dict[str, float | None]:
    """Median, 99th percentile and maximum client-side latency of ``outcomes``, in ms."""
    seconds = sorted(o.seconds for o in outcomes)
    if not seconds:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {"p50_ms": round(statistics.median(seconds) * 1000, 1),
            "p99_ms": round(seconds[int(len(seconds) * 0.99)] * 1000, 1),
            "max_ms": round(seconds[-1] * 1000, 1)}


async def check_sale_after_faults(settings: Settings, sale: Sale, recorder: Recorder, *,
                                  expected_sold: int, settle_s: float) -> dict[str, Any]:
    """The exact invariants of a sale that lived through faults; returns the figures.

    Every attempt is held to :func:`flashflow.invariants.verify`, those sent before recovery
    (any phase but "after") as sent while the fault lasted: a 503 or no answer there is no
    break, and a row without a 201 may be a commit whose reply it lost. On top of that:
    every 503 carries Retry-After, nothing hung, after recovery only 201 and 409, exactly
    ``expected_sold`` units committed (as many rows, when every buyer takes one). Redis is
    first given ``settle_s`` to agree with the ledger (the reconciler may still be returning
    reservations).
    """
    outcomes = recorder.outcomes
    statuses = Counter(o.status for o in outcomes)
    other_5xx = [o for o in outcomes if o.status >= 500 and o.status != 503]
    hung = [o for o in outcomes if o.status == HUNG]
    assert not hung, f"{len(hung)} requests hung past the client timeout"
    no_retry_after = [o for o in outcomes if o.status == 503 and not o.retry_after]
    assert not no_retry_after, f"503 without Retry-After: {no_retry_after[:5]}"
    after = Counter(o.status for o in recorder.in_phase("after"))
    assert set(after) <= {201, 409}, f"after recovery: {after}"

    await wait_for_gate_to_agree(settings, sale, settle_s)
    records = [o.as_record() for o in outcomes]
    faulted = [r for o, r in zip(outcomes, records, strict=True) if o.phase != "after"]
    ledger, gate = await judge(settings, sale, records, faulted=faulted)
    rows, stock = ledger.purchases, gate.stock
    assert ledger.units == expected_sold, (ledger.units, len(rows))
    assert ledger.sold == expected_sold
    unconfirmed = set(rows) - {o.user for o in outcomes if o.status == 201}

    told_already = {o.user for o in outcomes if o.code == "ALREADY_PURCHASED"}
    told_sold_out = {o.user for o in outcomes if o.code == "SOLD_OUT"}
    return {
        "requests": len(outcomes),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "committed": len(rows),
        "units_sold": ledger.units,
        "insufficient_stock_told": sum(o.code == "INSUFFICIENT_STOCK" for o in outcomes),
        "total_stock": sale.total_stock,
        "redis_stock_at_end": stock,
        "five_xx_other_than_503": len(other_5xx),
        "five_xx_after_recovery": sum(v for k, v in after.items() if k >= 500),
        "committed_without_a_201": len(unconfirmed),
        "already_purchased_told_to_users_without_a_row": len(told_already - set(rows)),
        "sold_out_told_to_users_who_then_bought": len(told_sold_out & set(rows)),
    }


def phase_figures(recorder: Recorder, *phases: str) -> dict[str, Any]:
    """Counts and latencies of the attempts sent during ``phases``."""
    chosen = recorder.in_phase(*phases)
    statuses = Counter(o.status for o in chosen)
    return {
        "requests": len(chosen),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "503": statuses.get(503, 0),
        "503_with_retry_after": sum(1 for o in chosen if o.status == 503 and o.retry_after),
        "no_http_answer": statuses.get(NO_ANSWER, 0),
        "five_xx_other_than_503": sum(v for k, v in statuses.items() if k >= 500 and k != 503),
        "latency_all": latency_figures(chosen),
        "latency_503": latency_figures([o for o in chosen if o.status == 503]),
        "latency_no_http_answer": latency_figures([o for o in chosen if o.status == NO_ANSWER]),
    }


def figures_dir() -> Path:
    """Where the figures go: ``$FLASHFLOW_FAULT_FIGURES_DIR``, else a fixed temp folder."""
    configured = os.environ.get("FLASHFLOW_FAULT_FIGURES_DIR")
    directory = Path(configured) if configured else Path(tempfile.gettempdir()) / "flashflow-faults"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


async def check_exact_end(figures: dict[str, Any], settings: Settings, sale: Sale,
                          recorder: Recorder, servers: list[ServerProcess], *,
                          recovery: tuple[float, float]) -> None:
    """Record the figures of the recovery and after it, then hold the sale to
    :func:`check_sale_after_faults` (every unit sold), adding its figures.

    Args:
        recovery: what :func:`recover_and_sell_out` returned.
    """
    figures.update(
        recovering=phase_figures(recorder, "recovering"),
        seconds_to_recover=round(recovery[0], 2),
        seconds_to_sell_out_after_recovery=round(recovery[1], 2),
        after=phase_figures(recorder, "after"),
    )
    figures.update(await check_sale_after_faults(
        settings, sale, recorder, expected_sold=sale.total_stock,
        settle_s=settings.reservation_grace_s + settings.reconcile_interval_s + 3))
    figures["reconciler_returned"] = reconciler_returns(*servers)
