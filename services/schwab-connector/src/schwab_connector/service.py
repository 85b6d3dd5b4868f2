"""The connector's use cases: code exchange, integration test, batched refresh, token lifecycle.

Handlers call these; they hold no FastStream code. Failures that retrying cannot fix become
`integration.status` / `refresh.failed` events, never exceptions out of a handler.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import orjson
from brokerlink_shared.admission import BUSY_CODE, BUSY_MESSAGE
from brokerlink_shared.batching import KeyedBatcher
from brokerlink_shared.contracts.events import (
    IntegrationConfigured,
    IntegrationRemoved,
    IntegrationStatusChanged,
    IntegrationStatusPayload,
    IntegrationTestReply,
    IntegrationTestRequest,
    RefreshRequested,
    SchwabAccountNumber,
    SchwabAccountNumbersReply,
    SchwabAccountNumbersRequest,
    SchwabOAuthExchangeReply,
    SchwabOAuthExchangeRequest,
    SchwabTokensRotated,
    SchwabTokensRotatedPayload,
)
from brokerlink_shared.contracts.values import IntegrationStatus, SchwabConnection
from brokerlink_shared.crypto import SecretBox, SecretDecryptionError
from brokerlink_shared.messaging import EventPublisher
from brokerlink_shared.ordering import CommandOrder
from brokerlink_shared.refreshes import RefreshResultPublisher
from brokerlink_shared.subjects import Broker
from schwab.client import AsyncClient

from schwab_connector.adapters.schwab_http import (
    ReauthRequiredError,
    SchwabCallError,
    SchwabGateway,
)
from schwab_connector.adapters.token_vault import (
    LoginCoordinator,
    LoginKey,
    LoginState,
    TokenVault,
)
from schwab_connector.domain.clock import Clock
from schwab_connector.domain.logins import login_identity
from schwab_connector.domain.mapping import (
    AccountDataError,
    pick_account,
    resolve_hash,
    snapshot,
)

log = logging.getLogger(__name__)

POSITIONS = [AsyncClient.Account.Fields.POSITIONS]


@dataclass
class AccountBinding:
    """An account of ours linked to a Schwab login, and the last status we reported for it."""

    account_id: int
    user_id: int
    config: SchwabConnection
    reported: tuple[IntegrationStatus, str | None] | None = None

    @property
    def login(self) -> LoginKey:
        return (self.user_id, self.config.app_key, self.config.login)


class SchwabConnector:
    """Everything the Schwab connector does, behind the handlers."""

    def __init__(
        self,
        box: SecretBox,
        vault: TokenVault,
        gateway: SchwabGateway,
        coordinator: LoginCoordinator,
        publisher: EventPublisher,
        clock: Clock,
        batch_window_s: float,
        batch_max_wait_s: float = 1.0,
        max_queued_s: float = 0.0,
    ) -> None:
        self.max_queued_s = max_queued_s
        self._box = box
        self.vault = vault
        self.gateway = gateway
        self._coordinator = coordinator
        self._publisher = publisher
        self._results = RefreshResultPublisher(publisher, Broker.SCHWAB)
        self._clock = clock
        self.batcher: KeyedBatcher[LoginKey, list[dict[str, Any]]] = KeyedBatcher(
            batch_window_s, batch_max_wait_s
        )
        self.accounts: dict[int, AccountBinding] = {}
        self.order = CommandOrder()
        self._numbers: dict[LoginKey, dict[str, str]] = {}  # hash -> account number

    # ---- commands ---------------------------------------------------------------------------

    def _bind(
        self, user_id: int | None, account_id: int | None, config: object
    ) -> AccountBinding | None:
        if (
            user_id is None
            or account_id is None
            or not isinstance(config, SchwabConnection)
        ):
            log.warning(
                "ignoring a Schwab command without user, account or Schwab config"
            )
            return None
        binding = self.accounts.get(account_id)
        if binding is None or binding.config != config or binding.user_id != user_id:
            reported = (
                binding.reported
                if binding and binding.login == (user_id, config.app_key, config.login)
                else None
            )
            binding = self.accounts[account_id] = AccountBinding(
                account_id, user_id, config, reported
            )
        self.vault.observe(user_id, account_id, config)
        return binding

    async def on_configured(self, event: IntegrationConfigured) -> None:
        """Remember the account and report its token status (no Schwab call)."""
        if not self.order.admits(event.account_id, event.payload.version, "configured"):
            return
        binding = self._bind(event.user_id, event.account_id, event.payload.config)
        self.order.applied(event.account_id, event.payload.version)
        if binding is not None and binding.config.token_enc:
            await self._report(binding, self.vault.logins[binding.login])

    async def on_removed(self, event: IntegrationRemoved) -> None:
        if not self.order.admits(event.account_id, event.payload.version, "removed"):
            return
        self.order.applied(event.account_id, event.payload.version)
        if event.account_id is not None:
            self.accounts.pop(event.account_id, None)
            self.vault.forget_account(event.account_id)
            log.info("schwab account removed", extra={"account": event.account_id})

    async def on_refresh(self, event: RefreshRequested, queued_s: float = 0.0) -> None:
        """Read the account (one call per login, shared by concurrent requests) and publish it.
        In-flight refreshes are bounded by the consumer's workers; one that waited in the
        stream past `max_queued_s` is answered busy at once."""
        payload = event.payload
        if self.max_queued_s and queued_s > self.max_queued_s:
            await self._fail(event, BUSY_CODE, BUSY_MESSAGE)
            return
        if not self.order.admits(event.account_id, payload.version, "refresh"):
            await self._fail(
                event, "stale", "the integration changed after this refresh was asked"
            )
            return
        binding = self._bind(event.user_id, event.account_id, payload.config)
        self.order.applied(event.account_id, payload.version)
        if binding is None:
            # Still answered: whoever waits on this refresh must learn it cannot run.
            await self._fail(
                event,
                "bad_config",
                "the refresh names no user, account or Schwab config; it cannot run",
            )
            return
        state = self.vault.logins[binding.login]
        code: str | None
        try:
            elements = await self.batcher.run(
                state.key, lambda: self._fetch_accounts(state)
            )
            numbers = None
            if (
                not binding.config.account_number
                and binding.config.account_hash
                and len(elements) > 1
            ):
                numbers = await self._account_numbers(state)
            picked = pick_account(
                elements,
                binding.config.account_number,
                binding.config.account_hash,
                numbers,
            )
            if isinstance(picked, str):
                raise AccountDataError(picked)
            snap = snapshot(picked)
        except ReauthRequiredError as exc:
            status, code, reason = (
                IntegrationStatus.REAUTH_REQUIRED,
                "reauth_required",
                exc.reason,
            )
        except SchwabCallError as exc:
            status, code, reason = (
                IntegrationStatus.ERROR,
                f"http_{exc.status}" if exc.status else "schwab_error",
                exc.reason,
            )
        except AccountDataError as exc:
            status, code, reason = IntegrationStatus.ERROR, "account_data", str(exc)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            status, code, reason = (
                IntegrationStatus.ERROR,
                "bad_answer",
                f"unexpected answer from Schwab ({type(exc).__name__})",
            )
        else:
            await self._results.succeeded(
                event,
                as_of=self._clock.now(),
                currency="USD",
                balance=snap.balance,
                cash_balance=snap.cash_balance,
                cash=snap.cash,
                positions=snap.positions,
                broker_account=snap.account_number,
            )
            log.debug("balance published", extra={"account": binding.account_id})
            await self._report(binding, state)
            return
        await self._fail(event, code, reason)
        await self._report(binding, state, status, reason, code)

    async def _fail(self, event: RefreshRequested, code: str, reason: str) -> None:
        """Answer a refresh with `refresh.failed` (de-duplicated per refresh)."""
        log.info(
            "schwab refresh failed",
            extra={"account": event.account_id, "code": code, "reason": reason},
        )
        await self._results.failed(event, code=code, message=reason)

    # ---- Schwab calls -----------------------------------------------------------------------

    async def _call(
        self,
        state: LoginState,
        what: str,
        request: Callable[[AsyncClient], Awaitable[httpx.Response]],
    ) -> Any:
        await self.vault.ensure_fresh(state)
        generation = state.generation

        async def on_unauthorized() -> None:
            await self.vault.ensure_fresh(state, force_from_generation=generation)

        data = await self.gateway.call_json(
            state.app_key,
            what,
            lambda: request(self.vault.current_client(state)),
            on_unauthorized,
        )
        await self.vault.flush_rotation(state)
        return data

    async def _fetch_accounts(self, state: LoginState) -> list[dict[str, Any]]:
        data = await self._call(
            state, "accounts", lambda c: c.get_accounts(fields=POSITIONS)
        )
        if not isinstance(data, list):
            raise SchwabCallError(
                "accounts: Schwab answered something other than a list"
            )
        log.debug(
            "fetched schwab accounts", extra={"user": state.user_id, "count": len(data)}
        )
        return data

    async def _account_numbers(self, state: LoginState) -> dict[str, str]:
        data = await self._call(
            state, "accountNumbers", lambda c: c.get_account_numbers()
        )
        if not isinstance(data, list):
            raise SchwabCallError(
                "accountNumbers: Schwab answered something other than a list"
            )
        numbers = {
            str(n["hashValue"]): str(n["accountNumber"])
            for n in data
            if isinstance(n, dict) and n.get("hashValue")
        }
        self._numbers[state.key] = numbers
        return numbers

    # ---- requests ---------------------------------------------------------------------------

    async def test_integration(
        self, request: IntegrationTestRequest
    ) -> IntegrationTestReply:
        """Check the config can be used: secret readable, signed in, account visible."""
        config = request.config
        if not isinstance(config, SchwabConnection):
            return IntegrationTestReply(
                success=False, message="not a Schwab integration", code="bad_request"
            )
        try:
            self._box.decrypt(config.app_secret_enc)
        except SecretDecryptionError:
            return IntegrationTestReply(
                success=False,
                message="the app secret could not be decrypted",
                code="secret_unreadable",
            )
        if not config.token_enc:
            return IntegrationTestReply(
                success=False,
                message="app key saved: sign in with Schwab to finish",
                code="not_signed_in",
            )
        binding = self._bind(request.user_id, request.account_id, config)
        if binding is None:
            raise RuntimeError("a signed-in login binds the account")
        state = self.vault.logins[binding.login]
        try:
            numbers = await asyncio.wait_for(
                self._account_numbers(state), request.timeout_s
            )
        except TimeoutError:
            return IntegrationTestReply(
                success=False, message="Schwab did not answer in time", code="timeout"
            )
        except ReauthRequiredError as exc:
            return IntegrationTestReply(
                success=False, message=exc.reason, code="reauth_required"
            )
        except SchwabCallError as exc:
            return IntegrationTestReply(
                success=False,
                message=exc.reason,
                code=f"http_{exc.status}" if exc.status else "schwab_error",
            )
        listed = [{"accountNumber": n, "hashValue": h} for h, n in numbers.items()]
        account_hash, message = resolve_hash(
            listed, config.account_number or numbers.get(config.account_hash or "")
        )
        return IntegrationTestReply(
            success=account_hash is not None,
            message=message,
            code=None if account_hash is not None else "account_data",
        )

    async def exchange_code(
        self, request: SchwabOAuthExchangeRequest
    ) -> SchwabOAuthExchangeReply:
        """Trade the code for tokens, adopt them for the login and resolve the account hash."""
        try:
            secret = self._box.decrypt(request.app_secret_enc)
            code = self._box.decrypt(request.code_enc)
        except SecretDecryptionError:
            return SchwabOAuthExchangeReply(
                success=False, message="the app secret or code could not be decrypted"
            )
        try:
            token = await self.gateway.exchange_code(
                request.app_key, secret, code, request.redirect_uri
            )
        except SchwabCallError as exc:
            return SchwabOAuthExchangeReply(success=False, message=exc.reason)
        # Who signed in? The accounts the new token sees say (several logins can share an app).
        probe = LoginState(
            (request.user_id, request.app_key, None), request.app_secret_enc
        )
        self.vault.adopt(probe, self.vault.stamp({"token": token}))
        try:
            numbers = await self._account_numbers(probe)
        except (ReauthRequiredError, SchwabCallError) as exc:
            self.vault.discard(probe)
            return SchwabOAuthExchangeReply(
                success=False,
                message=f"signed in, but Schwab did not list the login's accounts: "
                f"{exc.reason}; try again",
            )
        listed = [{"accountNumber": n, "hashValue": h} for h, n in numbers.items()]
        account_hash, message = resolve_hash(listed, request.account_number)
        if account_hash is None and request.account_number:
            self.vault.discard(probe)
            return SchwabOAuthExchangeReply(success=False, message=message)
        login = login_identity(numbers)
        config = SchwabConnection(
            app_key=request.app_key,
            app_secret_enc=request.app_secret_enc,
            account_number=request.account_number,
            login=login,
        )
        state = self.vault.observe(request.user_id, request.account_id, config)
        try:
            # Under the login's lock and lease: a refresh of its old token cannot interleave.
            async with self.vault.exclusive(state):
                self.vault.install(state, probe)
                await self.vault.share(state, consent=True)
        except TimeoutError:
            return SchwabOAuthExchangeReply(
                success=False, message="the Schwab login is busy; try signing in again"
            )
        self._numbers[state.key] = numbers
        if state.token_enc is None or state.times is None:
            raise RuntimeError("an adopted token sets the login's token and times")
        log.info(
            "schwab login authorised",
            extra={"user": request.user_id, "account": request.account_id},
        )
        self._rebind_visible(state, numbers)
        await self.publish_rotated(state)
        for binding in self._bindings_of(state.key):
            if binding.account_id != request.account_id:
                await self._report(binding, state)
        return SchwabOAuthExchangeReply(
            success=True,
            message=message,
            token_enc=state.token_enc,
            account_hash=account_hash,
            login=login,
            visible_accounts={n: h for h, n in numbers.items()},
            access_expires_at=state.times.access_expires_at,
            refresh_expires_at=state.times.refresh_expires_at,
        )

    def _rebind_visible(self, state: LoginState, numbers: dict[str, str]) -> None:
        """The user's accounts on this app key that the login sees now belong to it."""
        for binding in list(self.accounts.values()):
            config = binding.config
            if (
                binding.user_id == state.user_id
                and config.app_key == state.app_key
                and config.login != state.login
                and (
                    config.account_number in numbers.values()
                    or config.account_hash in numbers
                )
            ):
                self._bind(
                    binding.user_id,
                    binding.account_id,
                    config.model_copy(
                        update={"login": state.login, "token_enc": state.token_enc}
                    ),
                )

    async def account_numbers(
        self, request: SchwabAccountNumbersRequest
    ) -> SchwabAccountNumbersReply:
        """The account numbers a login sees, asked with tokens we do not hold (the migrator's
        legacy settings); a refreshed token comes back for the caller to keep."""

        async def numbers(client: AsyncClient) -> Any:
            async def on_unauthorized() -> None:
                await self.gateway.refresh_token(client)

            return await self.gateway.call_json(
                request.app_key,
                "accountNumbers",
                lambda: client.get_account_numbers(),
                on_unauthorized,
            )

        try:
            data, rotated = await asyncio.wait_for(
                self.vault.detached_call(
                    request.app_key, request.app_secret_enc, request.token_enc, numbers
                ),
                request.timeout_s,
            )
        except SecretDecryptionError:
            return SchwabAccountNumbersReply(
                success=False, message="the app secret or token could not be decrypted"
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return SchwabAccountNumbersReply(
                success=False, message="the token is not a token object"
            )
        except TimeoutError:
            return SchwabAccountNumbersReply(
                success=False, message="Schwab did not answer in time"
            )
        except (ReauthRequiredError, SchwabCallError) as exc:
            return SchwabAccountNumbersReply(success=False, message=exc.reason)
        if not isinstance(data, list):
            return SchwabAccountNumbersReply(
                success=False,
                message="accountNumbers: Schwab answered something other than a list",
                token_enc=rotated,
            )
        accounts = [
            SchwabAccountNumber(
                account_number=str(n["accountNumber"]), account_hash=str(n["hashValue"])
            )
            for n in data
            if isinstance(n, dict) and n.get("accountNumber") and n.get("hashValue")
        ]
        return SchwabAccountNumbersReply(
            success=True,
            message=f"the login sees {len(accounts)} account(s)",
            accounts=accounts,
            token_enc=rotated,
        )

    # ---- lifecycle and events ---------------------------------------------------------------

    def _hash_of(self, binding: AccountBinding) -> str | None:
        if binding.config.account_hash:
            return str(binding.config.account_hash)
        numbers = self._numbers.get(binding.login, {})
        return next(
            (h for h, n in numbers.items() if n == binding.config.account_number), None
        )

    def _bindings_of(self, login: LoginKey) -> list[AccountBinding]:
        return [b for b in self.accounts.values() if b.login == login]

    async def check_lifecycle(self) -> None:
        """Report expiring_soon / reauth_required (or recovery) for every known login."""
        for state in list(self.vault.logins.values()):
            status = self.vault.status(state)
            for binding in self._bindings_of(state.key):
                # an error stays until a refresh succeeds, unless the login itself ran out
                previous = binding.reported[0] if binding.reported else None
                if (
                    previous != IntegrationStatus.ERROR
                    or status != IntegrationStatus.CONNECTED
                ):
                    await self._report(binding, state)

    async def run_lifecycle(self, interval_s: float) -> None:
        """Background task: `check_lifecycle` every `interval_s`; never dies of one failure."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.check_lifecycle()
            except Exception:
                log.exception("lifecycle check failed")

    async def publish_rotated(self, state: LoginState) -> None:
        """Tell account-api to store the login's new token for every account that shares it."""
        if state.token_enc is None or state.times is None:
            return
        event = SchwabTokensRotated(
            user_id=state.user_id,
            payload=SchwabTokensRotatedPayload(
                app_key=state.app_key,
                login=state.login,
                account_ids=sorted(state.account_ids),
                token_enc=state.token_enc,
                access_expires_at=state.times.access_expires_at,
                refresh_expires_at=state.times.refresh_expires_at,
            ),
        )
        digest = hashlib.sha256(state.token_enc.encode()).hexdigest()[:24]
        await self._publisher.publish(
            event, msg_id=f"rotated:{state.login_id}:{digest}"
        )
        log.info(
            "schwab token rotated",
            extra={"user": state.user_id, "accounts": len(state.account_ids)},
        )

    async def _report(
        self,
        binding: AccountBinding,
        state: LoginState,
        status: IntegrationStatus | None = None,
        message: str | None = None,
        code: str | None = None,
    ) -> None:
        """Publish the account's status when it differs from the last one reported."""
        if status is None:
            status = self.vault.status(state)
            if status == IntegrationStatus.REAUTH_REQUIRED:
                message = "the Schwab login has expired or was refused: sign in again"
                code = "reauth_required"
            elif status == IntegrationStatus.EXPIRING_SOON:
                message = "the Schwab login expires within a day: sign in again to keep syncing"
        if binding.reported == (status, message):
            return
        binding.reported = (status, message)
        times = state.times
        now: datetime = self._clock.now()
        event = IntegrationStatusChanged(
            user_id=binding.user_id,
            account_id=binding.account_id,
            payload=IntegrationStatusPayload(
                broker=Broker.SCHWAB,
                status=status,
                code=code,
                message=message,
                last_connected=now
                if status
                in (IntegrationStatus.CONNECTED, IntegrationStatus.EXPIRING_SOON)
                else None,
                access_expires_at=times.access_expires_at if times else None,
                refresh_expires_at=times.refresh_expires_at if times else None,
                account_hash=self._hash_of(binding),
            ),
        )
        await self._publisher.publish(event)
        log.info(
            "schwab status changed",
            extra={"account": binding.account_id, "status": status.value},
        )
