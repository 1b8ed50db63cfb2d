"""A load generator's HTTP/1.1 client: one keep-alive connection, a request as prepared bytes,
the answer's status, head and body. Kept this small so that the clients, which share the machine's
cores with the service, cost as little of them as they can."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any


def request(method: str, path: str, headers: dict[str, str], body: Any = None) -> bytes:
    """The bytes of one request; `body`, when given, is sent as JSON."""
    payload = b"" if body is None else json.dumps(body).encode()
    lines = [f"{method} {path} HTTP/1.1", "Host: bench"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, raw: bytes) -> tuple[int, bytes, bytes]:
        """(status, head in lower case, body) of the answer to `raw`."""
        self.writer.write(raw)
        head = (await self.reader.readuntil(b"\r\n\r\n")).lower()
        start = head.find(b"\r\ncontent-length:")
        if start < 0:
            raise ValueError("an answer without Content-Length")
        end = head.index(b"\r\n", start + 2)
        body = await self.reader.readexactly(int(head[start + 17 : end]))
        return int(head[9:12]), head, body

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
