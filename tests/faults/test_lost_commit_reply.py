"""A commit whose reply is lost: PostgreSQL committed, the server never heard it.

The server reaches PostgreSQL through a loopback proxy in the test. Once armed, the proxy
forwards the next COMMITs to PostgreSQL but swallows everything PostgreSQL sends back on
those connections, then closes them: the ledger's commit times out although the purchase
is durable. The server must settle it by asking the ledger, so the buyer is confirmed (201,
or a status read that shows the purchase), the unit is sold once and never put back on
sale (no phantom unit in ``remainingStock``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
import trio

from flashflow.http.replies import read_reply
from flashflow.http.wire import CURRENT

from ..helpers import ledger_of, make_sale
from .checks import check_sale_after_faults, phase_figures
from .fleet import reconciler_returns
from .load import asking, open_clients, press_until_final
from .recorder import Recorder, purchase_status
from .stores import LawWatch, committed_rows

pytestmark = pytest.mark.slow

#: Fewer units asked than the stock: every buyer can and must end with a purchase, and a
#: unit put back by mistake would show in ``remainingStock``. The stock is the units the
#: buyers ask for and these more (with a unit each: 60 + 40).
SPARE = 40
BEFORE, DURING, LATER = 10, 30, 20
#: How many COMMIT replies the proxy swallows (each one is a whole ledger batch).
SWALLOWED_COMMITS = 2
#: How long a swallowing connection stays open, mute, before the proxy closes it: past the
#: ledger's timeout, so the server gives up on it first.
MUTE_S = 6.0


@dataclass
class _Connection:
    mute: bool = False


class CommitReplyDropper:
    """A TCP proxy to PostgreSQL that, when armed, swallows the replies to the next COMMITs.

    A COMMIT is spotted in what the client sends (asyncpg commits with a simple query,
    ``COMMIT;``); it is forwarded, and from then on the connection's server-to-client bytes
    are read and dropped for ``mute_s``, then both sides are closed.
    """

    def __init__(self, upstream_port: int, mute_s: float) -> None:
        self.upstream_port = upstream_port
        self.mute_s = mute_s
        self.armed = 0
        self.swallowed = 0
        self.dropped_bytes = 0
        self.connections = 0

    def arm(self, commits: int) -> None:
        """Swallow the replies of the next ``commits`` COMMITs, on whichever connections."""
        self.armed = commits

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on a free loopback port (given to ``task_status``) until cancelled."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        async with client:
            try:
                upstream = await trio.open_tcp_stream("127.0.0.1", self.upstream_port)
            except OSError:
                return
            state = _Connection()
            async with upstream, trio.open_nursery() as nursery:
                nursery.start_soon(self._to_server, client, upstream, state, nursery)
                nursery.start_soon(self._to_client, upstream, client, state,
                                   nursery.cancel_scope)

    async def _to_server(self, source: trio.SocketStream, sink: trio.SocketStream,
                         state: _Connection, nursery: trio.Nursery) -> None:
        try:
            while data := await source.receive_some(65536):
                await sink.send_all(data)
                if self.armed and not state.mute and b"COMMIT" in data.upper():
                    self.armed -= 1
                    self.swallowed += 1
                    state.mute = True
                    nursery.start_soon(self._close_after, nursery.cancel_scope)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        # The client hung up (or the upstream broke): close both sides.
        nursery.cancel_scope.cancel()

    async def _to_client(self, source: trio.SocketStream, sink: trio.SocketStream,
                         state: _Connection, scope: trio.CancelScope) -> None:
        try:
            while data := await source.receive_some(65536):
                if state.mute:
                    self.dropped_bytes += len(data)
                    continue
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()

    async def _close_after(self, scope: trio.CancelScope) -> None:
        await trio.sleep(self.mute_s)
        scope.cancel()


async def remaining_stock(client) -> int:
    """``remainingStock`` of ``GET /current``."""
    response = await client.get(CURRENT)
    assert response.status_code == 200, response.text
    return read_reply(response.status_code, response.json()).remaining_stock


@pytest.mark.parametrize("most", [1, 4], ids=["one-unit", "quantities"])
async def test_commit_whose_reply_was_lost_is_settled(backends, fault_settings, launch, figures,
                                                      most):
    """A lost COMMIT reply: the buyer is confirmed, the units sold once, no phantom unit,
    and the gate's law at every read; with buyers of one unit each, and of 1 to 4 units
    (limit 4)."""
    direct = fault_settings  # the test reads PostgreSQL directly, never through the proxy
    proxy = CommitReplyDropper(backends.postgres_port, MUTE_S)
    before = [f"lb-{i:02d}" for i in range(BEFORE)]
    during = [f"ld-{i:02d}" for i in range(DURING)]
    later = [f"ll-{i:02d}" for i in range(LATER)]
    recorder = Recorder(quantities=asking(before + during + later, most))
    wanted = sum(recorder.quantities.values())
    stock = wanted + SPARE
    async with trio.open_nursery() as proxy_nursery:
        port = await proxy_nursery.start(proxy.serve)
        proxied = replace(direct, database_url=f"postgresql://postgres@127.0.0.1:{port}/"
                          + direct.database_url.rsplit("/", 1)[1])
        sale = await make_sale(direct.database_url, stock=stock, per_user_limit=most)
        server = await launch(proxied)
        # Redis never fails here: the gate's law holds at every read, lost replies or not.
        law = LawWatch(direct, sale)
        await proxy_nursery.start(law.run)
        with trio.fail_after(90):
            async with open_clients(server, timeout_s=30) as clients:
                client = clients[0]
                for user in before:
                    assert (await recorder.press(client, user)).status == 201

                recorder.phase = "fault"
                proxy.arm(SWALLOWED_COMMITS)
                async with trio.open_nursery() as nursery:
                    for user in during:
                        nursery.start_soon(recorder.press, client, user)
                fault_rows = await committed_rows(direct, sale)
                remaining_right_after = await remaining_stock(client)
                # Each buyer of the fault: a 201, or a status read that says what happened.
                told = {o.user: o for o in recorder.in_phase("fault")}
                statuses = {u: await purchase_status(client, u) for u in during}

                recorder.phase = "recovering"
                unconfirmed = [u for u in during if told[u].status != 201]
                await press_until_final(recorder, clients, unconfirmed)
                await press_until_final(recorder, clients, later)
                recorder.phase = "after"
                await press_until_final(recorder, clients, before + during + later, rounds=1)

                ledger = await ledger_of(direct, sale.id)
                rows = ledger.purchases
                # No phantom unit: what the server shows converges to total - committed.
                settle_s = direct.reservation_grace_s + direct.reconcile_interval_s + 3
                with trio.move_on_after(settle_s):
                    while await remaining_stock(client) != stock - ledger.units:
                        await trio.sleep(0.1)
                remaining_at_end = await remaining_stock(client)
                final_statuses = {u: await purchase_status(client, u)
                                  for u in before + during + later}
        proxy_nursery.cancel_scope.cancel()

    lost = [u for u in during if told[u].status != 201 and u in fault_rows]
    figures.update(
        stock=stock, units_wanted=wanted, buyers_before=BEFORE, buyers_during=DURING,
        buyers_later=LATER,
        postgres_timeout_s=direct.postgres_timeout_s, purchase_wait_s=direct.purchase_wait_s,
        commits_swallowed=proxy.swallowed, reply_bytes_dropped=proxy.dropped_bytes,
        proxy_connections=proxy.connections,
        fault=phase_figures(recorder, "fault"),
        fault_committed=len(fault_rows) - BEFORE,
        fault_committed_without_a_201=len(lost),
        remaining_stock_right_after_the_fault=remaining_right_after,
        committed_right_after_the_fault=len(fault_rows),
        recovering=phase_figures(recorder, "recovering"),
        after=phase_figures(recorder, "after"),
        remaining_stock_at_end=remaining_at_end,
        gate_law_reads=law.polls,
    )
    figures.update(await check_sale_after_faults(
        direct, sale, recorder, expected_sold=wanted,
        settle_s=direct.reservation_grace_s + direct.reconcile_interval_s + 3))
    figures["reconciler_returned"] = reconciler_returns(server)

    assert proxy.swallowed == SWALLOWED_COMMITS, "the proxy swallowed no COMMIT reply"
    assert law.polls > 10 and not law.breaks, law.breaks
    assert proxy.dropped_bytes > 0
    # Each buyer of the fault ends with a 201 or a status read showing the purchase; the
    # status read agrees with the ledger, with the same purchase id.
    for user in during:
        status, row = statuses[user], fault_rows.get(user)
        assert status.purchased == (row is not None), (user, told[user], status, row)
        if told[user].status == 201:
            assert row == told[user].purchase_id, (user, told[user], row)
        elif row is not None:
            assert status.purchase_id == row, (user, status, row)
    # The lost replies were decided by asking the ledger: the commits count as sold.
    assert len(fault_rows) - BEFORE == sum(o.status == 201 for o in told.values()) + len(lost)
    # No unit sold twice: one row per user, each of the units asked, never more units than
    # the stock.
    assert ledger.units == wanted <= stock
    assert all(final_statuses[u].purchased
               and final_statuses[u].purchase_id == rows[u] for u in rows)
    assert len(rows) == BEFORE + DURING + LATER
    assert {u: ledger.units_of(u) for u in rows} == recorder.quantities
    # No phantom unit, neither right after the fault nor once settled.
    assert remaining_at_end == stock - ledger.units
