"""A private redis-server for tests: own port, own directory, never the machine's shared one."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too: ephemeral ports are too high for that."""
    while True:
        port = random.randint(20000, 50000)
        with socket.socket() as s, socket.socket() as bus:
            try:
                s.bind(("127.0.0.1", port))
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class RedisServer:
    """Start, stop and restart one redis-server process (AOF optional)."""

    def __init__(self, *extra_args: str, appendonly: bool = False, port: int | None = None, choose_port=free_port):
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
        # A port chosen here may be taken before redis-server binds it (tests run in parallel
        # workers): start() then picks another, unless the caller named this one.
        self._choose_port = None if port else choose_port
        self.port = port or choose_port()
        self.dir = Path(tempfile.mkdtemp(prefix="gc-redis-"))
        self.extra_args = [
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if appendonly else "no",
            "--appendfsync", "always",
            *extra_args,
        ]  # fmt: skip
        self.process: subprocess.Popen | None = None

    @property
    def args(self) -> list[str]:
        return ["redis-server", "--port", str(self.port), *self.extra_args]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        may_move = self._choose_port is not None and self.process is None  # a restart keeps its port
        for _ in range(5):
            self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self._answers_as_ours():
                return self
            self.stop(kill=True)
            if not may_move:
                break
            self.port = self._choose_port()
        raise RuntimeError(f"redis-server could not start on port {self.port} (taken?)")

    def _answers_as_ours(self) -> bool:
        """Wait until this process answers on the port; False if it exited (the port was taken by
        another process, perhaps another test worker's server, which must never be mistaken for it)."""
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=2)
        deadline = time.monotonic() + 10
        try:
            while self.process.poll() is None:
                try:
                    return int(client.info("server")["process_id"]) == self.process.pid
                except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError):
                    if time.monotonic() > deadline:
                        return False  # start() stops it, and may try another port
                    time.sleep(0.02)
                except (redis.ResponseError, redis.exceptions.InvalidResponse):
                    return False  # something that is not this redis-server answers there
            return False
        finally:
            client.close()

    def stop(self, kill: bool = False) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill() if kill else self.process.terminate()
            self.process.wait(10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class LocalCluster:
    """A Redis Cluster of redis-server processes on free loopback ports.

    `primaries` primaries share the 16384 slots (redis-cli --cluster create);
    with `replicas` > 0 each primary gets that many replicas, and a short
    cluster-node-timeout makes a failover take about a second.
    """

    def __init__(self, primaries: int = 3, replicas: int = 0, node_timeout_ms: int = 1000):
        if shutil.which("redis-cli") is None:
            raise RuntimeError("redis-cli is not on PATH (apt-get install redis-tools)")
        self.replicas = replicas
        options = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        options += ["--cluster-node-timeout", str(node_timeout_ms)]
        self.nodes = [RedisServer(*options, choose_port=free_cluster_port) for _ in range(primaries * (1 + replicas))]

    @property
    def url(self) -> str:
        """A startup node for RedisCluster.from_url (any live node would do)."""
        return next(n for n in self.nodes if n.process and n.process.poll() is None).url

    def start(self) -> LocalCluster:
        try:
            for node in self.nodes:
                node.start()
            subprocess.run(
                ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60,
            )  # fmt: skip
            self.wait_until_ok()
        except BaseException:
            self.close()  # no node outlives a cluster that did not form
            raise
        return self

    def wait_until_ok(self, timeout: float = 30) -> float:
        """Wait until every live node reports cluster_state:ok with all slots served. Returns seconds waited."""
        started = time.monotonic()
        while True:
            states = []
            for node in self.nodes:
                if node.process and node.process.poll() is None:
                    client = redis.Redis(port=node.port, socket_timeout=1, decode_responses=True)
                    try:
                        info = client.cluster("info")
                        states.append(info["cluster_state"] == "ok" and int(info["cluster_slots_ok"]) == 16384)
                    except redis.RedisError:
                        states.append(False)
                    finally:
                        client.close()
            if all(states):
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"cluster not ok after {timeout} s: {states}")
            time.sleep(0.05)

    def node_named(self, name: str) -> RedisServer:
        """The process behind a redis-py node name ("127.0.0.1:<port>")."""
        return next(n for n in self.nodes if f"127.0.0.1:{n.port}" == name)

    def replication(self, node: RedisServer) -> dict:
        client = redis.Redis(port=node.port, socket_timeout=1, decode_responses=True)
        try:
            return client.info("replication")
        finally:
            client.close()

    def replica_of(self, primary: RedisServer) -> RedisServer:
        info = self.replication(primary)
        port = info["slave0"]["port"]  # redis-py parses "ip=...,port=...,state=online,..."
        return next(n for n in self.nodes if n.port == int(port))

    def wait_for_replicas(self, timeout: float = 30) -> None:
        """Wait until every replica's link to its primary is up (so a failover has someone to promote)."""
        deadline = time.monotonic() + timeout
        while True:
            replicas = [i for i in map(self.replication, self.nodes) if i["role"] == "slave"]
            expected = len(self.nodes) // (1 + self.replicas) * self.replicas
            if len(replicas) == expected and all(i.get("master_link_status") == "up" for i in replicas):
                return
            if time.monotonic() > deadline:
                raise TimeoutError("replicas not in sync")
            time.sleep(0.05)

    def close(self) -> None:
        for node in self.nodes:
            node.close()
