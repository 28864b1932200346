"""How many CPUs this process may use: the default number of server processes.

``os.cpu_count()`` counts the host's CPUs. In a container limited to two CPUs on a 64-core
host, that would start 64 workers that share two CPUs' worth of time, each with its own
connection pools. The limit a container runtime sets is the cgroup's CPU quota
(``docker run --cpus``, a Kubernetes CPU limit); the CPUs a process may run on at all are
its affinity (``--cpuset-cpus``). The count is the quota rounded up, at least 1 and at most
the affinity.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["CGROUP_ROOT", "available_cpus", "cpu_quota"]

#: Where a container sees its own cgroup (cgroup v2), or its v1 hierarchies.
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The CPUs' worth of time the cgroup at ``root`` may use, or None when it has no limit.

    cgroup v2 writes ``$MAX $PERIOD`` to ``cpu.max`` (``max`` when unlimited); cgroup v1
    writes ``cpu.cfs_quota_us`` (-1 when unlimited) and ``cpu.cfs_period_us`` under
    ``cpu/`` (or ``cpu,cpuacct/``). A file missing or unreadable is taken as no limit.
    """
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        return _ratio(quota, period or "100000")
    for folder in ("cpu", "cpu,cpuacct"):
        quota_us = _read(root / folder / "cpu.cfs_quota_us")
        period_us = _read(root / folder / "cpu.cfs_period_us")
        if quota_us is not None and period_us is not None:
            return _ratio(quota_us, period_us)
    return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:  # "max", or a file this code does not know
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def available_cpus(root: Path = CGROUP_ROOT, affinity: int | None = None) -> int:
    """The CPUs this process may use: the cgroup quota rounded up, between 1 and the CPUs
    the process may run on (``affinity``, by default ``os.sched_getaffinity``)."""
    ceiling = max(affinity if affinity is not None else _affinity(), 1)
    quota = cpu_quota(root)
    return ceiling if quota is None else max(1, min(ceiling, math.ceil(quota)))
