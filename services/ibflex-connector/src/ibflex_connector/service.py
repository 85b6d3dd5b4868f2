"""The connector's use cases: refresh (one statement per token and query, shared by the accounts
it covers) and the integration test. Handlers call these; they hold no FastStream code. Failures
become `refresh.failed` and `integration.status` events, never exceptions out of a handler.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from brokerlink_shared.batching import KeyedBatcher
from brokerlink_shared.contracts.events import (
    IntegrationConfigured,
    IntegrationRemoved,
    IntegrationStatusChanged,
    IntegrationStatusPayload,
    IntegrationTestReply,
    IntegrationTestRequest,
    RefreshRequested,
)
from brokerlink_shared.contracts.plugins import IB_FLEX, IBFlexConnection
from brokerlink_shared.contracts.values import IntegrationStatus
from brokerlink_shared.crypto import SecretBox, SecretDecryptionError
from brokerlink_shared.messaging import EventPublisher
from brokerlink_shared.rate_budget import key_token
from brokerlink_shared.refreshes import RefreshResultPublisher
from brokerlink_shared.subjects import Broker

from ibflex_connector.adapters.flex_http import FlexCallError, FlexWebService
from ibflex_connector.adapters.statement_share import FetchOutcome, KvStatementShare
from ibflex_connector.domain.answers import Verdict
from ibflex_connector.domain.statement import (
    AccountStatement,
    ReportError,
    pick_statement,
    read_report,
)

log = logging.getLogger(__name__)

StatementKey = str  # hashed (user, token, query id)


class RefreshProblem(Exception):
    """Why a refresh produced no balance: what the status and the failure say."""

    def __init__(self, status: IntegrationStatus, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class AccountBinding:
    account_id: int
    user_id: int
    config: IBFlexConnection
    reported: tuple[IntegrationStatus, str | None] | None = None


class FlexConnector:
    """Everything the IB Flex connector does, behind the handlers."""

    def __init__(
        self,
        box: SecretBox,
        service: FlexWebService,
        share: KvStatementShare,
        publisher: EventPublisher,
        *,
        expiring_soon_days: int,
        batch_window_s: float,
        batch_max_wait_s: float,
    ) -> None:
        self._box = box
        self.service = service
        self.share = share
        self._publisher = publisher
        self._results = RefreshResultPublisher(publisher, Broker.IB_FLEX)
        self._expiring_soon_days = expiring_soon_days
        self.batcher: KeyedBatcher[StatementKey, FetchOutcome] = KeyedBatcher(
            batch_window_s, batch_max_wait_s
        )
        self.accounts: dict[int, AccountBinding] = {}

    # ---- commands -------------------------------------------------------------------------

    def _bind(
        self, user_id: int | None, account_id: int | None, config: object
    ) -> AccountBinding | None:
        if (
            user_id is None
            or account_id is None
            or not isinstance(config, IBFlexConnection)
        ):
            log.warning(
                "ignoring an IB Flex command without user, account or Flex config"
            )
            return None
        binding = self.accounts.get(account_id)
        if binding is None or binding.user_id != user_id or binding.config != config:
            binding = self.accounts[account_id] = AccountBinding(
                account_id, user_id, config
            )
        return binding

    async def on_configured(self, event: IntegrationConfigured) -> None:
        """Remember the account; no IB call (the token's budget is for refreshes)."""
        self._bind(event.user_id, event.account_id, event.payload.config)

    async def on_removed(self, event: IntegrationRemoved) -> None:
        removed = self.accounts.pop(event.account_id or 0, None)
        if removed is not None:
            log.info("ib flex account removed", extra={"account": event.account_id})

    async def _statement(
        self, binding: AccountBinding
    ) -> tuple[AccountStatement, int | None]:
        """The account's statement from its (token, query) report, shared with the other
        accounts of the same report that are being refreshed at the same time."""
        try:
            token = self._box.decrypt(binding.config.token_enc)
        except SecretDecryptionError:
            raise RefreshProblem(
                IntegrationStatus.ERROR,
                "secret_unreadable",
                "the Flex token could not be decrypted: save it again",
            ) from None
        query_id = binding.config.query_id
        key = key_token("flex", binding.user_id, token, query_id)

        async def from_ib() -> FetchOutcome:
            try:
                fetched = await self.service.fetch(token, query_id)
                report = read_report(fetched.body)
            except FlexCallError as exc:
                return FetchOutcome.of_error(exc)
            except ReportError as exc:
                return FetchOutcome(
                    error_verdict=Verdict.FAILED, error_message=str(exc)
                )
            log.info(
                "flex statement fetched",
                extra={"user": binding.user_id, "requests": fetched.requests},
            )
            return FetchOutcome(
                statements=report.statements, expires_in_days=fetched.expires_in_days
            )

        outcome = await self.batcher.run(key, lambda: self.share.run(key, from_ib))
        try:
            report, days = outcome.result()
        except FlexCallError as exc:
            if exc.verdict is Verdict.REAUTH:
                raise RefreshProblem(
                    IntegrationStatus.REAUTH_REQUIRED,
                    f"ib_{exc.code}",
                    f"{exc.message} {IB_FLEX.reauth_help}",
                ) from None
            raise RefreshProblem(
                IntegrationStatus.ERROR,
                f"ib_{exc.code}" if exc.code else "flex_error",
                exc.message,
            ) from None
        picked = pick_statement(report, binding.config.account_code)
        if isinstance(picked, str):
            code = "query_sections" if "section" in picked else "account_data"
            raise RefreshProblem(IntegrationStatus.ERROR, code, picked)
        return picked, days

    def _token_status(self, days: int | None) -> tuple[IntegrationStatus, str | None]:
        if days is not None and days <= self._expiring_soon_days:
            return (
                IntegrationStatus.EXPIRING_SOON,
                f"IB says the Flex token expires in {days} day(s). {IB_FLEX.reauth_help}",
            )
        return IntegrationStatus.CONNECTED, None

    async def on_refresh(self, event: RefreshRequested, queued_s: float = 0.0) -> None:
        """Fetch the account's statement and publish its balance (or why not). However long
        the request queued (`queued_s`), it is served: statements are minutes old anyway and
        the requests of one report share one fetch."""
        del queued_s
        payload = event.payload
        binding = self._bind(event.user_id, event.account_id, payload.config)
        if binding is None:
            return
        try:
            statement, days = await self._statement(binding)
        except RefreshProblem as problem:
            log.info(
                "ib flex refresh failed",
                extra={"account": binding.account_id, "code": problem.code},
            )
            await self._results.failed(
                event, code=problem.code, message=problem.message
            )
            await self._report(binding, problem.status, problem.message, problem.code)
            return
        await self._results.succeeded(
            event,
            as_of=statement.as_of,
            currency=statement.base_currency,
            balance=statement.net_liquidation,
            cash_balance=statement.cash_balance,
            cash=statement.cash,
            positions=statement.positions,
            broker_account=statement.account_code,
        )
        status, message = self._token_status(days)
        await self._report(binding, status, message)

    # ---- requests -------------------------------------------------------------------------

    async def test_integration(
        self, request: IntegrationTestRequest
    ) -> IntegrationTestReply:
        """Run the query once: token accepted, report readable, account covered."""
        binding = self._bind(request.user_id, request.account_id, request.config)
        if binding is None:
            return IntegrationTestReply(
                success=False, message="not an IB Flex integration"
            )
        try:
            statement, days = await asyncio.wait_for(
                self._statement(binding), request.timeout_s
            )
        except TimeoutError:
            return IntegrationTestReply(
                success=False,
                message="IB did not deliver the statement in time; a refresh waits longer",
            )
        except RefreshProblem as problem:
            return IntegrationTestReply(success=False, message=problem.message)
        _, warning = self._token_status(days)
        message = f"statement for {statement.account_code} as of {statement.report_date.isoformat()}"
        return IntegrationTestReply(
            success=True, message=f"{message}; {warning}" if warning else message
        )

    # ---- events ---------------------------------------------------------------------------

    async def _report(
        self,
        binding: AccountBinding,
        status: IntegrationStatus,
        message: str | None,
        code: str | None = None,
    ) -> None:
        """Publish the account's status when it changed."""
        if binding.reported == (status, message):
            return
        binding.reported = (status, message)
        await self._publisher.publish(
            IntegrationStatusChanged(
                user_id=binding.user_id,
                account_id=binding.account_id,
                payload=IntegrationStatusPayload(
                    broker=Broker.IB_FLEX, status=status, code=code, message=message
                ),
            )
        )
        log.info(
            "ib flex status changed",
            extra={"account": binding.account_id, "status": status.value},
        )
