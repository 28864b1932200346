"""available_cpus: the default worker count follows a container's CPU quota."""

from __future__ import annotations

import os

import pytest

from flashflow.cpus import available_cpus, cpu_quota
from flashflow.settings import Settings


def v2(root, content):
    """A cgroup v2 folder whose cpu.max holds ``content``."""
    (root / "cpu.max").write_text(content + "\n")
    return root


def v1(root, quota_us, period_us, folder="cpu"):
    """A cgroup v1 hierarchy with the CFS quota and period given."""
    (root / folder).mkdir()
    (root / folder / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")
    (root / folder / "cpu.cfs_period_us").write_text(f"{period_us}\n")
    return root


@pytest.mark.parametrize(("content", "cpus"), [
    ("200000 100000", 2),   # --cpus 2
    ("150000 100000", 2),   # --cpus 1.5: rounded up, the half CPU is still time to use
    ("50000 100000", 1),    # --cpus 0.5: never fewer than one worker
    ("1000 1000", 1),
    ("1600000 100000", 8),  # a quota above the affinity is capped by it
])
def test_cgroup_v2_quota_sets_the_count(tmp_path, content, cpus):
    """A cgroup v2 ``cpu.max`` quota, rounded up, between 1 and the affinity, is the count."""
    assert available_cpus(v2(tmp_path, content), affinity=8) == cpus


def test_cgroup_v2_without_a_limit_gives_the_affinity(tmp_path):
    """``max`` in cpu.max (no quota) leaves the CPUs the process may run on."""
    root = v2(tmp_path, "max 100000")
    assert cpu_quota(root) is None
    assert available_cpus(root, affinity=6) == 6


@pytest.mark.parametrize("folder", ["cpu", "cpu,cpuacct"])
def test_cgroup_v1_quota_sets_the_count(tmp_path, folder):
    """cgroup v1's cfs_quota_us over cfs_period_us, rounded up, is the count."""
    root = v1(tmp_path, 250000, 100000, folder)
    assert cpu_quota(root) == 2.5
    assert available_cpus(root, affinity=16) == 3


def test_cgroup_v1_without_a_limit_gives_the_affinity(tmp_path):
    """A v1 quota of -1 (no limit) leaves the CPUs the process may run on."""
    assert available_cpus(v1(tmp_path, -1, 100000), affinity=4) == 4


@pytest.mark.parametrize("content", ["", "garbage", "0 100000", "100000 0", "-5 100000"])
def test_unreadable_quota_is_no_limit(tmp_path, content):
    """A cpu.max this code cannot read as a positive quota limits nothing."""
    assert available_cpus(v2(tmp_path, content), affinity=3) == 3


def test_no_cgroup_files_gives_the_affinity(tmp_path):
    """Outside a cgroup with a CPU controller the count is the affinity, at least 1."""
    assert cpu_quota(tmp_path) is None
    assert available_cpus(tmp_path, affinity=5) == 5
    assert available_cpus(tmp_path, affinity=0) == 1


def test_default_affinity_is_this_process(tmp_path):
    """Without a quota, the count is the CPUs ``sched_getaffinity`` lets this process use."""
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    assert available_cpus(tmp_path) == (expected or os.cpu_count() or 1)


def test_workers_default_to_the_available_cpus():
    """Settings' worker count, unset, is what ``available_cpus`` finds for this process."""
    assert Settings.from_env({}).workers == available_cpus()
