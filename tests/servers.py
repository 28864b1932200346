"""Redis Sentinel, Redis Cluster and PgBouncer, started by a test on loopback ports.

Every server is Debian's binary (``redis-server``, ``redis-cli``, ``pgbouncer``), runs under a
directory of the test's own, is waited for within a deadline and is stopped by its process
id only. A test that needs a binary the machine lacks is skipped, saying which package
brings it (``.ci/run`` installs them).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest
import redis
from redis.cluster import key_slot

from flashflow.embedded import cluster_port, free_port
from flashflow.processes import stop_process

MASTER = "ffmaster"

T = TypeVar("T")


def binary(name: str, package: str) -> str:
    """The path of ``name``, or skip the test naming the Debian package that brings it."""
    found = shutil.which(name) or next(
        (p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}") if os.access(p, os.X_OK)), None)
    if found is None:
        pytest.skip(f"{name} is not installed (Debian's {package} package; .ci/run installs it)")
    return found


def wait_for(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``check`` until it returns something true; fail naming ``what`` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        with suppress(redis.RedisError, OSError):
            value = check()
            if value:
                return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout_s}s")
        time.sleep(0.05)


@dataclass
class RedisProcess:
    """One ``redis-server`` (a data node or a Sentinel) on 127.0.0.1."""

    port: int
    process: subprocess.Popen
    log_path: Path

    def client(self, **kwargs: Any) -> redis.Redis:
        """A synchronous client on this server alone."""
        return redis.Redis(port=self.port, socket_timeout=2, decode_responses=True, **kwargs)

    def kill(self) -> None:
        """SIGKILL the server by its pid (nothing is kept on disk)."""
        with suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def pause(self) -> None:
        """SIGSTOP the server by its pid: it reads, answers and replicates nothing."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT the server by its pid (a no-op once it has exited)."""
        if self.process.poll() is None:
            with suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL, by pid (a paused server is resumed first, to hear SIGTERM)."""
        self.resume()
        if self.process.poll() is None:
            stop_process(self.process, signal.SIGTERM, 5)


def start_redis_process(directory: Path, *args: str, config: str | None = None,
                        sentinel: bool = False, cluster: bool = False) -> RedisProcess:
    """Start ``redis-server`` on a free port with ``args``; wait until it answers PING."""
    server = binary("redis-server", "redis-server")
    port = cluster_port() if cluster else free_port()
    directory = directory / str(port)
    directory.mkdir(parents=True)
    command = [server]
    if config is not None:
        conf = directory / "redis.conf"
        conf.write_text(config)
        command.append(str(conf))
    command += ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
    if sentinel:
        command.append("--sentinel")
    else:
        command += ["--save", "", "--appendonly", "no"]
    log_path = directory / "redis.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([*command, *args], stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    node = RedisProcess(port, process, log_path)
    try:
        wait_for(lambda: node.client().ping(), 10, f"redis-server on port {port}")
    except BaseException:
        node.stop()
        raise
    return node


@dataclass(frozen=True)
class Lag(Generic[T]):
    """A replica left behind by :func:`leave_replica_behind`, as read from each process."""

    #: The master's ``master_repl_offset`` just before it was killed.
    master_offset: int
    #: The replica's offset once it had applied all it was sent, before any promotion.
    replica_offset: int
    #: What ``read`` found on the master once ``lag`` writes were past the cut.
    on_master: T
    #: What ``read`` found on the replica, before any promotion.
    on_replica: T
    #: How long the replica was stopped.
    seconds_stopped: float
    #: ``time.monotonic()`` of the master's SIGKILL.
    killed_at: float


def leave_replica_behind(master: RedisProcess, replica: RedisProcess,
                         read: Callable[[redis.Redis], T], writes: Callable[[T], int], *,
                         lag: int, kill: Callable[[], None] | None = None,
                         timeout_s: float = 20.0) -> Lag[T]:
    """Make ``replica`` miss the master's last ``lag`` writes, then kill the master.

    A replica SIGSTOPped alone does not lag on loopback (the kernel buffers the stream for
    it), so its link is also cut (``CLIENT KILL TYPE replica``) while it is stopped: it
    gets what was sent until then and nothing after. The master goes on acknowledging
    writes until ``writes(read(master))`` has grown by ``lag`` since the cut (``read``
    should read in one step, a script, so each reading is consistent), and is SIGKILLed (by
    ``kill``, default :meth:`RedisProcess.kill`) while the replica is still stopped, so the
    replica can never resync. The replica is then resumed; once it has applied what the
    kernel kept for it (its link reads down), it is read, before anyone can promote it.

    Raises:
        AssertionError: the writes did not grow in ``timeout_s``, or the replica was no
            longer a replica when it was read.
    """
    on_master_client = master.client()
    on_replica_client = replica.client(single_connection_client=True)
    try:
        replica.pause()
        stopped_at = time.monotonic()
        try:
            on_master_client.client_kill_filter(_type="replica")
            at_cut = writes(read(on_master_client))

            def grown() -> T | None:
                now = read(on_master_client)
                return now if writes(now) >= at_cut + lag else None

            on_master = wait_for(grown, timeout_s, f"{lag} writes acknowledged by the master "
                                                   "after the replica's link was cut")
            master_offset = on_master_client.info("replication")["master_repl_offset"]
            (kill or master.kill)()
            killed_at = time.monotonic()
        finally:
            replica.resume()
        seconds_stopped = time.monotonic() - stopped_at
        wait_for(lambda: on_replica_client.info("replication")["master_link_status"] == "down",
                 10, "the replica has applied what it was sent and lost its master")
        with suppress(redis.ResponseError):  # a cluster's replica serves reads once READONLY
            on_replica_client.execute_command("READONLY")
        on_replica = read(on_replica_client)
        state = on_replica_client.info("replication")
        assert state["role"] == "slave", f"read after the promotion: {state}"
        return Lag(master_offset, state["master_repl_offset"], on_master, on_replica,
                   seconds_stopped, killed_at)
    finally:
        on_master_client.close()
        on_replica_client.close()


@dataclass
class SentinelSet:
    """A master, its replica and the Sentinels that watch them."""

    master: RedisProcess
    replica: RedisProcess
    sentinels: list[RedisProcess]

    @property
    def url(self) -> str:
        """``FLASHFLOW_REDIS_URL`` for this set."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER}/0"

    def master_port(self) -> int:
        """The port the first Sentinel names as the master now."""
        _, port = self.sentinels[0].client().sentinel_get_master_addr_by_name(MASTER)
        return int(port)


