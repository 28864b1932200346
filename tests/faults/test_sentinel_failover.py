"""Redis behind Sentinel: the master SIGKILLed mid-sale, a replica promoted under load."""

from __future__ import annotations

from dataclasses import replace

import pytest
import trio

from ..helpers import make_sale
from ..servers import sentinel_set, wait_for
from .checks import check_exact_end, phase_figures
from .fleet import wait_until_serving
from .load import fault_under_load, open_clients, recover_and_sell_out
from .recorder import Recorder

pytestmark = pytest.mark.slow

STOCK = 300


@pytest.mark.parametrize("sentinels", [1, 3])
async def test_master_killed_replica_promoted_mid_sale(fault_settings, launch, figures, tmp_path,
                                                       sentinels):
    """Master SIGKILLed mid-sale: only 503s while Sentinel promotes the replica, then exact."""
    with sentinel_set(tmp_path / "redis", sentinels=sentinels) as topology:
        settings = replace(fault_settings, redis_url=topology.url)
        sale = await make_sale(settings.database_url, stock=STOCK)
        users = [f"sn-{i:04d}" for i in range(900)]
        servers = [await launch(settings), await launch(settings)]
        recorder = Recorder()
        with trio.fail_after(120):
            async with open_clients(*servers) as clients:
                killed_at = await fault_under_load(recorder, clients, users, settings, sale,
                                                   topology.master.kill, sold_before=60)
                await trio.to_thread.run_sync(lambda: wait_for(
                    lambda: topology.master_port() == topology.replica.port, 30,
                    "Sentinel names the replica as the master"))
                promoted_s = trio.current_time() - killed_at
                ready_s = max([await wait_until_serving(s.base_url) for s in servers])
                recovery_s, sell_out_s = await recover_and_sell_out(
                    recorder, clients, users, settings, sale, STOCK)
        figures.update(
            sentinels=sentinels,
            fault=phase_figures(recorder, "fault"),
            seconds_until_promoted=round(promoted_s, 2),
            seconds_until_ready=round(ready_s, 2),
        )
        await check_exact_end(figures, settings, sale, recorder, servers,
                              recovery=(recovery_s, sell_out_s))
        assert figures["fault"]["503"] > 0, "no purchase was refused while the master was down"
