"""The in-memory, encrypted token cache: one entry per Schwab login (user, app key, login
identity — see domain.logins; the identity is unknown until the first sign-in).

Accounts that share a login share its entry, its schwab-py client and therefore its token. Tokens
are held only as `SecretBox` ciphertext (plus whatever the live httpx session needs in memory).
Refreshes are single-flight: one per login in this process (an asyncio lock) and across replicas
(a NATS KV lease, see adapters.kv).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from brokerlink_shared.contracts.values import IntegrationStatus, SchwabConnection
from brokerlink_shared.crypto import SecretBox, SecretDecryptionError
from brokerlink_shared.rate_budget import key_token
from schwab.client import AsyncClient

from schwab_connector.adapters.schwab_http import (
    ReauthRequiredError,
    SchwabGateway,
    TokenObject,
)
from schwab_connector.domain.clock import Clock
from schwab_connector.domain.tokens import (
    LoginTokenTimes,
    is_newer,
    lifecycle_status,
    needs_access_refresh,
    refresh_token_alive,
    token_times,
)

log = logging.getLogger(__name__)

LoginKey = tuple[int, str, str | None]  # (user_id, app_key, login identity)


class LoginCoordinator(Protocol):
    def lease(self, login_id: str) -> contextlib.AbstractAsyncContextManager[None]: ...
    async def latest_token(self, login_id: str) -> str | None: ...
    async def store_token(
        self,
        login_id: str,
        token_enc: str,
        times: LoginTokenTimes,
        *,
        consent: bool = False,
    ) -> str: ...


class LocalCoordinator:
    """Single-replica coordination (no KV): the per-login asyncio lock is enough."""

    @contextlib.asynccontextmanager
    async def lease(self, _login_id: str) -> AsyncIterator[None]:
        yield

    async def latest_token(self, _login_id: str) -> str | None:
        return None

    async def store_token(
        self,
        _login_id: str,
        token_enc: str,
        _times: LoginTokenTimes,
        *,
        consent: bool = False,  # noqa: ARG002 - one replica: every write wins
    ) -> str:
        return token_enc


@dataclass(eq=False)
class LoginState:
    """One Schwab login as this replica knows it."""

    key: LoginKey
    app_secret_enc: str
    token_enc: str | None = None
    times: LoginTokenTimes | None = None
    account_ids: set[int] = field(default_factory=set)
    client: AsyncClient | None = None
    generation: int = 0
    rejected: str | None = None
    rotation_pending: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def user_id(self) -> int:
        return self.key[0]

    @property
    def app_key(self) -> str:
        return self.key[1]

    @property
    def login(self) -> str | None:
        return self.key[2]

    @property
    def login_id(self) -> str:
        return key_token("login", *self.key[:2], *self.key[2:3] if self.login else ())


class TokenVault:
    """Holds every login's token, keeps access tokens fresh and reports rotations."""

    def __init__(
        self,
        box: SecretBox,
        gateway: SchwabGateway,
        clock: Clock,
        coordinator: LoginCoordinator,
        on_rotated: Callable[[LoginState], Awaitable[None]],
        *,
        refresh_margin_s: float,
        refresh_ttl_s: float,
        expiring_soon_s: float,
    ) -> None:
        self._box = box
        self._gateway = gateway
        self._clock = clock
        self._coordinator = coordinator
        self._on_rotated = on_rotated
        self._margin_s = refresh_margin_s
        self._refresh_ttl_s = refresh_ttl_s
        self._expiring_soon_s = expiring_soon_s
        self.logins: dict[LoginKey, LoginState] = {}
        self.refreshes = 0

    # ---- what we know ---------------------------------------------------------------------

    def observe(
        self, user_id: int, account_id: int, config: SchwabConnection
    ) -> LoginState:
        """Record an account's login and adopt its token if it is newer than ours."""
        key = (user_id, config.app_key, config.login)
        state = self.logins.get(key)
        if state is None:
            state = self.logins[key] = LoginState(key, config.app_secret_enc)
            log.info(
                "schwab login registered",
                extra={"user": user_id, "account": account_id},
            )
        elif state.app_secret_enc != config.app_secret_enc:
            state.app_secret_enc = config.app_secret_enc
            self._drop_client(state)
        state.account_ids.add(account_id)
        if config.token_enc and config.token_enc != state.token_enc:
            self._adopt_encrypted(state, config.token_enc)
        return state

    def forget_account(self, account_id: int) -> None:
        for key, state in list(self.logins.items()):
            state.account_ids.discard(account_id)
            if not state.account_ids:
                self._drop_client(state)
                del self.logins[key]

    def install(self, state: LoginState, signed_in: LoginState) -> None:
        """Give `state` the token of a sign-in that was probed under `signed_in`."""
        state.token_enc, state.times = signed_in.token_enc, signed_in.times
        state.generation += 1
        state.rejected = None
        self._drop_client(state)
        self._drop_client(signed_in)

    def discard(self, state: LoginState) -> None:
        """Let go of a state that was never registered (a failed sign-in's probe)."""
        self._drop_client(state)

    def adopt(self, state: LoginState, token_object: TokenObject) -> None:
        """Install a fresh token (after a code exchange), whatever we held before."""
        self._store(state, token_object)
        self._drop_client(state)

    def _adopt_encrypted(
        self, state: LoginState, token_enc: str, only_if_newer: bool = True
    ) -> bool:
        try:
            token_object = orjson.loads(self._box.decrypt(token_enc))
            times = token_times(token_object, self._refresh_ttl_s)
        except (
            SecretDecryptionError,
            orjson.JSONDecodeError,
            KeyError,
            TypeError,
            ValueError,
        ):
            log.warning(
                "ignoring an unreadable schwab token", extra={"user": state.user_id}
            )
            return False
        if only_if_newer and not is_newer(times, state.times):
            return False
        state.token_enc, state.times = token_enc, times
        state.generation += 1
        state.rejected = None
        self._drop_client(state)
        return True

    def _store(self, state: LoginState, token_object: TokenObject) -> None:
        state.token_enc = self._box.encrypt(orjson.dumps(token_object).decode())
        state.times = token_times(token_object, self._refresh_ttl_s)
        state.generation += 1
        state.rejected = None

    def _drop_client(self, state: LoginState) -> None:
        client, state.client = state.client, None
        if client is not None:
            task = asyncio.get_running_loop().create_task(client.close_async_session())
            task.add_done_callback(
                lambda t: t.exception() if not t.cancelled() else None
            )

    def status(self, state: LoginState) -> IntegrationStatus:
        """The login's lifecycle status right now."""
        if state.rejected or state.times is None:
            return IntegrationStatus.REAUTH_REQUIRED
        return lifecycle_status(state.times, self._clock.now(), self._expiring_soon_s)

    def stamp(self, token_object: TokenObject) -> TokenObject:
        """Set creation time and access expiry on our clock (authlib uses the wall clock)."""
        token_object.setdefault(
            "creation_timestamp", int(self._clock.now().timestamp())
        )
        self._restamp(token_object["token"])
        return token_object

    def _restamp(self, token: dict[str, Any]) -> None:
        if token.get("expires_in") is not None:
            token["expires_at"] = int(self._clock.now().timestamp()) + int(
                token["expires_in"]
            )

    # ---- clients and refreshes ------------------------------------------------------------

    def current_client(self, state: LoginState) -> AsyncClient:
        """The login's client as it is now (built on first use), without a freshness check."""
        if state.client is None:
            if state.token_enc is None:
                raise ReauthRequiredError("not signed in to Schwab yet")
            token_enc = state.token_enc

            def read_token() -> TokenObject:
                token: TokenObject = orjson.loads(self._box.decrypt(token_enc))
                return token

            def write_token(
                token_object: TokenObject, *_args: Any, **_kwargs: Any
            ) -> None:
                # called by authlib inside the session on every refresh; mutating the token in
                # place also fixes the session's own copy
                self._restamp(token_object["token"])
                self._store(state, token_object)
                state.rotation_pending = True

            secret = self._box.decrypt(state.app_secret_enc)
            state.client = self._gateway.build_client(
                state.app_key, secret, read_token, write_token
            )
        return state.client

    async def client(self, state: LoginState) -> AsyncClient:
        """The login's client with an access token good for at least the refresh margin."""
        await self.ensure_fresh(state)
        return self.current_client(state)

    async def ensure_fresh(
        self, state: LoginState, *, force_from_generation: int | None = None
    ) -> None:
        """Refresh the access token if it is (nearly) expired, or if `force_from_generation` is
        still the current generation (the server said 401 to that token)."""

        def due() -> bool:
            if state.rejected:
                raise ReauthRequiredError(
                    f"Schwab refused the login ({state.rejected}): sign in again"
                )
            if state.times is None:
                raise ReauthRequiredError("not signed in to Schwab yet")
            if (
                force_from_generation is not None
                and force_from_generation == state.generation
            ):
                return True
            return needs_access_refresh(state.times, self._clock.now(), self._margin_s)

        if not due():
            return
        async with state.lock:
            if not due():
                return  # a concurrent caller refreshed while we waited
            async with self._coordinator.lease(state.login_id):
                shared = await self._coordinator.latest_token(state.login_id)
                if (
                    shared
                    and shared != state.token_enc
                    and self._adopt_encrypted(state, shared)
                    and not due()
                ):
                    log.info(
                        "adopted a token refreshed by another replica",
                        extra={"user": state.user_id},
                    )
                    return
                if state.times is None:
                    raise RuntimeError(
                        "a login with a refresh token has its token times"
                    )
                if not refresh_token_alive(state.times, self._clock.now()):
                    state.rejected = "refresh token expired"
                    raise ReauthRequiredError(
                        "the Schwab login has expired (7 days): sign in again"
                    )
                try:
                    await self._gateway.refresh_token(self.current_client(state))
                except ReauthRequiredError as exc:
                    state.rejected = exc.reason
                    raise
                self.refreshes += 1
                await self.share(state)
            log.info("schwab access token refreshed", extra={"user": state.user_id})
            await self.flush_rotation(state)

    @contextlib.asynccontextmanager
    async def exclusive(self, state: LoginState) -> AsyncIterator[None]:
        """Hold the login here (its lock) and across replicas (its lease)."""
        async with state.lock, self._coordinator.lease(state.login_id):
            yield

    async def share(self, state: LoginState, *, consent: bool = False) -> None:
        """Store the login's token for every replica, unless a newer one is stored already —
        then that one is adopted (a new consent beats a refresh of the old login). A `consent`
        (a sign-in just completed) also wins a tie: its expiries may equal, to the second, those
        of the token it replaces."""
        if state.token_enc is None or state.times is None:
            raise RuntimeError(
                "a login shared with the replicas has its token and times"
            )
        stored = await self._coordinator.store_token(
            state.login_id, state.token_enc, state.times, consent=consent
        )
        if stored != state.token_enc:
            self._adopt_encrypted(state, stored, only_if_newer=False)

    async def detached_call(
        self,
        app_key: str,
        app_secret_enc: str,
        token_enc: str,
        call: Callable[[AsyncClient], Awaitable[Any]],
    ) -> tuple[Any, str | None]:
        """Run `call(client)` for a login nobody registered here (the migrator asking with a
        legacy login's tokens): nothing cached, coordinated or reported. Returns the result and,
        when the access token was refreshed on the way, the new token object (encrypted)."""
        token_object = orjson.loads(self._box.decrypt(token_enc))
        times = token_times(token_object, self._refresh_ttl_s)
        now = self._clock.now()
        if not refresh_token_alive(times, now):
            raise ReauthRequiredError(
                "the Schwab login has expired (7 days): sign in again"
            )
        held: dict[str, Any] = {"token": token_object, "rotated": False}

        def write_token(new: TokenObject, *_args: Any, **_kwargs: Any) -> None:
            self._restamp(new["token"])
            held["token"], held["rotated"] = new, True

        client = self._gateway.build_client(
            app_key,
            self._box.decrypt(app_secret_enc),
            lambda: held["token"],
            write_token,
        )
        try:
            if needs_access_refresh(times, now, self._margin_s):
                await self._gateway.refresh_token(client)
            result = await call(client)
        finally:
            await client.close_async_session()
        rotated = (
            self._box.encrypt(orjson.dumps(held["token"]).decode())
            if held["rotated"]
            else None
        )
        return result, rotated

    async def flush_rotation(self, state: LoginState) -> None:
        """Report a token written since the last report (ours, or authlib refreshing on its own)."""
        if state.rotation_pending:
            await self._on_rotated(state)
            state.rotation_pending = False  # only once account-api has been told
