"""The stock-feed actor against real Redis: cross-client changes, coalescing, isolation."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
import redis
import trio
import trio_asyncio

from actors._feed_redis import parse_stock
from actors._nursery import single_errors
from actors.errors import BackendUnavailable, ShuttingDown
from actors.keys import change_notice, sale_keys, stock_channel
from actors.stock_feed import StockFeed, open_stock_feed
from flashflow.settings import Settings


def stock_key(prefix: str, sale_id: uuid.UUID) -> str:
    """The gate's stock key, for the tests' own writes."""
    return sale_keys(prefix, sale_id).stock


@asynccontextmanager
async def running_feed(redis_url: str, prefix: str, **knobs) -> AsyncIterator[StockFeed]:
    """A feed inside its own asyncio bridge."""
    config = replace(Settings(redis_url=redis_url, key_prefix=prefix).feed_config(), **knobs)
    async with (
        trio_asyncio.open_loop(),
        open_stock_feed(config) as feed,
    ):
        yield feed


def publish_all(redis_url: str, channel: str, sale_id: uuid.UUID, values: list[int]) -> None:
    """Publish stock values from another client, as another process's gate would."""
    client = redis.Redis.from_url(redis_url)
    try:
        pipe = client.pipeline(transaction=False)
        for value in values:
            pipe.publish(channel, f"{sale_id} {value}")
        pipe.execute()
    finally:
        client.close()


async def publish(redis_url: str, channel: str, sale_id: uuid.UUID, *values: int) -> None:
    """:func:`publish_all` from trio, in a worker thread."""
    await trio.to_thread.run_sync(publish_all, redis_url, channel, sale_id, list(values))


async def test_a_change_published_by_another_client_reaches_a_subscriber(services, key_prefix):
    """A stock message published on the channel by another connection is delivered."""
    sale_id = uuid.uuid4()
    with trio.fail_after(10):
        async with running_feed(services.redis_url, key_prefix) as feed:
            with feed.subscribe(sale_id) as sub:
                await publish(services.redis_url, stock_channel(key_prefix), sale_id, 7)
                assert await sub.next() == 7
                # The value delivered is the feed's own now: the snapshot costs no Redis call.
                assert await sub.snapshot() == 7
            stats = feed.statistics()
    assert stats.messages_received == 1
    assert stats.updates_delivered == 1


async def test_rapid_changes_are_coalesced_and_end_on_the_final_value(services, key_prefix):
    """100 rapid changes reach a subscriber as a few deliveries, the last being the final."""
    sale_id = uuid.uuid4()
    seen: list[int] = []
    with trio.fail_after(10):
        async with running_feed(services.redis_url, key_prefix) as feed:
            with feed.subscribe(sale_id) as sub:
                await publish(services.redis_url, stock_channel(key_prefix), sale_id,
                              *range(99, -1, -1))
                while not seen or seen[-1] != 0:
                    seen.append(await sub.next())
                with trio.move_on_after(0.5) as nothing_more:
                    seen.append(await sub.next())
                stats = feed.statistics()
    assert nothing_more.cancelled_caught, seen
    assert seen[-1] == 0
    assert len(seen) <= 5, seen
    assert stats.messages_received == 100


async def test_deliveries_to_one_subscriber_are_paced(services, key_prefix):
    """Two deliveries to one subscriber are at least ``min_interval_s`` apart."""
    sale_id = uuid.uuid4()
    channel = stock_channel(key_prefix)
    with trio.fail_after(10):
        async with running_feed(services.redis_url, key_prefix, min_interval_s=0.3) as feed:
            with feed.subscribe(sale_id) as sub:
                await publish(services.redis_url, channel, sale_id, 5)
                assert await sub.next() == 5
                first = trio.current_time()
                await publish(services.redis_url, channel, sale_id, 4)
                assert await sub.next() == 4
                gap = trio.current_time() - first
    assert gap >= 0.29


