"""Reading FLASHFLOW_REDIS_URL: one server, Sentinel or Cluster, and clear errors otherwise."""

from __future__ import annotations

import pytest

from actors.keys import rate_keys, sale_keys
from actors.redis_url import RedisTarget, parse_redis_url
from flashflow.settings import Settings, SettingsError


def test_single_server_urls_pass_through_unchanged():
    """redis://, rediss:// and unix:// URLs are left to redis-py as they are."""
    for url in ("redis://127.0.0.1:6379/0", "rediss://h/1", "unix:///run/redis.sock"):
        assert parse_redis_url(url) == RedisTarget("single", url)


def test_sentinel_url_names_sentinels_master_db_and_credentials():
    """Sentinels (default port 26379), the master's name, the db and a quoted password."""
    url = "redis+sentinel://app:p%40ss@s1:26380,s2,[::1]:5000/shop/3"
    target = parse_redis_url(url)
    assert target.kind == "sentinel"
    assert target.nodes == (("s1", 26380), ("s2", 26379), ("::1", 5000))
    assert (target.master, target.db) == ("shop", 3)
    assert target.credentials == {"username": "app", "password": "p@ss"}
    assert parse_redis_url("redis+sentinel://s1/shop").db == 0


def test_cluster_url_lists_seed_nodes():
    """Cluster seed nodes (default port 6379); database 0 only."""
    target = parse_redis_url("redis+cluster://a:7000,b/0")
    assert (target.kind, target.nodes, target.credentials) == (
        "cluster", (("a", 7000), ("b", 6379)), {})


@pytest.mark.parametrize(("url", "says"), [
    ("redis+sentinel://s1:26379", "master's name"),
    ("redis+sentinel://s1/m/zero", "database must be a number"),
    ("redis+sentinel://s1:0/m", "between 1 and 65535"),
    ("redis+cluster://a:7000,:7001", "host is missing"),
    ("redis+cluster://a:port", "must be a number"),
    ("redis+cluster://a:7000/2", "only database 0"),
    ("redis+cluster://a:7000?x=1", "no query options"),
    ("memcached://a:11211", "unknown scheme"),
])
def test_malformed_urls_are_a_settings_error_naming_the_variable(url, says):
    """A malformed Redis URL stops start-up with FLASHFLOW_REDIS_URL and what is wrong."""
    with pytest.raises(SettingsError, match="FLASHFLOW_REDIS_URL") as caught:
        Settings.from_env({"FLASHFLOW_REDIS_URL": url})
    assert says in str(caught.value)


def test_keys_that_scripts_take_together_share_one_cluster_slot():
    """A sale's keys share its hash tag; every rate-limiter bucket shares one tag."""
    from redis.cluster import key_slot

    keys = sale_keys("p:", "5f0c6f5e-0000-4000-8000-000000000001")
    slots = {key_slot(k.encode()) for k in (keys.stock, keys.buyers, keys.pending,
                                            keys.staging("t"))}
    assert len(slots) == 1
    buckets = [*rate_keys("p:", "alice", "10.0.0.1"), *rate_keys("p:", "bob", "10.0.0.2")]
    assert len({key_slot(k.encode()) for k in buckets}) == 1
