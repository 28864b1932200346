"""The capacity benchmarks at a tiny size: each still sells (or lapses) exactly and reports
every figure."""

from __future__ import annotations

import json
import math

import trio
from click.testing import CliRunner

from flashflow.capacity import measure, run_big_sale, run_lapses
from flashflow.capacity._common import redis_cluster, redis_server_binary, target_for
from flashflow.capacity.cli import main
from flashflow.capacity.harness import delete_prefix


async def test_gate_benchmark_on_one_redis_and_a_cluster(services, key_prefix, tmp_path):
    """Every reservation the gate answered is a holder in Redis, and each figure is positive."""
    single = target_for(services.redis_url, "one Redis")
    with trio.fail_after(30), redis_cluster(tmp_path, redis_server_binary(), 3) as cluster:
        for target in (single, cluster):
            prefix = f"{key_prefix}{target.label[:3]}:"
            try:
                figure = await measure(target, prefix, 2, concurrency=64, duration_s=0.5,
                                       warmup_s=0.1)
            finally:
                delete_prefix(target.url, prefix)
            assert figure.verified, figure
            assert figure.decided > 0 and figure.per_s > 0
            assert figure.redis_cpu_us > 0 and math.isfinite(figure.ceiling_per_s)
            assert all(cores > 0 for cores in figure.http_cores())
    assert figure.target == "3-shard cluster"


async def test_big_sale_benchmark_sells_exactly(database_url, services, key_prefix):
    """200 units to 400 users: 200 rows, 200 SOLD_OUT, the gate rebuilt equal to the ledger."""
    target = target_for(services.redis_url, "one Redis")
    with trio.fail_after(60):
        run = await run_big_sale(database_url, target, key_prefix, units=200, users=400,
                                 concurrency=64)
    assert run.held, [c for c in run.checks if not c.held]
    assert {c.name.split(":")[0] for c in run.checks} == {"after sale", "after rebuild"}
    assert run.answers == {"201": 200, "409 SOLD_OUT": 200}
    assert len(run.part_rates) == 20 and all(rate > 0 for rate in run.part_rates)
    assert run.start_per_s > 0 and run.end_per_s > 0 and run.after_sold_out_per_s > 0
    assert [share for share, _ in run.reconcile_ms] == [0.1, 0.5, 0.9, 1.0]
    assert all(ms > 0 for _, ms in run.reconcile_ms)
    assert run.rebuild_s > 0 and run.bytes_per_buyer > 0 and run.redis_cpu_us_per_purchase > 0


async def test_big_sale_of_quantities_sells_every_unit_exactly(database_url, services,
                                                                key_prefix):
    """200 units to 400 users asking 1 to 4 each (limit 4): every unit sold in fewer
    purchases, each refusal final (SOLD_OUT, or INSUFFICIENT_STOCK for a size that no
    longer fit), and the one check holds after the sale and after a rebuild."""
    target = target_for(services.redis_url, "one Redis")
    with trio.fail_after(60):
        run = await run_big_sale(database_url, target, key_prefix, units=200, users=400,
                                 concurrency=64, max_quantity=4)
    assert run.held, [c for c in run.checks if not c.held]
    assert run.max_quantity == 4 and run.purchases == run.answers["201"] < 200
    assert set(run.answers) <= {"201", "409 SOLD_OUT", "409 INSUFFICIENT_STOCK"}
    assert sum(run.answers.values()) == 400
    assert run.purchases_per_s > 0 and run.units_per_s > run.purchases_per_s


def test_command_line_prints_the_tables_and_writes_json(services, tmp_path):
    """Both commands run from the command line against given servers and exit 0 when checked."""
    runner = CliRunner()
    gate_json, sale_json = tmp_path / "gate.json", tmp_path / "sale.json"
    gate = runner.invoke(main, ["gate", "--redis-url", services.redis_url, "--shards", "0",
                                "--sales", "1", "--concurrency", "16", "--duration-s", "0.2",
                                "--warmup-s", "0", "--json", str(gate_json)])
    assert gate.exit_code == 0, gate.output
    assert "| one Redis (given) | 1 | 16 |" in gate.output
    assert json.loads(gate_json.read_text())["figures"][0]["verified"] is True
    sale = runner.invoke(main, ["big-sale", "--units", "20", "--users", "40",
                                "--concurrency", "8", "--database-url", services.database_url,
                                "--redis-url", services.redis_url, "--json", str(sale_json)])
    assert sale.exit_code == 0, sale.output
    assert "| Invariants (after the sale, after the rebuild) | held |" in sale.output
    assert json.loads(sale_json.read_text())["run"]["held"] is True
    both = runner.invoke(main, ["big-sale", "--units", "20", "--users", "40",
                                "--concurrency", "8", "--max-quantity", "3",
                                "--database-url", services.database_url,
                                "--redis-url", services.redis_url, "--json", str(sale_json)])
    assert both.exit_code == 0, both.output
    assert "| Figure | 1 unit | 1 to 3 units | Ratio |" in both.output
    assert [r["max_quantity"] for r in json.loads(sale_json.read_text())["runs"]] == [1, 3]


def test_lapses_benchmark_lapses_each_hold_once_and_hands_on_in_order(database_url, services,
                                                                       key_prefix):
    """300 holds ending in the same second, 100 waiting, two sweeper processes: each hold
    lapses once, the first 100 places each get a unit, the gate ends as the rows; every
    figure is there and in order (the figures are reported, not held to a time)."""
    run = run_lapses(database_url, services.redis_url, key_prefix, holds=300, waiting=100,
                     sweepers=2, timeout_s=60)
    assert run.held, [c for c in run.checks if not c.held]
    assert {c.name for c in run.checks} == {
        "each hold lapsed once", "the first in line were each handed one unit, in order",
        "sold counts the rows", "gate agrees with ledger"}
    assert sum(run.lapsed_by) == 300 and sum(run.offered_by) == 100
    assert len(run.lapsed_by) == 2 and run.failed_sweeps == 0
    assert 0 < run.first_lapse_s and run.last_offer_s is not None
    # Each offer commits with its lapse, and the gate is told after the commit (the times
    # come from two clocks: a few ms of slack).
    assert run.last_offer_s <= run.last_lapse_s <= min(run.gate_s, run.told_s) + 0.01
    assert run.lapses_per_s > 0


def test_lapses_command_prints_the_table_and_writes_json(services, tmp_path):
    """``python -m flashflow.capacity lapses`` runs against given servers and exits 0 when
    every check held."""
    path = tmp_path / "lapses.json"
    done = CliRunner().invoke(main, [
        "lapses", "--holds", "50", "--waiting", "20", "--sweepers", "1",
        "--database-url", services.database_url, "--redis-url", services.redis_url,
        "--json", str(path)])
    assert done.exit_code == 0, done.output
    assert "| Holds / waiting / sweeper processes | 50 / 20 / 1 |" in done.output
    assert "| Checks | held |" in done.output
    assert json.loads(path.read_text())["run"]["held"] is True
