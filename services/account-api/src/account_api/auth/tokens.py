"""Access tokens (short-lived HS256 JWTs naming their sign-in session) and refresh tokens
(opaque: the session id and a random secret; only the secret's hash is stored).

Verified access tokens are cached per worker until they expire; every use is also checked
against the worker's `RevocationList`, so a revoked session stops working within one poll
interval on every worker without a database round trip per request."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

import jwt

from account_api.errors import NotAuthenticated


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: int
    session_id: uuid.UUID
    issued_at: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class RefreshToken:
    """A refresh token as the client holds it, and what the database keeps of it."""

    session_id: uuid.UUID
    secret: str

    @property
    def value(self) -> str:
        raw = self.session_id.bytes + base64.urlsafe_b64decode(self.secret + "==")
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @property
    def hash(self) -> bytes:
        return refresh_hash(self.secret)

    @classmethod
    def new(cls, session_id: uuid.UUID) -> RefreshToken:
        return cls(session_id, secrets.token_urlsafe(32))

    @classmethod
    def parse(cls, value: str) -> RefreshToken:
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        except ValueError:
            raise NotAuthenticated("invalid refresh token") from None
        if len(raw) != 16 + 32:
            raise NotAuthenticated("invalid refresh token")
        secret = base64.urlsafe_b64encode(raw[16:]).decode().rstrip("=")
        return cls(uuid.UUID(bytes=raw[:16]), secret)


def refresh_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


class Revocations(Protocol):
    def revoked(self, claims: AccessClaims) -> bool: ...


class _NothingRevoked:
    def revoked(self, claims: AccessClaims) -> bool:
        return False


class TokenIssuer:
    """Issues and verifies access tokens; verified ones are cached until they expire."""

    def __init__(
        self,
        secret: str,
        access_minutes: int,
        refresh_days: int,
        cache_size: int = 10_000,
        revocations: Revocations | None = None,
    ) -> None:
        self._secret = secret
        self.access_s = access_minutes * 60
        self.refresh_s = refresh_days * 86400
        self._cache: OrderedDict[str, AccessClaims] = OrderedDict()
        self._cache_size = cache_size
        self.revocations: Revocations = revocations or _NothingRevoked()

    def access_token(self, user_id: int, session_id: uuid.UUID) -> str:
        now = int(time.time())
        return jwt.encode(
            {
                "sub": str(user_id),
                "sid": str(session_id),
                "typ": "access",
                "iat": now,
                "exp": now + self.access_s,
                "jti": uuid.uuid4().hex,
            },
            self._secret,
            algorithm="HS256",
        )

    def pair(self, user_id: int, refresh: RefreshToken) -> TokenPair:
        return TokenPair(
            self.access_token(user_id, refresh.session_id), refresh.value, self.access_s
        )

    def verify(self, token: str) -> AccessClaims:
        """The claims of a valid, unrevoked access token, else NotAuthenticated."""
        claims = self._cache.get(token)
        if claims is None or claims.expires_at <= time.time():
            claims = self._decode(token)
            self._cache[token] = claims
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        if self.revocations.revoked(claims):
            raise NotAuthenticated("this session has been signed out")
        return claims

    def _decode(self, token: str) -> AccessClaims:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                options={"require": ["exp", "iat", "sub", "sid", "typ"]},
            )
        except jwt.PyJWTError:
            raise NotAuthenticated("invalid or expired token") from None
        if claims.get("typ") != "access":
            raise NotAuthenticated("not an access token")
        try:
            return AccessClaims(
                user_id=int(claims["sub"]),
                session_id=uuid.UUID(str(claims["sid"])),
                issued_at=int(claims["iat"]),
                expires_at=float(claims["exp"]),
            )
        except (TypeError, ValueError):
            raise NotAuthenticated("invalid token subject") from None
