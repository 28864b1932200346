"""Numbers a process keeps for itself, copied into prometheus-client metrics that add up.

The actors count in plain fields of their ``statistics()`` records, and the operating system
keeps each process's CPU time and memory. With several workers, a scrape reaches one of them,
so those numbers must reach prometheus-client's multiprocess files to add up over all of
them. :class:`Mirror` copies them there: a counter grows by what its source grew since the
last copy, a gauge is set. Each metric's kind says how a multiprocess scrape combines the
workers' values, by prometheus-client's own ``multiprocess_mode``:

- ``COUNTER``: summed over every worker that has run, including those that exited, so a
  total never goes back when a worker restarts (what it counted since its last copy is
  lost with it);
- ``SUMMED`` (``livesum``): summed over the live workers;
- ``LARGEST`` (``max``): the largest value any worker has written, exited ones included;
- ``LARGEST_LIVE`` (``livemax``) and ``SMALLEST_LIVE`` (``livemin``): over the live workers.

The supervisor deletes an exited worker's ``live*`` files
(``prometheus_client.multiprocess.mark_process_dead``). In one process, without the
directory, every kind is that process's own value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector

__all__ = ["COUNTER", "LARGEST", "LARGEST_LIVE", "PROCESS_METRICS", "SMALLEST_LIVE", "SUMMED",
           "Mirror", "process_values"]

COUNTER = "counter"
SUMMED, LARGEST, LARGEST_LIVE, SMALLEST_LIVE = "livesum", "max", "livemax", "livemin"

#: How a multiprocess scrape combines a gauge of each kind, as operations.md says it.
COMBINED = {SUMMED: "summed over the live workers", LARGEST: "the largest of any worker",
            LARGEST_LIVE: "the largest of the live workers",
            SMALLEST_LIVE: "the smallest of the live workers"}

#: ProcessCollector's metrics as several workers report them: (name, kind, help).
PROCESS_METRICS: tuple[tuple[str, str, str], ...] = (
    ("process_cpu_seconds_total", COUNTER, "User and system CPU time spent, in seconds."),
    ("process_resident_memory_bytes", SUMMED, "Resident memory size, in bytes."),
    ("process_virtual_memory_bytes", SUMMED, "Virtual memory size, in bytes."),
    ("process_open_fds", SUMMED, "Open file descriptors."),
    ("process_max_fds", SMALLEST_LIVE, "Maximum number of open file descriptors."),
    ("process_start_time_seconds", LARGEST_LIVE,
     "Start time of the process since the Unix epoch, in seconds."),
)


class Mirror:
    """Metrics that copy the values a ``read`` function returns, by name, at each :meth:`sync`."""

    def __init__(self, rows: Sequence[tuple[str, str, str]],
                 read: Callable[[], Mapping[str, float]],
                 registry: CollectorRegistry | None) -> None:
        self._read = read
        self._metrics: dict[str, tuple[Counter | Gauge, bool]] = {}
        for name, kind, help_text in rows:
            if kind == COUNTER:
                self._metrics[name] = (Counter(name, help_text, registry=registry), True)
            else:
                gauge = Gauge(name, help_text, registry=registry, multiprocess_mode=kind)
                self._metrics[name] = (gauge, False)
        #: Each counter's source as last copied: the next copy adds what it grew since.
        self._copied: dict[str, float] = {}

    def sync(self) -> None:
        """Copy every value ``read`` returns now."""
        for name, current in self._read().items():
            metric, counts = self._metrics[name]
            if not counts:
                metric.set(current)
                continue
            copied = self._copied.get(name, 0.0)
            # A source that went back restarted from 0: all of it is new.
            metric.inc(current - copied if current >= copied else current)
            self._copied[name] = current


def process_values(collector: ProcessCollector) -> dict[str, float]:
    """This process's CPU time, memory and file descriptors, as ProcessCollector reads them."""
    return {sample.name: sample.value for family in collector.collect()
            for sample in family.samples}
