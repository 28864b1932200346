"""A failover to a lagging replica, kept repaired: behind Redis Sentinel, and in a Redis Cluster
of three masters.

While purchases flow, the replica of the sale's master is left behind
(:func:`tests.servers.leave_replica_behind`): it is SIGSTOPped and its link cut, the master
acknowledges 100 more reservations (their buyers are told 201 as they commit) and is
SIGKILLed while the replica is still stopped. The replica is read before its promotion, to
show it lacks those writes; then it is promoted (by the Sentinels; by ``CLUSTER FAILOVER
FORCE`` on the cluster, whose other masters still make a majority), and the buyers it lacks
press again. Nobody may be told 201 twice, ``SOLD_OUT`` while a unit is unsold, or
``ALREADY_PURCHASED`` without a row; the reconciler must bring the gate back to the ledger's
truth within one reconcile interval (+ ``SLACK_S``) of the servers reaching the promoted
replica; and the sale must sell exactly to its last unit.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import httpx
import pytest
import redis
import trio

from actors import Sale
from actors.keys import sale_keys
from flashflow.invariants import GateSnapshot
from flashflow.settings import Settings

from ..helpers import ServerProcess, make_sale
from ..servers import Cluster, Lag, RedisProcess, leave_replica_behind, sentinel_set
from .checks import check_exact_end, phase_figures
from .fleet import reconciler_claims, wait_until_serving
from .load import fault_under_load, open_clients, press_until_final, recover_and_sell_out
from .recorder import Recorder
from .stores import SoldWatch, committed_rows, gate_at_once, wait_for_gate_law

pytestmark = pytest.mark.slow

STOCK = 300
#: Reservations the master acknowledges after the replica's link is cut.
LAG = 100
#: Allowed on top of one reconcile interval for the heal: the pass's own reads and writes,
#: and the poll that sees it, on a busy 2-core machine with every server traced for coverage.
SLACK_S = 1.5
#: How long the test waits for the heal at all, to report its time even past the bound.
HEAL_TIMEOUT_S = 10.0
#: What a buyer the promoted replica lacks may hear when pressing again.
TRUE_ANSWERS_TO_A_BUYER = {(409, "ALREADY_PURCHASED"), (503, "UNAVAILABLE")}


@dataclass
class Failover:
    """What the test saw of one lagging failover; times are ``time.monotonic()``."""

    lag: Lag[GateSnapshot] | None = None
    promoted_at: float = 0.0
    #: When the first server read the sale's gate through the promoted replica (its
    #: /readyz said so).
    served_at: float = 0.0
    all_served_at: float = 0.0
    healed_at: float = 0.0
    #: user -> purchase id: buyers told 201 whose reservation the master held and the
    #: promoted replica lacked.
    lost: dict[str, str] = field(default_factory=dict)
    served: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)


async def sell_through_lagging_failover(
        settings: Settings, sale: Sale, servers: list[ServerProcess], figures: dict[str, Any],
        *, master: RedisProcess, replica: RedisProcess, kill: Callable[[], None] | None = None,
        promote: Callable[[], object] | None = None) -> None:
    """Sell ``sale`` through a failover from ``master`` to ``replica`` left behind; check it.

    The replica counts as promoted once it says it is a master.

    Args:
        kill: SIGKILLs ``master`` (default: :meth:`RedisProcess.kill`).
        promote: promotes ``replica`` once it has been read (default: the topology does).
    """
    users = [f"lag-{i:04d}" for i in range(900)]
    recorder, watch, seen = Recorder(), SoldWatch(settings, sale), Failover()
    bound_s = settings.reconcile_interval_s + SLACK_S

    def read(client: redis.Redis) -> GateSnapshot:
        return gate_at_once(client, settings, sale)[0]

    def fault() -> None:
        seen.lag = leave_replica_behind(master, replica, read, lambda gate: len(gate.buyers),
                                        lag=LAG, kill=kill)
        if promote is not None:
            promote()

    def promoted() -> bool:
        if seen.lag is None:
            return False
        with suppress(redis.RedisError, OSError), replica.client() as client:
            return client.info("replication")["role"] == "master"
        return False

    async def follow(clients: list[httpx.AsyncClient]) -> None:
        """From the promotion on: the servers reach it, the gate heals, the lost press again."""
        while not await trio.to_thread.run_sync(promoted):
            await trio.sleep(0.05)
        assert seen.lag is not None
        seen.promoted_at = time.monotonic()
        # Held by the master before it died, not by the replica, committed and told 201 (a
        # purchase made on the promoted replica before this saw the promotion is not one).
        acknowledged, kept = seen.lag.on_master.buyers, seen.lag.on_replica.buyers
        seen.lost = {u: pid for u, pid in (await committed_rows(settings, sale)).items()
                     if acknowledged.get(u) == pid != kept.get(u)
                     and recorder.winners.get(u) == pid}

        async def serve(server: ServerProcess) -> None:
            await wait_until_serving(server.base_url, checks=("redis", "postgres", "gate"))
            seen.served_at = seen.served_at or time.monotonic()  # the first to reach it

        async def serve_all() -> None:
            async with trio.open_nursery() as each:
                for server in servers:
                    each.start_soon(serve, server)
            seen.all_served_at = time.monotonic()
            seen.served.set()

        async def heal() -> None:
            seen.healed_at = await wait_for_gate_law(settings, sale, HEAL_TIMEOUT_S)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_all)
            nursery.start_soon(heal)
            nursery.start_soon(partial(press_until_final, recorder, clients, sorted(seen.lost),
                                       rounds=40, pause_s=0.25))
        seen.done.set()

    try:
        with trio.fail_after(80):
            async with open_clients(*servers) as clients, trio.open_nursery() as nursery:
                await nursery.start(watch.run)
                nursery.start_soon(follow, clients)
                await fault_under_load(recorder, clients, users, settings, sale, fault,
                                       sold_before=60)
                await seen.served.wait()
                recovery = await recover_and_sell_out(recorder, clients, users, settings,
                                                      sale, STOCK)
                await seen.done.wait()
                nursery.cancel_scope.cancel()
    finally:
        exited = {s.log_path.name: s.process.returncode for s in servers
                  if s.process.poll() is not None}
        assert not exited, f"servers exited during the failover (see their logs): {exited}"

    lag = seen.lag
    assert lag is not None
    again = [o for o in recorder.outcomes
             if o.user in seen.lost and o.answered_at - o.seconds >= seen.promoted_at]
    answers = Counter((o.status, o.code) for o in again)
    figures.update(
        lag={
            "master_repl_offset": lag.master_offset,
            "replica_repl_offset": lag.replica_offset,
            "holders_on_master": len(lag.on_master.buyers),
            "holders_on_replica": len(lag.on_replica.buyers),
            "stock_on_master": lag.on_master.stock,
            "stock_on_replica": lag.on_replica.stock,
            "seconds_replica_stopped": round(lag.seconds_stopped, 2),
            "buyers_told_201_the_replica_lacked": len(seen.lost),
        },
        fault=phase_figures(recorder, "fault"),
        seconds_until_promoted=round(seen.promoted_at - lag.killed_at, 2),
        seconds_from_promotion_until_served=round(seen.served_at - seen.promoted_at, 2),
        seconds_from_promotion_until_all_served=round(seen.all_served_at - seen.promoted_at,
                                                      2),
        seconds_from_promotion_until_healed=round(seen.healed_at - seen.promoted_at, 2),
        seconds_from_served_until_healed=round(max(0.0, seen.healed_at - seen.served_at), 2),
        seconds_from_all_served_until_healed=round(max(0.0, seen.healed_at - seen.all_served_at),
                                                   2),
        heal_bound_seconds=bound_s,
        lost_buyers_answers={f"{s} {c}": n for (s, c), n in sorted(answers.items())},
        lost_buyers_answered_before_the_heal=sum(o.answered_at < seen.healed_at
                                                 for o in again),
    )
    # Before the promotion, the replica lacked writes the master had acknowledged.
    assert lag.replica_offset < lag.master_offset, figures["lag"]
    assert len(lag.on_master.buyers) - len(lag.on_replica.buyers) >= LAG, figures["lag"]
    assert lag.on_replica.stock - lag.on_master.stock >= LAG, figures["lag"]
    assert len(seen.lost) >= LAG // 2, figures["lag"]

    await check_exact_end(figures, settings, sale, recorder, servers, recovery=recovery)
    figures["reconciler_claimed"] = reconciler_claims(*servers)
    # The reconciler put them back: nothing else writes a holder under a committed id.
    assert figures["reconciler_claimed"] >= len(seen.lost), figures
    too_soon = watch.told_too_soon(recorder.outcomes)
    figures["sold_out_told_while_units_were_unsold"] = len(too_soon)
    assert not too_soon, f"SOLD_OUT told before the stock was committed: {too_soon[:3]}"
    assert figures["already_purchased_told_to_users_without_a_row"] == 0
    assert set(answers) <= TRUE_ANSWERS_TO_A_BUYER, figures["lost_buyers_answers"]
    assert answers[409, "ALREADY_PURCHASED"] > 0, figures["lost_buyers_answers"]
    # Measured from when every server reaches the promoted replica: a server that cannot
    # reach it yet cannot repair through it.
    assert seen.healed_at - seen.all_served_at <= bound_s, figures


async def test_sentinel_promotes_a_lagging_replica(fault_settings, launch, figures, tmp_path):
    """Three Sentinels promote a replica 100 reservations behind: healed, then sold exactly."""
    with sentinel_set(tmp_path / "redis", sentinels=3) as topology:
        settings = replace(fault_settings, redis_url=topology.url)
        sale = await make_sale(settings.database_url, stock=STOCK)
        servers = [await launch(settings), await launch(settings)]
        await sell_through_lagging_failover(
            settings, sale, servers, figures, master=topology.master, replica=topology.replica)


async def test_cluster_promotes_a_lagging_replica(fault_settings, cluster: Cluster, launch,
                                                  figures):
    """A shard's replica 100 reservations behind takes over: healed, then sold exactly."""
    settings = replace(fault_settings, redis_url=cluster.url)
    sale = await make_sale(settings.database_url, stock=STOCK)
    key = sale_keys(settings.key_prefix, sale.id).stock
    victim = cluster.owner(key)
    replica = cluster.replica_of(victim)
    servers = [await launch(settings), await launch(settings)]

    def promote() -> None:
        # The master is dead and the other two masters make a majority: FORCE, not TAKEOVER.
        with replica.client() as client:
            client.execute_command("CLUSTER", "FAILOVER", "FORCE")

    await sell_through_lagging_failover(
        settings, sale, servers, figures, master=victim, replica=replica,
        kill=lambda: cluster.kill(victim), promote=promote)
