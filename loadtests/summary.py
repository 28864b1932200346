"""Summarise a run: requests by outcome, throughput, latency percentiles, invariants."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from flashflow.invariants_line import LineLedger, LineTold

from .records import CONFIRM, JOIN, PURCHASE, Record
from .verify import Check, LedgerSnapshot


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(round(fraction * len(sorted_values) + 0.5) - 1, 0)
    return sorted_values[min(rank, len(sorted_values) - 1)]


def summarise(records: Sequence[Record], checks: Sequence[Check]) -> dict[str, Any]:
    """The figures of a run, as plain data (what ``--json`` writes)."""
    span = (max(r.finished for r in records) - min(r.started for r in records)) if records else 0
    kinds: dict[str, Any] = {}
    for kind in sorted({r.kind for r in records}):
        mine = [r for r in records if r.kind == kind]
        latencies = sorted(r.elapsed_ms for r in mine)
        outcomes = Counter(f"{r.status} {r.code}" if r.code else str(r.status) for r in mine)
        kinds[kind] = {
            "requests": len(mine),
            "per_s": len(mine) / span if span else 0.0,
            "p50_ms": percentile(latencies, 0.50),
            "p95_ms": percentile(latencies, 0.95),
            "p99_ms": percentile(latencies, 0.99),
            "outcomes": dict(sorted(outcomes.items())),
        }
    return {
        "requests": len(records),
        "duration_s": span,
        "per_s": len(records) / span if span else 0.0,
        "kinds": kinds,
        "invariants": [asdict(c) for c in checks],
        "held": all(c.held for c in checks),
    }


def checkout_figures(records: Sequence[Record], ledger: LedgerSnapshot) -> dict[str, int]:
    """What a checkout run did: holds told and paid, places told, and from PostgreSQL the
    holds that lapsed or were cancelled, the offers to places in line and how many of those
    the buyers paid for."""
    holds = ledger.holds
    if holds is None:
        return {}
    offers = ({e.offered_to for e in holds.endings if e.offered_to}
              | {p.purchase_id for p in holds.places if p.purchase_id})
    paid = {r.purchase_id for r in records if r.kind == CONFIRM and r.status == 200}
    return {
        "holds_told": sum(r.kind == PURCHASE and r.status == 201 for r in records),
        "places_told": len({r.user for r in records if r.kind == PURCHASE and r.status == 202}),
        "paid": len(paid),
        "confirmed": sum(r.confirmed for r in holds.rows),
        "held": sum(not r.confirmed for r in holds.rows),
        "lapsed": sum(e.outcome == "lapsed" for e in holds.endings),
        "cancelled": sum(e.outcome == "cancelled" for e in holds.endings),
        "offers": len(offers),
        "offers_paid": len(offers & paid),
        "still_waiting": sum(p.waiting for p in holds.places),
    }


def line_figures(records: Sequence[Record], ledger: LineLedger) -> dict[str, int | str]:
    """What a waiting-room run did: tickets taken before and after the opening, joins
    refused, admissions and purchases, how the followed streams ended, and how the line
    stands (``closed``: why it closed, or ``open``)."""
    finals = list(LineTold.of(records).finals.values())
    return {
        "early": sum(t.early for t in ledger.tickets),
        "late": sum(not t.early for t in ledger.tickets),
        "joins_refused": len({r.user for r in records if r.kind == JOIN and r.status >= 400}),
        "admitted": ledger.admitted,
        "bought": len(ledger.bought),
        "streams_admitted": finals.count("admitted"),
        "streams_closed": finals.count("closed"),
        "streams_without_final": finals.count(None),
        "closed": ledger.closed or "open",
    }


def render(summary: dict[str, Any]) -> str:
    """The summary as a plain-text table for a terminal."""
    header = (f"{'request':<10} {'count':>8} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} "
              f"{'p99 ms':>8}  outcomes")
    lines = [header]
    for kind, k in summary["kinds"].items():
        outcomes = ", ".join(f"{name}: {n}" for name, n in k["outcomes"].items())
        lines.append(f"{kind:<10} {k['requests']:>8} {k['per_s']:>8.0f} {k['p50_ms']:>8.1f} "
                     f"{k['p95_ms']:>8.1f} {k['p99_ms']:>8.1f}  {outcomes}")
    lines.append(f"{'all':<10} {summary['requests']:>8} {summary['per_s']:>8.0f}  "
                 f"over {summary['duration_s']:.1f} s")
    lines.append("")
    for part in ("checkout", "line"):
        if summary.get(part):
            lines.append(f"{part}: " + ", ".join(f"{k.replace('_', ' ')} {v}"
                                                 for k, v in summary[part].items()))
            lines.append("")
    for check in summary["invariants"]:
        mark = "held  " if check["held"] else "BROKEN"
        lines.append(f"[{mark}] {check['name']}: {check['detail']}")
    lines.append("")
    lines.append("all invariants held" if summary["held"] else "SOME INVARIANTS BROKE")
    return "\n".join(lines)