@contextmanager
def sentinel_set(directory: Path, *, sentinels: int = 1,
                 down_after_ms: int = 1000) -> Iterator[SentinelSet]:
    """Start a master, a replica in sync with it, and ``sentinels`` Sentinels that know both."""
    with ExitStack() as stack:
        master = start_redis_process(directory)
        stack.callback(master.stop)
        replica = start_redis_process(directory, "--replicaof", "127.0.0.1", str(master.port))
        stack.callback(replica.stop)
        wait_for(lambda: replica.client().info("replication").get("master_link_status") == "up",
                 15, "replica in sync")
        quorum = sentinels // 2 + 1
        config = (f"sentinel monitor {MASTER} 127.0.0.1 {master.port} {quorum}\n"
                  f"sentinel down-after-milliseconds {MASTER} {down_after_ms}\n"
                  f"sentinel failover-timeout {MASTER} 10000\n"
                  f"sentinel parallel-syncs {MASTER} 1\n")
        watchers = []
        for _ in range(sentinels):
            watcher = start_redis_process(directory, config=config, sentinel=True)
            stack.callback(watcher.stop)
            watchers.append(watcher)
        for watcher in watchers:
            wait_for(lambda w=watcher: w.client().sentinel_slaves(MASTER), 20,
                     "a Sentinel knows the replica")
            wait_for(lambda w=watcher: len(w.client().sentinel_sentinels(MASTER))
                     >= sentinels - 1, 20, "the Sentinels know each other")
        yield SentinelSet(master, replica, watchers)


