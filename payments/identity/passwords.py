"""Passwords: argon2id hashing off the event loop, in a small pool of its own."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from payments.http.errors import UNAVAILABLE, ApiError
from payments.settings import Settings

R = TypeVar("R")


def lower_priority(niceness: int) -> None:
    """Lower the calling thread's CPU priority. Argon2 is tens of milliseconds of CPU a login: at
    normal priority a burst of logins takes whole cores from the requests in flight beside it,
    at a lower one it takes what they leave. Linux gives each thread its own niceness."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not permitted
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)


class Passwords:
    """Argon2id off the event loop, in a small pool of its own with a bounded queue: a login flood
    waits (19 MiB a hash in flight), then gets 503, and never stalls the other requests."""

    def __init__(self, settings: Settings) -> None:
        self.hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost, memory_cost=settings.argon2_memory_cost_kib,
            parallelism=settings.argon2_parallelism,
        )  # fmt: skip
        self.executor = ThreadPoolExecutor(
            max_workers=settings.password_hash_threads, thread_name_prefix="argon2",
            initializer=lower_priority, initargs=(settings.password_hash_nice,),
        )  # fmt: skip
        self.slots = asyncio.Semaphore(settings.password_hash_queue_max)
        self.per_client_max = settings.password_hash_per_client_max
        self.held: dict[str, int] = {}  # places in the queue, by client address
        # Unknown emails are verified against this, so they cost what a wrong password costs.
        self.dummy_hash = self.hasher.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str, *, client: str = "local") -> str:
        return await self._in_pool(client, self.hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str, *, client: str) -> bool:
        """True when the password matches; an unknown user (None) costs the same and is False."""

        def check() -> bool:
            try:
                return bool(self.hasher.verify(password_hash or self.dummy_hash, password))
            except (VerificationError, InvalidHashError):
                return False

        matched = await self._in_pool(client, check)
        return matched and password_hash is not None

    def needs_rehash(self, password_hash: str) -> bool:
        return bool(self.hasher.check_needs_rehash(password_hash))

    async def _in_pool(self, client: str, function: Callable[..., R], *arguments: str) -> R:
        """Run in the pool, or 503 when the queue is full or this client holds its share of it."""
        if self.slots.locked() or self.held.get(client, 0) >= self.per_client_max:
            raise ApiError(UNAVAILABLE, "too many sign-ins at once, try again",
                           headers={"Retry-After": "1"})  # fmt: skip
        self.held[client] = self.held.get(client, 0) + 1
        try:
            async with self.slots:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self.executor, function, *arguments)
        finally:
            self.held[client] -= 1
            if not self.held[client]:
                del self.held[client]

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