async def test_a_blocked_subscriber_does_not_hold_up_another(services, key_prefix):
    """A subscriber that never reads does not delay another; it later skips to the latest."""
    sale_id = uuid.uuid4()
    with trio.fail_after(10):
        async with running_feed(services.redis_url, key_prefix) as feed:
            with feed.subscribe(sale_id) as slow, feed.subscribe(sale_id) as fast:
                await publish(services.redis_url, stock_channel(key_prefix), sale_id,
                              *range(99, -1, -1))
                value = None
                while value != 0:
                    value = await fast.next()
                assert feed.statistics().messages_received == 100
                assert await slow.next() == 0


async def test_leaving_a_subscription_frees_it_at_once(services, key_prefix):
    """Closing or cancelling a subscriber drops it from the statistics immediately."""
    sale_id = uuid.uuid4()
    with trio.fail_after(10):
        async with running_feed(services.redis_url, key_prefix) as feed:
            with feed.subscribe(sale_id):
                assert feed.statistics().subscribers == 1
            assert feed.statistics().subscribers == 0

            async def watch(task_status=trio.TASK_STATUS_IGNORED):
                with feed.subscribe(sale_id) as sub:
                    task_status.started()
                    await sub.next()

            async with trio.open_nursery() as nursery:
                await nursery.start(watch)
                await nursery.start(watch)
                assert feed.statistics().subscribers == 2
                assert feed.statistics().watched_sales == 1
                nursery.cancel_scope.cancel()
            stats = feed.statistics()
    assert stats.subscribers == 0
    assert stats.watched_sales == 0


async def test_after_a_dropped_subscription_the_feed_reconnects_and_rereads(services, key_prefix):
    """When Redis drops the feed's connection, subscribers get the stock as it is now."""
    sale_id = uuid.uuid4()
    client = redis.Redis.from_url(services.redis_url, decode_responses=True)
    with trio.fail_after(15):
        async with running_feed(services.redis_url, key_prefix) as feed:
            with feed.subscribe(sale_id) as sub:
                await publish(services.redis_url, stock_channel(key_prefix), sale_id, 5)
                assert await sub.next() == 5
                # A change the feed never hears about, then a dropped connection.
                client.set(stock_key(key_prefix, sale_id), 3)
                for info in client.client_list(_type="pubsub"):
                    if info["name"] == f"{key_prefix}stock-feed":
                        client.client_kill_filter(_id=info["id"])
                assert await sub.next() == 3
            stats = feed.statistics()
    client.close()
    assert stats.reconnects >= 1
    assert stats.connected


async def test_an_unreachable_redis_fails_the_start(key_prefix):
    """Opening the feed against a closed port raises BackendUnavailable, not a hang."""
    with trio.fail_after(10), pytest.raises(BackendUnavailable), single_errors():
        async with running_feed("redis://127.0.0.1:1/0", key_prefix, timeout_s=1.0):
            pass


async def test_first_watchers_share_one_reread_and_later_ones_use_the_feed(services, key_prefix):
    """Concurrent first snapshots cost one Redis re-read; a later one costs none."""
    sale_id = uuid.uuid4()
    client = redis.Redis.from_url(services.redis_url)
    client.set(stock_key(key_prefix, sale_id), 7)
    snapshots: list[int | None] = []
    with trio.fail_after(10):
        async with running_feed(services.redis_url, key_prefix) as feed:
            with feed.subscribe(sale_id) as keep:

                async def first_snapshot() -> None:
                    with feed.subscribe(sale_id) as sub:
                        snapshots.append(await sub.snapshot())

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(first_snapshot)
                    for _ in range(49):
                        nursery.start_soon(first_snapshot)
                assert await keep.next() == 7
                with feed.subscribe(sale_id) as later:
                    assert await later.snapshot() == 7
                received = feed.statistics().messages_received
    client.close()
    assert snapshots == [7] * 50
    assert received == 1


