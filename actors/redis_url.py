"""What ``FLASHFLOW_REDIS_URL`` names: one Redis, a Sentinel-watched master, or a Cluster.

The one place that reads a Redis URL. The actors build their asyncio clients from it
(:mod:`actors._aio`); the settings validate with it; the tests and the load tests build
their synchronous clients with :func:`sync_client`.

- ``redis://``, ``rediss://``, ``unix://``: one server, as redis-py reads such a URL.
- ``redis+sentinel://[user:password@]host:port,host:port/MASTER[/DB]``: the master that the
  Sentinels (default port 26379) name ``MASTER``; the password is the data nodes', the
  Sentinels themselves are asked without one.
- ``redis+cluster://[user:password@]host:port,host:port[/0]``: a Redis Cluster, reached
  through any of the listed nodes (default port 6379); a cluster has only database 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote

import redis
import redis.cluster
import redis.sentinel

SENTINEL = "redis+sentinel"
CLUSTER = "redis+cluster"
_SINGLE = ("redis", "rediss", "unix")
_DEFAULT_PORTS = {SENTINEL: 26379, CLUSTER: 6379}

Kind = Literal["single", "sentinel", "cluster"]


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed Redis URL.

    Attributes:
        kind: ``single``, ``sentinel`` or ``cluster``.
        url: the URL as given (for ``single``, what redis-py's ``from_url`` reads).
        nodes: the Sentinels or the cluster's seed nodes, as (host, port).
        master: the Sentinel service name of the master.
        db: the database number on the master.
    """

    kind: Kind
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    master: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None

    @property
    def credentials(self) -> dict[str, Any]:
        """``username`` and ``password`` as redis-py connection keyword arguments."""
        given = {"username": self.username, "password": self.password}
        return {k: v for k, v in given.items() if v is not None}


def parse_redis_url(url: str) -> RedisTarget:
    """Read ``url`` as one of the three shapes above.

    Raises:
        ValueError: the URL is malformed; the message says how.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueError("must be a URL such as redis://host:port/0")
    if scheme in _SINGLE:
        return RedisTarget("single", url)
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"unknown scheme {scheme}://; use redis://, rediss://, unix://, "
                         f"{SENTINEL}://host:port,.../MASTER/DB or {CLUSTER}://host:port,...")
    netloc, _, path = rest.partition("/")
    if "?" in path or "?" in netloc:
        raise ValueError(f"{scheme}:// takes no query options")
    userinfo, _, hosts = netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    nodes = tuple(_host_port(h, _DEFAULT_PORTS[scheme]) for h in hosts.split(","))
    parts = [p for p in path.split("/") if p]
    if scheme == SENTINEL:
        if not 1 <= len(parts) <= 2:
            raise ValueError(f"{SENTINEL}:// needs the master's name: .../MASTER or .../MASTER/DB")
        db = _number(parts[1], "the database") if len(parts) == 2 else 0
        return RedisTarget("sentinel", url, nodes, unquote(parts[0]), db,
                           unquote(username) or None, unquote(password) or None)
    if parts not in ([], ["0"]):
        raise ValueError(f"{CLUSTER}:// has only database 0; drop the path {path!r}")
    return RedisTarget("cluster", url, nodes, None, 0,
                       unquote(username) or None, unquote(password) or None)


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, _, tail = text[1:].partition("]")
        port_text = tail.removeprefix(":")
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError(f"a host is missing in {text!r}")
    port = _number(port_text, f"the port of {text!r}") if port_text else default_port
    if not 0 < port <= 65535:
        raise ValueError(f"the port of {text!r} must be between 1 and 65535")
    return host, port


def _number(text: str, what: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{what} must be a number, not {text!r}")
    return int(text)


def sync_client(url: str, **kwargs: Any) -> redis.Redis | redis.cluster.RedisCluster:
    """A synchronous redis-py client for any of the three shapes (for tests and tools)."""
    target = parse_redis_url(url)
    if target.kind == "single":
        return redis.Redis.from_url(url, **kwargs)
    if target.kind == "sentinel":
        socket = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
        sentinel = redis.sentinel.Sentinel(list(target.nodes), sentinel_kwargs=socket)
        return sentinel.master_for(target.master, db=target.db, **target.credentials, **kwargs)
    return redis.cluster.RedisCluster(
        startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in target.nodes],
        **target.credentials, **kwargs)


__all__ = ["CLUSTER", "SENTINEL", "RedisTarget", "parse_redis_url", "sync_client"]
