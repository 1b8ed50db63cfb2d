"""The request path's Redis connection: one per process, shared by every request in flight.

Each request makes at most two Redis round trips (admission.py): the admission script, and the
writes queued while the handler ran. Through redis-py each costs a connection taken from and
given back to its pool, a retry wrapper, a timeout per reply and a reply callback: 96 µs of CPU
for the admission script and 139 µs for a transfer's six writes, measured here, against 48 and
66 µs this way. That was a third of the service's CPU per transfer, so the two calls go through
this instead; redis-py serves everything else (sessions, health, the denylist's restoration).

Redis answers a connection's commands in the order they came, so requests share the connection
without waiting for each other: each writes its commands when it has them and awaits its own
replies, matched in order by hiredis's parser. A request that times out breaks the connection,
failing the others waiting on it (they would have waited as long); the next one reconnects. A
Redis that restarted has forgotten its scripts: NOSCRIPT is answered by sending the script.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from typing import Any, Protocol, cast

import hiredis
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.exceptions import ConnectionError, RedisClusterException, RedisError, ResponseError

from payments.platform.settings import PlatformSettings

Command = tuple[Any, ...]
# What a Redis call may fail with, through this link or redis-py: every caller falls back on it.
# RedisClusterException is no RedisError: the cluster client raises it when no node answers.
REDIS_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)
# redis-py's client, for one node or a cluster: what services.redis holds.
AnyRedis = Redis | RedisCluster


class Script:
    """A Lua script, and the SHA-1 that Redis knows it by."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()  # noqa: S324 (Redis's script id)


class Link(Protocol):
    """What the request path asks of Redis: one node's link, or a cluster's (redis_cluster.py)."""

    async def execute(self, *commands: Command) -> list[Any]: ...

    async def run_script(self, script: Script, keys: list[str], arguments: list[Any]) -> Any: ...

    def close(self) -> None: ...


async def run_script(link: Link, script: Script, keys: list[str], arguments: list[Any]) -> Any:
    """EVALSHA, or EVAL when Redis does not have the script (it restarted, say)."""
    try:
        [reply] = await link.execute(("EVALSHA", script.sha, len(keys), *keys, *arguments))
    except ResponseError as error:
        if not str(error).startswith("NOSCRIPT"):
            raise
        [reply] = await link.execute(("EVAL", script.text, len(keys), *keys, *arguments))
    return reply


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass it

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if not self.waiting:  # a reply nobody asked for: the stream cannot be trusted
                self.break_off()
                return
            future = self.waiting.popleft()
            if not future.done():
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(ConnectionError("the Redis connection was lost"))

    def send(self, commands: list[Command]) -> list[asyncio.Future[Any]]:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        self.transport.write(b"".join(hiredis.pack_command(command) for command in commands))
        self.waiting.extend(futures)
        return futures

    def break_off(self) -> None:
        self.lost = True  # at once: the next call must not pick this connection up
        if self.transport is not None:
            self.transport.abort()  # connection_lost fails whatever is still waiting


class RedisLink:
    def __init__(self, url: str, timeout_s: float) -> None:
        options = parse_url(url)
        self.timeout_s = timeout_s
        self.path: str | None = options.get("path")
        self.host: str = options.get("host", "localhost")
        self.port: int = int(options.get("port", 6379))
        secure = options.get("connection_class") is SSLConnection
        self.ssl = ssl.create_default_context() if secure else None
        self.handshake: list[Command] = []  # sent first on every new connection
        if options.get("password"):
            user = (options["username"],) if options.get("username") else ()
            self.handshake.append(("AUTH", *user, options["password"]))
        if int(options.get("db", 0)):
            self.handshake.append(("SELECT", int(options["db"])))
        self.protocol: _Protocol | None = None
        self.connecting = asyncio.Lock()

    async def execute(self, *commands: Command) -> list[Any]:
        """The replies to the commands, sent together, in order. An error reply raises
        ResponseError; Redis gone, ConnectionError; no answer within the timeout, TimeoutError."""
        replies = await self.replies(*commands)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    async def replies(self, *commands: Command) -> list[Any]:
        """As execute, but an error reply comes back in its place instead of raising (a cluster
        client reads each one: MOVED, ASK). Refused before anything was sent: OSError; the
        connection lost after: ConnectionError; no answer in time: TimeoutError."""
        protocol: _Protocol | None = None
        try:
            async with asyncio.timeout(self.timeout_s):
                protocol = await self.connected()
                return [await future for future in protocol.send(list(commands))]
        except TimeoutError:
            if protocol is not None:
                protocol.break_off()
            raise

    async def run_script(self, script: Script, keys: list[str], arguments: list[Any]) -> Any:
        return await run_script(self, script, keys, arguments)

    def for_node(self, host: str, port: int) -> RedisLink:
        """A link to another node of the same cluster: the same credentials and TLS, db 0."""
        link = RedisLink.__new__(RedisLink)
        link.timeout_s, link.path, link.host, link.port, link.ssl = (
            self.timeout_s, None, host, port, self.ssl
        )  # fmt: skip
        link.handshake = [command for command in self.handshake if command[0] != "SELECT"]
        link.protocol = None
        link.connecting = asyncio.Lock()
        return link

    async def connected(self) -> _Protocol:
        if self.protocol is not None and not self.protocol.lost:
            return self.protocol
        async with self.connecting:
            if self.protocol is None or self.protocol.lost:
                self.protocol = await self.connect()
        return self.protocol

    async def connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        if self.path is not None:
            _, protocol = await loop.create_unix_connection(_Protocol, self.path)
        else:
            _, protocol = await loop.create_connection(
                _Protocol, self.host, self.port, ssl=self.ssl
            )
        try:
            for reply in [await future for future in protocol.send(self.handshake)]:
                if isinstance(reply, ResponseError):
                    raise reply
        except BaseException:  # refused, or timed out: this connection is not ours to keep
            protocol.break_off()
            raise
        return protocol

    def close(self) -> None:
        if self.protocol is not None:
            self.protocol.break_off()
            self.protocol = None


def connect_link(settings: PlatformSettings) -> Link:
    """The request path's link: to the one Redis, or to the primaries of a Redis Cluster."""
    from payments.platform.redis_cluster import ClusterLink

    assert settings.redis_url is not None
    if settings.redis_cluster:
        return ClusterLink(settings.redis_url, settings.redis_timeout_s)
    return RedisLink(settings.redis_url, settings.redis_timeout_s)
