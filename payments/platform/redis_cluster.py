"""The request path's Redis link to a Redis Cluster (REDIS_CLUSTER=true): redis_link.py's shared,
pipelined connection, one per primary, and the slot routing a cluster client owes.

Why ours and not redis-py's cluster client: measured in `make bench-layers` against the same local
cluster, per call of this process's CPU at 32 in flight, redis-py's RedisCluster costs two to three
times what this does for a GET and the admission script, and more for the after-batch (it plans a
cluster pipeline per call). The routing is small: a slot map read with CLUSTER SLOTS (Redis 6.2
has no CLUSTER SHARDS), the key's slot by CRC16 (redis-py's `key_slot`), and the cluster's three
answers that mean "not here":

- MOVED slot host:port: the slot lives elsewhere now; the map is updated for it at once and read
  again in full behind it, and the command is sent there.
- ASK slot host:port: the slot is being migrated and this key already went: ASKING and the
  command, together, to the target, once; the map stays as it is.
- TRYAGAIN / CLUSTERDOWN: resharding or a failover is under way: a short pause, then again.

A node that refuses the connection (killed, say) has had nothing sent to it: the map is read again
from any node that answers and the call is retried, a few times within its timeout, which covers
the seconds before a replica is promoted only partly: the caller's fallback covers the rest (as
when a single Redis is down). A connection lost after sending, or a timeout, is retried only for a
batch that is safe to send twice (no script: the after-batch's HSET, PEXPIRE, DEL, and the INCR of
a cache version, for which one bump too many costs a miss); the admission script may have run, and
so its caller falls back rather than charge a limit twice.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from redis.crc import key_slot
from redis.exceptions import ConnectionError, ResponseError

from payments.platform.redis_link import Command, RedisLink, Script, run_script

log = structlog.get_logger(__name__)

SLOTS = 16384
ATTEMPTS = 4  # per call; the pauses between them stay well inside the call's timeout
PAUSE_S = 0.02
REFRESH_SPACING_S = 0.1  # at most one full reading of the map per interval, however many ask
SCRIPTS = frozenset({"EVALSHA", "EVAL"})
Address = tuple[str, int]


def command_slot(command: Command) -> int | None:
    """The slot of the command's key: the first key of a script, the first argument otherwise;
    None for a command without a key (PING)."""
    name = str(command[0]).upper()
    if name in SCRIPTS:
        return key_slot(_encoded(command[3])) if int(command[2]) > 0 else None
    if len(command) < 2:
        return None
    return key_slot(_encoded(command[1]))


def _encoded(key: Any) -> bytes:
    return key if isinstance(key, bytes) else str(key).encode()


class ClusterLink:
    """Sends each command to the primary that serves its key's slot; a batch over several
    primaries goes to each at once, and the replies come back in the batch's order."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.seed = RedisLink(url, timeout_s)
        self.timeout_s = timeout_s
        self.slots: list[Address | None] = [None] * SLOTS
        self.links: dict[Address, RedisLink] = {}
        self.refreshing = asyncio.Lock()
        self.refreshed_at = float("-inf")
        self.epoch = 0  # bumped by every reading of the map, so waiters know one happened

    async def execute(self, *commands: Command) -> list[Any]:
        replies = await self.replies(list(commands))
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    async def run_script(self, script: Script, keys: list[str], arguments: list[Any]) -> Any:
        return await run_script(self, script, keys, arguments)

    async def replies(self, commands: list[Command]) -> list[Any]:
        """Every command's reply (an error reply in its place), redirections followed."""
        if self.slots[0] is None:
            await self.refresh(force=True)
        repeatable = not any(str(command[0]).upper() in SCRIPTS for command in commands)
        replies: list[Any] = [None] * len(commands)
        pending = list(range(len(commands)))
        asking: dict[int, Address] = {}
        for attempt in range(ATTEMPTS):
            if attempt:
                await asyncio.sleep(PAUSE_S * attempt)
            pending = await self.attempt(commands, pending, asking, replies, repeatable, attempt)
            if not pending:
                break
        return replies  # after the last attempt, its errors and all

    async def attempt(
        self, commands: list[Command], pending: list[int], asking: dict[int, Address],
        replies: list[Any], repeatable: bool, attempt: int,
    ) -> list[int]:  # fmt: skip
        """One round: the pending commands to their nodes, at once; those to send again. One
        node (a request's own calls, all in its tag's slot) is awaited without a task."""
        by_node: dict[Address, list[int]] = {}
        for index in pending:
            by_node.setdefault(asking.get(index) or self.node_of(commands[index]), []).append(index)
        outcomes: list[list[Any] | BaseException]
        if len(by_node) == 1:
            [(node, indices)] = by_node.items()
            try:
                outcomes = [await self.send_to(node, commands, indices, asking)]
            except (OSError, ConnectionError) as error:  # TimeoutError is an OSError
                outcomes = [error]
        else:
            sent = [
                self.send_to(node, commands, indices, asking) for node, indices in by_node.items()
            ]
            outcomes = await asyncio.gather(*sent, return_exceptions=True)
        again: list[int] = []
        for indices, outcome in zip(by_node.values(), outcomes, strict=True):
            if isinstance(outcome, BaseException):
                await self.failed(outcome, repeatable, last=attempt == ATTEMPTS - 1)
                again += indices
                continue
            for index, reply in zip(indices, outcome, strict=True):
                replies[index] = reply
                if type(reply) is ResponseError and self.redirected(index, reply, asking):
                    again.append(index)
        return sorted(again)

    async def failed(self, error: BaseException, repeatable: bool, *, last: bool) -> None:
        """A node did not answer: read the map again; raise unless the commands may go again
        (nothing was sent, or sending them twice is harmless) and attempts are left."""
        if not isinstance(error, (OSError, ConnectionError)):
            raise error
        await self.refresh()
        refused = isinstance(error, OSError) and not isinstance(error, TimeoutError)
        if last or not (refused or repeatable):
            raise error

    async def send_to(
        self, node: Address, commands: list[Command], indices: list[int], asking: dict[int, Address]
    ) -> list[Any]:
        """The commands to one node; an ASKed command goes after its ASKING (one write, so no
        other request's command comes between them on the shared connection)."""
        if not asking:
            return await self.link(node).replies(*[commands[index] for index in indices])
        batch: list[Command] = []
        for index in indices:
            if index in asking:
                batch.append(("ASKING",))
            batch.append(commands[index])
        replies = await self.link(node).replies(*batch)
        kept: list[Any] = []
        position = 0
        for index in indices:
            position += index in asking  # skip ASKING's OK
            kept.append(replies[position])
            position += 1
        return kept

    def redirected(self, index: int, error: ResponseError, asking: dict[int, Address]) -> bool:
        """True when the command must be sent again: to where MOVED or ASK points, or after
        TRYAGAIN / CLUSTERDOWN."""
        message = str(error)
        kind = message.split(" ", 1)[0]
        asking.pop(index, None)
        if kind in ("MOVED", "ASK"):
            _, slot, where = message.split(" ")
            host, _, port = where.rpartition(":")
            address = (host or self.seed.host, int(port))
            if kind == "ASK":
                asking[index] = address
            else:
                self.slots[int(slot)] = address
                self.refresh_soon()
            return True
        return kind in ("TRYAGAIN", "CLUSTERDOWN")

    def node_of(self, command: Command) -> Address:
        slot = command_slot(command)
        address = self.slots[slot if slot is not None else 0]
        assert address is not None  # the map covers every slot once read
        return address

    def link(self, address: Address) -> RedisLink:
        link = self.links.get(address)
        if link is None:
            link = self.links[address] = self.seed.for_node(*address)
        return link

    def refresh_soon(self) -> None:
        if time.monotonic() - self.refreshed_at >= REFRESH_SPACING_S:
            task = asyncio.get_running_loop().create_task(self.refresh())
            task.add_done_callback(lambda done: done.cancelled() or done.exception())

    async def refresh(self, *, force: bool = False) -> None:
        """Read the slot map again from the first node that answers (the known ones, then the
        seed). Calls that pile up wait for one reading rather than each make their own."""
        epoch = self.epoch
        async with self.refreshing:
            if self.epoch != epoch:
                return  # read while this one waited
            if not force and time.monotonic() - self.refreshed_at < REFRESH_SPACING_S:
                return
            self.refreshed_at = time.monotonic()
            for link in [*self.links.values(), self.seed]:
                try:
                    [layout] = await link.execute(("CLUSTER", "SLOTS"))
                except (OSError, ConnectionError, TimeoutError, ResponseError):
                    continue
                self.apply(layout, link.host)
                self.epoch += 1
                return
            log.warning("redis_cluster_map_unread")
            if force:
                raise ConnectionError("no node of the Redis cluster answered")

    def apply(self, layout: list[Any], asked_host: str) -> None:
        slots: list[Address | None] = [None] * SLOTS
        for start, end, primary, *_ in layout:
            host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
            address = (host or asked_host, int(primary[1]))
            slots[int(start) : int(end) + 1] = [address] * (int(end) - int(start) + 1)
        first = next((address for address in slots if address is not None), None)
        if first is None:
            return  # a node that serves nothing yet: keep what we had
        self.slots = [address or first for address in slots]  # an unserved slot: CLUSTERDOWN
        serving = set(self.slots)
        for address in [address for address in self.links if address not in serving]:
            self.links.pop(address).close()

    def close(self) -> None:
        for link in self.links.values():
            link.close()
        self.links.clear()
        self.seed.close()
