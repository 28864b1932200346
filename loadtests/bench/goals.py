"""Issue 13's goals, decided from the figures of one run: reported, never asserted.

Each scenario is compared with the ceilings measured in the same run, at the same worker
and connection counts, so a slow machine or a noisy minute moves both sides together.
"""

from __future__ import annotations

from dataclasses import dataclass

from .scenarios import ASGI, BOUGHT, CURRENT, HEALTHZ, QUART, REPEATS, SOLD_OUT, Measurement

GOAL_WORKERS = 2
GOAL_CONNECTIONS = 64
P99_CONNECTIONS = 200
P99_LIMIT_MS = 100.0
#: (scenario, ceiling, least ratio, whether it is the next goal rather than today's).
THROUGHPUT = (
    (CURRENT, QUART, 0.9, False), (SOLD_OUT, QUART, 0.9, False), (REPEATS, QUART, 0.9, False),
    (HEALTHZ, QUART, 0.95, False), (BOUGHT, QUART, 0.6, False),
    (CURRENT, ASGI, 0.8, True), (SOLD_OUT, ASGI, 0.8, True), (REPEATS, ASGI, 0.8, True),
)
P99 = (CURRENT, SOLD_OUT)


@dataclass(frozen=True)
class Goal:
    """One goal and the figure that decides it; ``met`` is None when it was not measured."""

    name: str
    figure: str
    met: bool | None


def find(measurements: list[Measurement], scenario: str, workers: int,
         connections: int) -> Measurement | None:
    """The measurement of ``scenario`` at these worker and connection counts, if any."""
    return next((m for m in measurements if (m.scenario, m.workers, m.connections)
                 == (scenario, workers, connections)), None)


def ratio(m: Measurement, ceiling: str, measurements: list[Measurement]) -> float | None:
    """``m``'s requests/s over the ceiling's at the same worker and connection counts."""
    c = find(measurements, ceiling, m.workers, m.connections)
    return m.per_s / c.per_s if c is not None and c.per_s else None


def goals(measurements: list[Measurement]) -> list[Goal]:
    """Every goal of the issue, decided from ``measurements``."""
    where = f"{GOAL_WORKERS} workers, {GOAL_CONNECTIONS} connections"
    out = []
    for scenario, ceiling, least, later in THROUGHPUT:
        m = find(measurements, scenario, GOAL_WORKERS, GOAL_CONNECTIONS)
        r = ratio(m, ceiling, measurements) if m is not None else None
        out.append(Goal(f"{'next: ' if later else ''}{scenario} ≥ {least:g}x {ceiling} ({where})",
                        "not measured" if r is None else f"{r:.2f}x",
                        None if r is None else r >= least))
    for scenario in P99:
        m = find(measurements, scenario, GOAL_WORKERS, P99_CONNECTIONS)
        out.append(Goal(f"p99 < {P99_LIMIT_MS:g} ms, {scenario} "
                        f"({GOAL_WORKERS} workers, {P99_CONNECTIONS} connections)",
                        "not measured" if m is None else f"{m.p99_ms:.1f} ms",
                        None if m is None else m.p99_ms < P99_LIMIT_MS))
    return out
