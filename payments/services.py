"""What the handlers and middleware share for the life of a process: settings, pools, codecs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg
from redis.asyncio import Redis
from starlette.requests import Request

from payments.identity.api_key_cache import ApiKeyCache
from payments.identity.passwords import Passwords
from payments.identity.tokens import AccessTokens
from payments.platform.redis_link import RedisLink
from payments.settings import Settings

if TYPE_CHECKING:  # the HTTP layers import this module
    from payments.admin.audit import AuditLog
    from payments.http.admission import Admitter


@dataclass
class Services:
    """Filled in by the app's lifespan; handlers reach it through `services(request)`."""

    settings: Settings
    tokens: AccessTokens
    passwords: Passwords
    pool: asyncpg.Pool = field(init=False)
    redis: Redis = field(init=False)
    redis_link: RedisLink = field(init=False)  # the request path's two round trips
    admitter: Admitter = field(init=False)
    cursor_key: bytes = field(init=False)  # signs page cursors (service_key in the database)
    # The payments queue as last sampled (platform/housekeeping.py), for /ready.
    payment_queue: dict[str, Any] = field(default_factory=dict)
    api_keys: ApiKeyCache = field(init=False)  # the owners of the API keys this process has seen
    audit: AuditLog = field(init=False)  # the buffered writer of security events (admin/audit.py)

    def __post_init__(self) -> None:
        self.api_keys = ApiKeyCache(self.settings)


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found