async def test_a_sale_without_stock_in_redis_has_no_snapshot(services, key_prefix):
    """A sale whose gate is not loaded snapshots as None, so the caller loads it."""
    with trio.fail_after(10):
        async with running_feed(services.redis_url, key_prefix) as feed:
            with feed.subscribe(uuid.uuid4()) as sub:
                assert await sub.snapshot() is None


def test_stock_messages_parse_strictly():
    """Only "<uuid> <int>" parses; negative stock reads as 0; anything else is None."""
    sale_id = uuid.uuid4()
    assert parse_stock(f"{sale_id} 5".encode()) == (sale_id, 5)
    assert parse_stock(f"{sale_id} -1") == (sale_id, 0)
    assert parse_stock(change_notice(sale_id).encode()) == (sale_id, None)
    for bad in [b"", b"nonsense", f"{sale_id}".encode(), b"not-a-uuid 5",
                f"{sale_id} five".encode(), f"{sale_id} 1 2".encode(), None, b"\xff 1"]:
        assert parse_stock(bad) is None, bad


async def test_malformed_messages_are_skipped_and_small_batches_drain(services, key_prefix):
    """Garbage on the channel is ignored, and batches capped at two still see every message."""
    sale_id = uuid.uuid4()
    channel = stock_channel(key_prefix)
    with trio.fail_after(10):
        async with running_feed(services.redis_url, key_prefix, batch_max=2) as feed:
            with feed.subscribe(sale_id) as sub:
                await trio.to_thread.run_sync(
                    lambda: redis.Redis.from_url(services.redis_url).publish(channel, "garbage"))
                await publish(services.redis_url, channel, sale_id, 9, 8, 7, 6, 5)
                value = None
                while value != 5:
                    value = await sub.next()
            stats = feed.statistics()
    assert stats.messages_received == 6


async def test_a_quiet_channel_is_pinged_and_the_feed_stays_up(services, key_prefix):
    """After idle periods the feed pings Redis, keeps its subscription, and still delivers."""
    sale_id = uuid.uuid4()
    with trio.fail_after(10):
        async with running_feed(services.redis_url, key_prefix, idle_ping_s=0.1) as feed:
            with feed.subscribe(sale_id) as sub:
                await trio.sleep(0.5)
                await publish(services.redis_url, stock_channel(key_prefix), sale_id, 4)
                assert await sub.next() == 4
            stats = feed.statistics()
    assert stats.connected
    assert stats.reconnects == 0


async def test_closing_streams_ends_every_wait(services, key_prefix):
    """close_streams() ends waiting subscribers, and later waits, with ShuttingDown."""
    sale_id = uuid.uuid4()
    ended: list[str] = []

    async def wait(feed: StockFeed, name: str) -> None:
        with feed.subscribe(sale_id) as sub, pytest.raises(ShuttingDown):
            await sub.next()
        ended.append(name)

    with trio.fail_after(10):
        async with running_feed(services.redis_url, key_prefix) as feed:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait, feed, "a")
                nursery.start_soon(wait, feed, "b")
                await trio.sleep(0.1)
                feed.close_streams()
            await wait(feed, "late")
    assert sorted(ended) == ["a", "b", "late"]


async def test_a_watcher_leaving_while_reading_the_snapshot_ends_no_other(services, key_prefix):
    """The subscriber asking Redis for everyone is cancelled: the others still get a value."""
    sale_id = uuid.uuid4()
    redis.Redis.from_url(services.redis_url).set(stock_key(key_prefix, sale_id), 4)
    got: list[int | None] = []

    async def reader(feed: StockFeed) -> None:
        with feed.subscribe(sale_id) as sub:
            got.append(await sub.snapshot())

    with trio.fail_after(10):
        async with running_feed(services.redis_url, key_prefix) as feed:
            async with trio.open_nursery() as nursery:
                with trio.CancelScope() as leaving:
                    first = feed.subscribe(sale_id)
                    nursery.start_soon(reader, feed)
                    nursery.start_soon(reader, feed)
                    leaving.cancel()
                    await first.snapshot()  # cancelled at once: it leaves mid-read
                first.close()
    assert got == [4, 4]