@dataclass
class Cluster:
    """A Redis Cluster of masters, each with ``replicas`` replicas."""

    nodes: list[RedisProcess]
    masters: int
    killed: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        """``FLASHFLOW_REDIS_URL`` for this cluster (every node listed)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def live(self) -> list[RedisProcess]:
        """The nodes not killed by the test."""
        return [n for n in self.nodes if n.port not in self.killed]

    def owner(self, key: str) -> RedisProcess:
        """The master node that serves ``key``'s slot now."""
        slot = key_slot(key.encode())
        for start, end, master, *_ in self.live()[0].client().execute_command("CLUSTER SLOTS"):
            if start <= slot <= end:
                return next(n for n in self.nodes if n.port == int(master[1]))
        raise AssertionError(f"no node serves slot {slot}")

    def replica_of(self, master: RedisProcess) -> RedisProcess:
        """The live node that replicates ``master``."""
        for node in self.live():
            with node.client() as client:
                if client.info("replication").get("master_port") == master.port:
                    return node
        raise AssertionError(f"no node replicates port {master.port}")

    def kill(self, node: RedisProcess) -> None:
        """SIGKILL one node by its pid."""
        self.killed.add(node.port)
        node.kill()

    def wait_healthy(self, timeout_s: float = 30) -> None:
        """Wait until every live node says the cluster is ok and every slot has a master."""
        def ok() -> bool:
            return all(n.client().cluster("INFO")["cluster_state"] == "ok" for n in self.live())
        wait_for(ok, timeout_s, "cluster_state:ok on every node")


@contextmanager
def redis_cluster(directory: Path, *, masters: int = 3, replicas: int = 1,
                  node_timeout_ms: int = 2000) -> Iterator[Cluster]:
    """Start ``masters * (1 + replicas)`` cluster nodes and join them with ``redis-cli``."""
    cli = binary("redis-cli", "redis-tools")
    with ExitStack() as stack:
        nodes = []
        for _ in range(masters * (1 + replicas)):
            node = start_redis_process(
                directory, "--cluster-enabled", "yes", "--cluster-node-timeout",
                str(node_timeout_ms), "--cluster-config-file", "nodes.conf", cluster=True)
            stack.callback(node.stop)
            nodes.append(node)
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes),
             "--cluster-replicas", str(replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60)
        cluster = Cluster(nodes, masters)
        cluster.wait_healthy()
        if replicas:
            def in_sync() -> bool:
                states = [n.client().info("replication") for n in nodes]
                return all(s.get("master_link_status") == "up"
                           for s in states if s["role"] == "slave")
            wait_for(in_sync, 30, "every replica in sync")
        yield cluster


@dataclass
class PgBouncer:
    """A PgBouncer in transaction pooling mode in front of one PostgreSQL."""

    port: int
    process: subprocess.Popen
    log_path: Path

    def url(self, database_url: str) -> str:
        """``database_url`` (user and database kept) pointed at this PgBouncer."""
        scheme, rest = database_url.split("://", 1)
        userinfo, _, tail = rest.rpartition("@")
        path = tail.partition("/")[2]
        return f"{scheme}://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}/{path}"


@contextmanager
def pgbouncer(directory: Path, database_url: str, *, pool_size: int = 2) -> Iterator[PgBouncer]:
    """Start PgBouncer (``pool_mode = transaction``) for every database of ``database_url``'s
    server, logging in as its user; at most ``pool_size`` server connections per database."""
    program = binary("pgbouncer", "pgbouncer")
    rest = database_url.split("://", 1)[1]
    userinfo, _, tail = rest.rpartition("@")
    user = userinfo.partition(":")[0] or "postgres"
    hostport = tail.partition("/")[0]
    host, _, port = hostport.partition(":")
    listen = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / "pgbouncer.log"
    ini = directory / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"* = host={host or '127.0.0.1'} port={port or 5432} user={user}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {listen}\n"
        f"unix_socket_dir =\nauth_type = any\npool_mode = transaction\n"
        f"default_pool_size = {pool_size}\nmax_client_conn = 500\n"
        f"logfile = {log_path}\npidfile = {directory / 'pgbouncer.pid'}\n"
        # PgBouncer will not run as root; as root it switches to this user.
        + ("user = postgres\n" if os.geteuid() == 0 else ""))
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres")
        for path in (ini,):
            shutil.chown(path, "postgres")
    process = subprocess.Popen([program, str(ini)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT, start_new_session=True)
    bouncer = PgBouncer(listen, process, log_path)
    try:
        def listening() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"pgbouncer exited: {_tail(log_path)}")
            with socket.create_connection(("127.0.0.1", listen), timeout=1):
                return True
        wait_for(listening, 10, "pgbouncer listening")
        yield bouncer
    finally:
        if process.poll() is None:
            stop_process(process, signal.SIGTERM, 5)


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"
