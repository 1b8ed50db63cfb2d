"""Access tokens (JWT, HS256, through python-jose), refresh tokens, and argon2id password hashing."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import TypeVar

from jose import JWTError, jwt

from payments.http.errors import INVALID_TOKEN, ApiError
from payments.settings import Settings

ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105 (a media type, not a secret): RFC 9068: a refresh token or an ID token is never taken for one
JWT_ALGORITHM = "HS256"
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, from a verified access token or an API key (api_key_cache.py)."""

    user_id: int
    role: str
    token_id: str  # jti
    family_id: str  # sid: the login session; revoking it refuses every token issued in it
    expires_at: int  # exp, seconds since the epoch (an API key's: when it is looked up again)
    api_key_id: int | None = None  # set when the caller presented an API key, not a token

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True, slots=True)
class IssuedAccessToken:
    token: str
    expires_in_s: int


VERIFIED_TOKENS_MAX = 10_000  # about 1 KiB each


class AccessTokens:
    """Issue and verify access tokens. Keys are chosen by `kid`; the algorithm is never the token's."""

    def __init__(self, settings: Settings) -> None:
        self.keys = {settings.jwt_key_id: settings.jwt_secret.get_secret_value()}
        self.current_key_id = settings.jwt_key_id
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.leeway_s = settings.jwt_leeway_s
        self.ttl_s = settings.access_token_ttl_s
        # Tokens this process has verified, and their principals: a signature is checked once per
        # token, not once per request (about 50 µs each). Only `exp` can turn a verified token
        # invalid, and it is checked on every hit; revocation is Redis's to answer (admission.py).
        self.verified: dict[str, Principal] = {}

    def issue(self, *, user_id: int, role: str, family_id: str) -> IssuedAccessToken:
        now = int(time.time())
        claims = {
            "iss": self.issuer, "aud": self.audience, "sub": str(user_id), "role": role,
            "sid": family_id, "jti": uuid.uuid4().hex, "iat": now, "exp": now + self.ttl_s,
        }  # fmt: skip
        token = jwt.encode(
            claims, self.keys[self.current_key_id], algorithm=JWT_ALGORITHM,
            headers={"kid": self.current_key_id, "typ": ACCESS_TOKEN_TYPE},
        )  # fmt: skip
        return IssuedAccessToken(token=token, expires_in_s=self.ttl_s)

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; 401 invalid_token for anything else."""
        principal = self.verified.get(token)
        if principal is not None and time.time() <= principal.expires_at + self.leeway_s:
            return principal
        principal = self.verify_signature(token)
        if len(self.verified) >= VERIFIED_TOKENS_MAX:
            self.verified.clear()  # the next requests verify again; memory stays bounded
        self.verified[token] = principal
        return principal

    def verify_signature(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            key = self.keys.get(header.get("kid", ""))
            if key is None or header.get("typ") != ACCESS_TOKEN_TYPE:
                raise JWTError("unknown key or token type")
            claims = jwt.decode(
                token, key, algorithms=[JWT_ALGORITHM], audience=self.audience,
                issuer=self.issuer,
                options={
                    "require_exp": True, "require_iat": True, "require_sub": True,
                    "require_jti": True, "require_aud": True, "require_iss": True,
                    "leeway": self.leeway_s,
                },
            )  # fmt: skip
            return Principal(
                user_id=int(claims["sub"]), role=str(claims.get("role", "user")),
                token_id=str(claims["jti"]), family_id=str(claims["sid"]),
                expires_at=int(claims["exp"]),
            )  # fmt: skip
        except (JWTError, KeyError, ValueError, TypeError):
            raise ApiError(INVALID_TOKEN, "the access token is missing, expired or invalid",
                           headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None  # fmt: skip


def new_refresh_token() -> tuple[str, bytes]:
    """An opaque refresh token and the SHA-256 we store in its place."""
    token = secrets.token_urlsafe(32)
    return token, refresh_token_hash(token)


def refresh_token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
