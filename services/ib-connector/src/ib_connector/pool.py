"""`GatewaySessionPool`: one supervised ib_async session per (user, host, port, client_id).

A user's accounts configured against the same gateway and client id share one session (IB
refuses a second connection with the same client id). Sessions are never shared between users:
whatever a session reads, reports or logs concerns its one user's accounts — and since one gateway
answers under any address of its host, a session claims the gateway's accounts for its user
(`ClaimAccounts`, see `domain.account_claims`) before anything is read or logged, and closes a
connection whose accounts belong to another user unread. Each session runs its own supervisor task that
connects (with failover to backups), reconnects with backoff when dropped, and probes the
primary while on a backup. Sessions never wait on each other: timeouts are per session and
reads are serialised per session only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from brokerlink_shared.backoff import Backoff, backoff_delay
from brokerlink_shared.contracts.values import (
    GATEWAY_OWNED_ELSEWHERE,
    GATEWAY_OWNED_ELSEWHERE_MESSAGE,
    IBConnection,
)

from ib_connector.adapters.ib_gateway import (
    GatewayClosed,
    GatewayError,
    GatewayNotice,
    IBGatewayClient,
)
from ib_connector.domain.accounts import AccountSelectionError, select_account
from ib_connector.domain.endpoints import SessionKey, failover_order, session_key
from ib_connector.domain.session_state import (
    Endpoint,
    Phase,
    SessionState,
    StatusView,
    status_for,
)
from ib_connector.domain.snapshot import (
    AccountSnapshot,
    AccountValueRow,
    Holding,
    IncompleteAccountData,
    build_snapshot,
)

log = logging.getLogger(__name__)


# Until a user's session has spoken to an IB Gateway at an address, connection failures there
# read the same whatever happened (refused, timeout, closed, a banner): the test route must not
# tell a port scanner which ports are open.
UNREACHABLE = "unreachable"


def unreachable_message(host: str, port: int) -> str:
    return f"no IB Gateway answered at {host}:{port}; check the host, port and API settings"


class GatewayClient(Protocol):
    """What a session needs from a gateway connection (ib_async in production, fakes in tests)."""

    @property
    def connected(self) -> bool: ...

    async def connect(
        self, host: str, port: int, client_id: int, timeout_s: float
    ) -> list[str]: ...

    async def read_account(
        self, code: str, timeout_s: float
    ) -> tuple[list[AccountValueRow], list[Holding]]: ...

    async def close(self) -> None: ...


GatewayClientFactory = Callable[[GatewayNotice, GatewayClosed], GatewayClient]

# Hold a gateway's managed accounts for a session's user, by the integrations (account ids) about
# to read through it (none: a short-lived hold); False when another user owns any of them.
ClaimAccounts = Callable[[SessionKey, Sequence[str], Sequence[int]], Awaitable[bool]]

CLAIMS_UNAVAILABLE = "claims_unavailable"
CLAIM_RETRY_BASE_S = 0.25
CLAIM_RETRY_CAP_S = 2.0


async def hold_accounts(
    claim: Callable[[], Awaitable[bool]], label: str, deadline: float | None = None
) -> None:
    """Run an account claim before anything is read through a connection; raises
    `GatewayError` when another user owns any of the accounts, or when ownership cannot be
    checked (nothing is read unchecked). The messages name no account and no user.

    When ownership cannot be checked, the claim is tried again after the backoff's delays until
    `deadline` (event-loop time; None: one try). The claims live in a replicated KV bucket, and
    losing the NATS node that leads it times its requests out until another node takes over: a
    few seconds that a refresh waits out instead of failing."""
    loop = asyncio.get_running_loop()
    attempt = 0
    while True:
        try:
            mine = await claim()
            break
        except Exception as exc:
            attempt += 1
            delay = backoff_delay(attempt, CLAIM_RETRY_BASE_S, CLAIM_RETRY_CAP_S)
            if deadline is not None and loop.time() + delay < deadline:
                log.info(
                    "account claims unavailable; retrying",
                    extra={
                        "session": label,
                        "error": type(exc).__name__,
                        "attempt": attempt,
                    },
                )
                await asyncio.sleep(delay)
                continue
            log.warning(
                "account claims unavailable",
                extra={"session": label, "error": type(exc).__name__},
            )
            raise GatewayError(
                CLAIMS_UNAVAILABLE,
                "could not check who this gateway's accounts belong to; try again shortly",
            ) from None
    if not mine:
        log.warning(
            "gateway accounts registered to another user; connection closed unread",
            extra={"session": label},
        )
        raise GatewayError(GATEWAY_OWNED_ELSEWHERE, GATEWAY_OWNED_ELSEWHERE_MESSAGE)


class RefreshError(Exception):
    """A refresh could not be done; `code` and `message` go into `refresh.failed`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class AccountBinding:
    """One brokerlink account served by a session."""

    account_id: int
    user_id: int | None
    account_code: str | None
    last_status: StatusView | None = None


