"""A webhook receiver on 127.0.0.1 for the tests and the bench: a few lines of asyncio HTTP/1.1
(keep-alive included) that record what arrives and answer as the test says."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# How to answer the n-th request (from 1): a status and a delay in seconds before answering.
Answer = Callable[[int], tuple[int, float]]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when it arrived

    @property
    def event_id(self) -> str:
        return self.headers["payments-event-id"]

    @property
    def event(self) -> Any:
        return json.loads(self.body)


def signature_is_valid(secret: str, received: Received, tolerance_s: int = 300) -> bool:
    """What a receiver does (the README's ten lines): the HMAC of "<t>.<body>", compared in
    constant time, and a timestamp no older than the tolerance."""
    parts = dict(item.split("=", 1) for item in received.headers["payments-signature"].split(","))
    signed = parts["t"].encode() + b"." + received.body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - int(parts["t"])) <= tolerance_s
    return fresh and hmac.compare_digest(expected, parts["v1"])


@dataclass
class Receiver:
    answer: Answer = lambda n: (200, 0.0)
    received: list[Received] = field(default_factory=list)
    server: asyncio.Server | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    connections: set[asyncio.Task[None]] = field(default_factory=set)
    keep: bool = True  # False: count the requests, keep nothing of them (a long bench run)
    count: int = 0

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def start(self) -> Receiver:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0, backlog=1024)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for task in self.connections:  # hanging answers too
                task.cancel()
            await asyncio.gather(*self.connections, return_exceptions=True)
            await self.server.wait_closed()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {
                    name.strip().lower(): value.strip()
                    for name, _, value in (line.partition(":") for line in lines[1:] if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.count += 1
                if self.keep:
                    self.received.append(
                        Received(lines[0].split(" ")[1], headers, body, time.monotonic())
                    )
                self.arrived.set()
                status, delay_s = self.answer(self.count)
                await asyncio.sleep(delay_s)
                reply = b'{"ok":true}'
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Length: {len(reply)}\r\n"
                    "Content-Type: application/json\r\n\r\n".encode()
                    + reply
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self.connections.discard(task)

    def of_event(self, event_id: str) -> list[Received]:
        return [r for r in self.received if r.event_id == event_id]
