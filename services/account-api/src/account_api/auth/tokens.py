"""JWT access and refresh tokens (HS256), with a small per-process cache of verified tokens."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

import jwt

from account_api.errors import NotAuthenticated


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


class TokenIssuer:
    """Issues and verifies tokens; verified access tokens are cached until they expire."""

    def __init__(
        self,
        secret: str,
        access_minutes: int,
        refresh_days: int,
        cache_size: int = 10_000,
    ) -> None:
        self._secret = secret
        self._access_s = access_minutes * 60
        self._refresh_s = refresh_days * 86400
        self._cache: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._cache_size = cache_size

    def issue(self, user_id: int) -> TokenPair:
        now = int(time.time())
        access = jwt.encode(
            {
                "sub": str(user_id),
                "typ": "access",
                "iat": now,
                "exp": now + self._access_s,
                "jti": uuid.uuid4().hex,
            },
            self._secret,
            algorithm="HS256",
        )
        refresh = jwt.encode(
            {
                "sub": str(user_id),
                "typ": "refresh",
                "iat": now,
                "exp": now + self._refresh_s,
                "jti": uuid.uuid4().hex,
            },
            self._secret,
            algorithm="HS256",
        )
        return TokenPair(access, refresh, self._access_s)

    def verify(self, token: str, expected_type: str = "access") -> int:
        """Return the user id of a valid token of `expected_type`, else raise NotAuthenticated."""
        if expected_type == "access":
            cached = self._cache.get(token)
            if cached and cached[1] > time.time():
                return cached[0]
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                options={"require": ["exp", "sub", "typ"]},
            )
        except jwt.PyJWTError:
            raise NotAuthenticated("invalid or expired token") from None
        if claims.get("typ") != expected_type:
            raise NotAuthenticated(f"not an {expected_type} token")
        try:
            user_id = int(claims["sub"])
        except (TypeError, ValueError):
            raise NotAuthenticated("invalid token subject") from None
        if expected_type == "access":
            self._cache[token] = (user_id, float(claims["exp"]))
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return user_id