StatusSink = Callable[[AccountBinding, StatusView], None]


@dataclass(frozen=True)
class SessionSettings:
    connect_timeout_s: float = 10.0
    request_timeout_s: float = 10.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    primary_retry_s: float = 30.0
    subscription_max_age_s: float = 60.0


@dataclass
class GatewaySession:
    """One gateway connection shared by every account with the same session key."""

    key: SessionKey
    config: IBConnection
    settings: SessionSettings
    sink: StatusSink
    client_factory: GatewayClientFactory
    connect_slots: asyncio.Semaphore
    bindings: dict[int, AccountBinding] = field(default_factory=dict)
    state: SessionState = field(default_factory=SessionState)
    last_used: float = field(default_factory=time.monotonic)
    _client: GatewayClient | None = None
    _task: asyncio.Task[None] | None = None
    _lost: asyncio.Event = field(default_factory=asyncio.Event)
    _settled: asyncio.Event = field(default_factory=asyncio.Event)
    _closed: asyncio.Event = field(default_factory=asyncio.Event)
    _read_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _backoff: Backoff = field(default_factory=Backoff)
    claim_accounts: ClaimAccounts | None = None
    # integrations registered as holders of this connection's account claims
    _holding: set[int] = field(default_factory=set)
    _hold_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self._backoff = Backoff(
            self.settings.backoff_initial_s, self.settings.backoff_max_s
        )

    reached: set[tuple[int, str, int]] = field(default_factory=set)

    @property
    def label(self) -> str:
        return (
            f"u{self.key.user_id}@{self.key.host}:{self.key.port}/{self.key.client_id}"
        )

    def _reached(self, endpoint: Endpoint) -> bool:
        return (self.key.user_id, endpoint.host.lower(), endpoint.port) in self.reached

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(
                self._supervise(), name=f"ib-session {self.label}"
            )

    async def close(self) -> None:
        """Stop the supervisor and disconnect (no status events)."""
        self._closed.set()
        self._settled.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._drop_client()
        self.state = self.state.closed()

    def attach(self, binding: AccountBinding, config: IBConnection) -> AccountBinding:
        """Serve one more account (or update it); returns the live binding."""
        self.config = config  # the newest config wins (backups may have changed)
        self.last_used = time.monotonic()
        current = self.bindings.get(binding.account_id)
        if current is None:
            self.bindings[binding.account_id] = current = binding
        else:
            current.user_id, current.account_code = (
                binding.user_id,
                binding.account_code,
            )
        self._emit(current)
        return current

    def detach(self, account_id: int) -> bool:
        """Stop serving an account; returns True when no account is left."""
        self.bindings.pop(account_id, None)
        return not self.bindings

    async def refresh(
        self, binding: AccountBinding, timeout_s: float
    ) -> AccountSnapshot:
        """Read one account's balance and positions, waiting for a connection up to the timeout."""
        self.last_used = time.monotonic()
        deadline = asyncio.get_running_loop().time() + timeout_s
        client = await self._usable_client(deadline)
        if binding.account_id >= 0 and binding.account_id not in self._holding:
            await self._hold_for(binding.account_id, deadline)
        try:
            code = select_account(self.state.managed_accounts, binding.account_code)
        except AccountSelectionError as exc:
            raise RefreshError(exc.code, str(exc)) from None
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(remaining):
                async with self._read_lock:
                    rows, holdings = await client.read_account(
                        code, max(0.01, deadline - asyncio.get_running_loop().time())
                    )
        except TimeoutError:
            raise RefreshError(
                "timeout",
                f"gateway {self.key.host}:{self.key.port} did not answer within {timeout_s:g}s",
            ) from None
        except GatewayError as exc:
            raise RefreshError(exc.code, exc.message) from None
        try:
            return build_snapshot(code, rows, holdings)
        except IncompleteAccountData as exc:
            raise RefreshError(exc.code, str(exc)) from None

    async def test(self, account_code: str | None, timeout_s: float) -> str:
        """Connect (or reuse the session) and read the summary; returns a user-facing message."""
        binding = AccountBinding(account_id=-1, user_id=None, account_code=account_code)
        snapshot = await self.refresh(binding, timeout_s)
        endpoint = self.state.endpoint
        return (
            f"connected to {endpoint}; account {snapshot.account_code} net liquidation "
            f"{snapshot.net_liquidation} {snapshot.currency}"
        )

    async def _hold_for(self, account_id: int, deadline: float) -> None:
        """Register an integration as a holder of the connection's account claims before it
        reads; when another user owns them now, close the connection unread. Integrations
        attached since the connect are registered together: one claim per burst, not a
        compare-and-set race per account."""
        async with self._hold_lock:
            if account_id in self._holding:
                return
            pending = {a for a in self.bindings if a not in self._holding}
            pending.add(account_id)
            try:
                await self._claim(
                    self.state.managed_accounts, sorted(pending), deadline
                )
            except GatewayError as exc:
                if exc.code == GATEWAY_OWNED_ELSEWHERE:
                    self._set_state(self.state.refused(exc.code, exc.message))
                    self._lost.set()  # the supervisor drops the connection, retries later
                raise RefreshError(exc.code, exc.message) from None
            self._holding |= pending

    async def _claim(
        self,
        managed: Sequence[str],
        account_ids: Sequence[int],
        deadline: float | None = None,
    ) -> None:
        """Hold the gateway's accounts for this session's user (see `hold_accounts`)."""
        claim = self.claim_accounts
        if claim is not None and managed:
            await hold_accounts(
                lambda: claim(self.key, managed, account_ids), self.label, deadline
            )

    async def _usable_client(self, deadline: float) -> GatewayClient:
        loop = asyncio.get_running_loop()
        while True:
            state = self.state
            if state.usable and self._client is not None:
                return self._client
            if self._closed.is_set():
                raise RefreshError("closed", "the gateway session was closed")
            if state.phase is Phase.FAILED:
                raise RefreshError(
                    state.code or "error", state.message or "gateway unavailable"
                )
            if state.phase is Phase.CONNECTED and state.gateway_link_down:
                raise RefreshError(
                    state.code or "1100", state.message or "gateway lost its link to IB"
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise self._not_connected_in_time()
            try:
                async with asyncio.timeout(remaining):
                    await self._settled.wait()
            except TimeoutError:
                raise self._not_connected_in_time() from None

    def _not_connected_in_time(self) -> RefreshError:
        if self.state.code == GATEWAY_OWNED_ELSEWHERE:  # refused before this retry
            return RefreshError(
                GATEWAY_OWNED_ELSEWHERE, GATEWAY_OWNED_ELSEWHERE_MESSAGE
            )
        primary = Endpoint(self.config.host, self.config.port)
        if not self._reached(primary):
            return RefreshError(
                UNREACHABLE, unreachable_message(primary.host, primary.port)
            )
        return RefreshError(
            "timeout", f"gateway {self.key.host}:{self.key.port} not connected in time"
        )

    # ---- supervisor ------------------------------------------------------------------------

    async def _supervise(self) -> None:
        while not self._closed.is_set():
            if not await self._connect_round():
                delay = self._backoff.next_delay()
                log.debug(
                    "reconnect backoff",
                    extra={"session": self.label, "delay_s": round(delay, 2)},
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._closed.wait()
                continue
            self._backoff.reset()
            await self._while_connected()

    async def _connect_round(self) -> bool:
        """Try the primary, then each backup; True once one answers."""
        primary = Endpoint(self.config.host, self.config.port)
        backups = [Endpoint(b.host, b.port, backup=True) for b in self.config.backups]
        failure: GatewayError | None = None
        for endpoint in failover_order(primary, backups):
            self._set_state(self.state.connecting(endpoint))
            try:
                await self._connect(endpoint)
                return True
            except GatewayError as raised:
                exc = raised
                if GATEWAY_OWNED_ELSEWHERE in (raised.code, self.state.code):
                    # once refused, later failures (the gateway still counting the closed
                    # connection's client id, say) keep reading as the refusal
                    exc = GatewayError(
                        GATEWAY_OWNED_ELSEWHERE, GATEWAY_OWNED_ELSEWHERE_MESSAGE
                    )
                elif not self._reached(endpoint):
                    exc = GatewayError(
                        UNREACHABLE, unreachable_message(endpoint.host, endpoint.port)
                    )
                failure = (
                    exc if failure is None else failure
                )  # the primary's reason is the useful one
                log.debug(
                    "connect failed",
                    extra={
                        "session": self.label,
                        "endpoint": str(endpoint),
                        "ib_code": raised.code,
                    },
                )
        if failure is None:
            raise RuntimeError("failover tried no endpoint")
        if self.state.phase is not Phase.FAILED or self.state.code != failure.code:
            log.info(
                "gateway session failed",
                extra={
                    "session": self.label,
                    "ib_code": failure.code,
                    "reason": failure.message,
                },
            )
        self._set_state(
            self.state.refused(failure.code, failure.message)
            if failure.code == GATEWAY_OWNED_ELSEWHERE
            else self.state.failed(failure.code, failure.message)
        )
        return False

    async def _connect(self, endpoint: Endpoint) -> None:
        self._lost.clear()
        client = self.client_factory(self._on_notice, self._on_closed)
        holders = list(self.bindings)
        async with self.connect_slots:
            try:
                managed = await client.connect(
                    endpoint.host,
                    endpoint.port,
                    self.key.client_id,
                    self.settings.connect_timeout_s,
                )
                # before anything is read or logged; a bus failing over is waited out for
                # as long again as a connect may take
                await self._claim(
                    managed,
                    holders,
                    asyncio.get_running_loop().time() + self.settings.connect_timeout_s,
                )
            except BaseException:
                await client.close()
                raise
        self.reached.add((self.key.user_id, endpoint.host.lower(), endpoint.port))
        await self._drop_client()
        self._client = client
        self._holding = set(holders)
        log.info(
            "gateway session connected",
            extra={
                "session": self.label,
                "endpoint": str(endpoint),
                "accounts": managed,
            },
        )
        self._set_state(
            self.state.connected(endpoint, tuple(managed), datetime.now(UTC))
        )

    async def _while_connected(self) -> None:
        """Wait for the connection to drop; while on a backup, move back when the primary answers."""
        while not self._closed.is_set():
            on_backup = self.state.endpoint is not None and self.state.endpoint.backup
            try:
                async with asyncio.timeout(
                    self.settings.primary_retry_s if on_backup else None
                ):
                    await self._lost.wait()
                break
            except TimeoutError:
                await self._try_primary()
        if not self._closed.is_set():
            await self._drop_client()

    async def _try_primary(self) -> None:
        primary = Endpoint(self.config.host, self.config.port)
        client = self.client_factory(self._on_notice, self._on_closed)
        holders = list(self.bindings)
        try:
            async with self.connect_slots:
                managed = await client.connect(
                    primary.host,
                    primary.port,
                    self.key.client_id,
                    self.settings.connect_timeout_s,
                )
                await self._claim(managed, holders)
        except GatewayError:
            await client.close()
            return
        previous = self._client
        self._client = client
        self._holding = set(holders)
        if previous is not None:
            await previous.close()
        self._lost.clear()
        log.info(
            "gateway session back on primary",
            extra={"session": self.label, "endpoint": str(primary)},
        )
        self._set_state(
            self.state.connected(primary, tuple(managed), datetime.now(UTC))
        )

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    def _on_closed(self, reason: str) -> None:
        if self._closed.is_set() or self.state.phase is not Phase.CONNECTED:
            return
        log.info(
            "gateway session lost", extra={"session": self.label, "reason": reason}
        )
        self._set_state(self.state.lost(f"{reason} ({self.state.endpoint})"))
        self._lost.set()

    def _on_notice(self, code: int, text: str) -> None:
        log.info(
            "gateway notice",
            extra={"session": self.label, "ib_code": code, "ib_text": text},
        )
        self._set_state(self.state.notice(code, text))

    def _set_state(self, state: SessionState) -> None:
        self.state = state
        # waiting requests wake once an attempt has an outcome
        if state.phase in (Phase.CONNECTED, Phase.FAILED, Phase.CLOSED):
            self._settled.set()
        else:
            self._settled.clear()
        for binding in self.bindings.values():
            self._emit(binding)

    def _emit(self, binding: AccountBinding) -> None:
        view = status_for(self.state, binding.account_code)
        if view is not None and not view.same_as(binding.last_status):
            binding.last_status = view
            self.sink(binding, view)


@dataclass
class PoolSettings:
    session: SessionSettings = field(default_factory=SessionSettings)
    idle_close_s: float = 900.0
    max_concurrent_connects: int = 64


class GatewaySessionPool:
    """All sessions of this replica, keyed by (user, host, port, client_id)."""

    def __init__(
        self,
        settings: PoolSettings,
        sink: StatusSink,
        client_factory: GatewayClientFactory = IBGatewayClient,
        on_idle_close: Callable[[SessionKey], None] | None = None,
        claim_accounts: ClaimAccounts | None = None,
    ) -> None:
        self.settings = settings
        self._claim_accounts = claim_accounts
        self._sink = sink
        self._client_factory = client_factory
        self._on_idle_close = on_idle_close
        self.sessions: dict[SessionKey, GatewaySession] = {}
        # (user, host, port) where that user's session completed an IB handshake
        self.reached: set[tuple[int, str, int]] = set()
        # account id -> the key of the session serving it: attach and detach stay O(1) per call
        self._session_of: dict[int, SessionKey] = {}
        self._connect_slots = asyncio.Semaphore(settings.max_concurrent_connects)
        self._reaper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_idle(), name="ib-session-reaper")

    async def aclose(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await asyncio.gather(*(s.close() for s in self.sessions.values()))
        self.sessions.clear()
        self._session_of.clear()

    def session(self, config: IBConnection, user_id: int | None) -> GatewaySession:
        """The user's session for a config's key, created and started on first use."""
        key = session_key(config, user_id)
        session = self.sessions.get(key)
        if session is None:
            session = GatewaySession(
                key=key,
                config=config,
                settings=self.settings.session,
                sink=self._sink,
                client_factory=self._client_factory,
                connect_slots=self._connect_slots,
                reached=self.reached,
                claim_accounts=self._claim_accounts,
            )
            self.sessions[key] = session
            session.start()
            log.info("gateway session opened", extra={"session": session.label})
        return session

    def attach(
        self, config: IBConnection, account_id: int, user_id: int | None
    ) -> tuple[GatewaySession, AccountBinding]:
        """Serve the account from the session of `config`; an account moved to another gateway
        or client id stops being served (and reported) by its old session."""
        key = session_key(config, user_id)
        previous = self._session_of.get(account_id)
        if previous is not None and previous != key:
            other = self.sessions.get(previous)
            if other is not None:
                other.detach(account_id)
        session = self.session(config, user_id)
        self._session_of[account_id] = session.key
        binding = session.attach(
            AccountBinding(account_id, user_id, config.account_code), config
        )
        return session, binding

    async def detach(
        self, config: IBConnection | None, account_id: int, user_id: int | None
    ) -> SessionKey | None:
        """Stop serving an account; closes its session when it was the last. Returns a closed key."""
        key = session_key(config, user_id) if config else None
        if key not in self.sessions:
            key = self._session_of.get(account_id)
        session = self.sessions.get(key) if key is not None else None
        if self._session_of.get(account_id) == key:
            self._session_of.pop(account_id, None)
        if session is not None and session.detach(account_id):
            await self.close_session(session.key)
            return session.key
        return None

    async def hand_over(self, key: SessionKey, view: StatusView) -> None:
        """Close a session another replica is taking over, telling each account why."""
        session = self.sessions.pop(key, None)
        if session is None:
            return
        await session.close()
        for binding in session.bindings.values():
            binding.last_status = view
            self._sink(binding, view)
        log.info("gateway session handed over", extra={"session": session.label})

    async def close_session(self, key: SessionKey) -> None:
        session = self.sessions.pop(key, None)
        if session is not None:
            for account_id in session.bindings:
                if self._session_of.get(account_id) == key:
                    del self._session_of[account_id]
            await session.close()
            log.info("gateway session closed", extra={"session": session.label})

    def serves(self, account_id: int) -> bool:
        """Whether a session of this replica serves the account."""
        return account_id in self._session_of

    def counts(self) -> dict[str, int]:
        phases = [s.state.phase for s in self.sessions.values()]
        return {
            "sessions": len(phases),
            "connected": sum(p is Phase.CONNECTED for p in phases),
            "failed": sum(p is Phase.FAILED for p in phases),
            "reconnecting": sum(
                p in (Phase.LOST, Phase.CONNECTING, Phase.NEW) for p in phases
            ),
            "accounts": sum(len(s.bindings) for s in self.sessions.values()),
        }

    async def _reap_idle(self) -> None:
        idle = self.settings.idle_close_s
        while True:
            await asyncio.sleep(max(0.5, min(idle / 4, 30.0)))
            cutoff = time.monotonic() - idle
            for key, session in list(self.sessions.items()):
                if session.last_used < cutoff:
                    log.info(
                        "closing idle gateway session", extra={"session": session.label}
                    )
                    await self.close_session(key)
                    if self._on_idle_close is not None:
                        self._on_idle_close(key)
