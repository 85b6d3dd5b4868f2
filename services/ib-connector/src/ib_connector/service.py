"""What the connector does with each command: route it to the replica owning the session,
then refresh / attach / detach / test on the local session pool and publish the outcome."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from brokerlink_shared.admission import BUSY_CODE, BUSY_MESSAGE, RefreshAdmission
from brokerlink_shared.contracts.events import (
    IntegrationConfigured,
    IntegrationRemoved,
    IntegrationTestReply,
    IntegrationTestRequest,
    RefreshRequested,
)
from brokerlink_shared.contracts.replicas import (
    ForwardedCommand,
    ForwardedConfigured,
    ForwardedRefresh,
    ForwardedRemoved,
    ForwardedTest,
    ForwardReply,
)
from brokerlink_shared.contracts.values import IBConnection, IntegrationStatus
from brokerlink_shared.messaging import EventPublisher, RetryLater
from brokerlink_shared.ordering import CommandOrder
from brokerlink_shared.refreshes import RefreshResultPublisher
from brokerlink_shared.subjects import Broker, Topology
from faststream.nats import NatsBroker
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from ib_connector.adapters.account_claims import AccountClaims, ClaimsUnavailable
from ib_connector.adapters.ib_gateway import GatewayError, IBGatewayClient
from ib_connector.adapters.ownership import (
    SessionOwnership,
    SessionRecord,
    session_kv_key,
)
from ib_connector.config import SERVICE, Settings
from ib_connector.domain.account_claims import (
    integration_holder,
    transient_holder,
)
from ib_connector.domain.accounts import AccountSelectionError, select_account
from ib_connector.domain.endpoints import SessionKey, session_key
from ib_connector.domain.session_state import StatusView
from ib_connector.pool import (
    UNREACHABLE,
    GatewaySessionPool,
    RefreshError,
    hold_accounts,
    unreachable_message,
)

log = logging.getLogger(__name__)


class ForwardFailed(Exception):
    """The owning replica did not handle a forwarded command; the message will be redelivered."""


def forward_subject(topology: Topology, replica_id: str) -> str:
    """Core NATS subject on which one replica takes commands for the sessions it owns."""
    return f"{topology.namespace}.{SERVICE}.replica.{replica_id}"


class IBConnectorService:
    """The connector's use cases, independent of how messages arrive."""

    def __init__(
        self,
        settings: Settings,
        topology: Topology,
        broker: NatsBroker,
        publisher: EventPublisher,
        pool: GatewaySessionPool,
    ) -> None:
        self.settings = settings
        self.topology = topology
        self.broker = broker
        self.publisher = publisher
        self.results = RefreshResultPublisher(publisher, Broker.IB)
        self.pool = pool
        self.ownership: SessionOwnership | None = None
        self.claims: AccountClaims | None = None
        self.order = CommandOrder()
        # accounts whose removal said their user is deleted: a claim round still writing for
        # one when it went takes it off the hold again the same way (`claim_accounts`)
        self.owner_deleted: set[int] = set()
        self.admission = RefreshAdmission(
            settings.max_in_flight_refreshes, settings.max_queued_s
        )
        self.refreshes_ok = 0
        self.refreshes_failed = 0

    # ---- entry points (from handlers) ------------------------------------------------------

    async def on_refresh(self, event: RefreshRequested, queued_s: float = 0.0) -> None:
        config = _ib_config(event.payload.config)
        if self.admission.too_old(queued_s):
            await self._answer_busy(event)
            return
        if not self.order.admits(event.account_id, event.payload.version, "refresh"):
            await self._answer_stale(event)
            return
        if await self._route(
            ForwardedRefresh(data=event), config, event.account_id, event.user_id
        ):
            await self.refresh_local(event, config)

    async def on_configured(self, event: IntegrationConfigured) -> None:
        config = _ib_config(event.payload.config)
        if event.account_id is None or not self.order.admits(
            event.account_id, event.payload.version, "configured"
        ):
            return
        if await self._route(
            ForwardedConfigured(data=event), config, event.account_id, event.user_id
        ):
            self._attach(event)

    def _attach(self, event: IntegrationConfigured) -> None:
        if event.account_id is None:
            raise RuntimeError("an IB refresh names its account")
        if not self.order.admits(event.account_id, event.payload.version, "configured"):
            return
        config = _ib_config(event.payload.config)
        self.pool.attach(config, event.account_id, event.user_id)
        self.order.applied(event.account_id, event.payload.version)

    async def on_removed(self, event: IntegrationRemoved) -> None:
        if event.account_id is None or not self.order.admits(
            event.account_id, event.payload.version, "removed"
        ):
            return
        config = (
            _ib_config(event.payload.config)
            if event.payload.config is not None
            else None
        )
        if config is not None and self.ownership is not None:
            key = session_key(config, event.user_id)
            if not self.ownership.owns(key):
                owner = await self.ownership.claim(key, config, None, event.user_id)
                if owner != self.ownership.replica_id:
                    await self._forward(owner, ForwardedRemoved(data=event))
                    return
        await self.remove_local(
            event.account_id,
            config,
            event.user_id,
            event.payload.version,
            owner_deleted=event.payload.owner_deleted,
        )

    async def test_integration(
        self, request: IntegrationTestRequest
    ) -> IntegrationTestReply:
        budget = max(
            0.5, request.timeout_s - 0.5
        )  # answer inside the requester's deadline
        try:
            async with asyncio.timeout(budget):
                return await self._test(request, budget)
        except TimeoutError:
            return IntegrationTestReply(
                success=False,
                message=f"no answer from the gateway within {budget:g}s",
                code="timeout",
            )
        except (ForwardFailed, RetryLater) as exc:
            return IntegrationTestReply(
                success=False,
                message=f"connector replica handover in progress: {exc}",
                code="handover",
            )

    async def on_forwarded(self, command: ForwardedCommand) -> ForwardReply:
        """Handle a command another replica routed here because this replica owns the session."""
        try:
            if isinstance(command, ForwardedRefresh):
                event = command.data
                config = _ib_config(event.payload.config)
                if not await self._owned_here(config, event.account_id, event.user_id):
                    return ForwardReply(ok=False, error="not the owner")
                await self.refresh_local(event, config)
            elif isinstance(command, ForwardedConfigured):
                configured = command.data
                config = _ib_config(configured.payload.config)
                if not await self._owned_here(
                    config, configured.account_id, configured.user_id
                ):
                    return ForwardReply(ok=False, error="not the owner")
                if configured.account_id is not None:
                    self._attach(configured)
            elif isinstance(command, ForwardedRemoved):
                removed = command.data
                cfg = removed.payload.config
                if removed.account_id is not None:
                    await self.remove_local(
                        removed.account_id,
                        _ib_config(cfg) if cfg is not None else None,
                        removed.user_id,
                        removed.payload.version,
                        owner_deleted=removed.payload.owner_deleted,
                    )
            else:
                request = command.data
                reply = await self._test_local(
                    request, max(0.5, request.timeout_s - 1.0)
                )
                return ForwardReply(ok=True, result=reply)
        except Exception as exc:
            log.exception("forwarded command failed", extra={"kind": command.kind})
            return ForwardReply(ok=False, error=repr(exc)[:500])
        return ForwardReply(ok=True)

    # ---- local work ------------------------------------------------------------------------

    async def refresh_local(
        self, event: RefreshRequested, config: IBConnection
    ) -> None:
        """Read the account on this replica's session and publish `balance.updated` or
        `refresh.failed` — at once `busy` when this replica already works on its bound."""
        with self.admission.slot() as admitted:
            if not admitted:
                await self._answer_busy(event)
                return
            await self._refresh_local(event, config)

    async def _answer_busy(self, event: RefreshRequested) -> None:
        self.refreshes_failed += 1
        await self.results.failed(event, code=BUSY_CODE, message=BUSY_MESSAGE)

    async def _refresh_local(
        self, event: RefreshRequested, config: IBConnection
    ) -> None:
        if event.account_id is None:
            raise RuntimeError("an IB refresh names its account")
        if not self.order.admits(event.account_id, event.payload.version, "refresh"):
            await self._answer_stale(event)
            return
        session, binding = self.pool.attach(config, event.account_id, event.user_id)
        self.order.applied(event.account_id, event.payload.version)
        refresh_id = event.payload.refresh_id
        try:
            snapshot = await session.refresh(binding, self.settings.request_timeout_s)
        except RefreshError as exc:
            self.refreshes_failed += 1
            log.info(
                "refresh failed",
                extra={
                    "account_id": event.account_id,
                    "ib_code": exc.code,
                    "reason": exc.message,
                },
            )
            await self.results.failed(event, code=exc.code, message=exc.message)
            return
        await self.results.succeeded(
            event,
            as_of=datetime.now(UTC),
            currency=snapshot.currency,
            balance=snapshot.net_liquidation,
            cash_balance=snapshot.total_cash,
            cash=snapshot.cash,
            positions=snapshot.positions,
            broker_account=snapshot.account_code,
        )
        self.refreshes_ok += 1
        log.debug(
            "refreshed",
            extra={"account_id": event.account_id, "refresh_id": str(refresh_id)},
        )

    async def _answer_stale(self, event: RefreshRequested) -> None:
        """A refresh asked with a config this connector already saw replaced: answer it."""
        await self.results.failed(
            event,
            code="stale",
            message="the integration changed after this refresh was asked",
        )

    async def remove_local(
        self,
        account_id: int,
        config: IBConnection | None,
        user_id: int | None,
        version: int | None = None,
        *,
        owner_deleted: bool = False,
    ) -> None:
        if not self.order.admits(account_id, version, "removed"):
            return
        # Stop serving it first: a claim written for it meanwhile then finds it gone and takes
        # it off again (`claim_accounts`). Then the integration leaves its gateway hold (the
        # accounts stay the user's unless the user is deleted with it), and only then is the
        # removal applied, so a failure leaves it to be redelivered.
        if owner_deleted:
            self.owner_deleted.add(account_id)
        closed = await self.pool.detach(config, account_id, user_id)
        if self.ownership is not None and config is not None:
            await self.ownership.forget_account(
                session_key(config, user_id),
                account_id,
                session_closed=closed is not None,
            )
        await self._claims().leave(
            integration_holder(account_id), owner_deleted=owner_deleted
        )
        self.order.applied(account_id, version)

    async def claim_accounts(
        self, key: SessionKey, codes: Sequence[str], account_ids: Sequence[int]
    ) -> bool:
        """Hold a gateway's accounts for the session's user (see `domain.account_claims`)."""
        if account_ids:
            held = await self._claims().hold(
                key.user_id, codes, [integration_holder(a) for a in account_ids]
            )
            # an integration removed while this was written is in the hold again: take it off
            for removed in (a for a in account_ids if not self.pool.serves(a)):
                await self._claims().leave(
                    integration_holder(removed),
                    owner_deleted=removed in self.owner_deleted,
                )
            return held
        transient = transient_holder(time.time(), session_kv_key(key))
        return await self._claims().claim(key.user_id, codes, [transient])

    def _claims(self) -> AccountClaims:
        if self.claims is None:
            raise ClaimsUnavailable("account claims used before start-up finished")
        return self.claims

    async def adopt(self, record: SessionRecord) -> None:
        """Open a session taken over from a replica that is gone, with the accounts it served."""
        config = record.ib_config
        if not record.accounts:
            self.pool.session(config, record.user_id)
            return
        for account_id, info in record.accounts.items():
            account_config = config.model_copy(
                update={"account_code": info.get("account_code")}
            )
            self.pool.attach(account_config, int(account_id), record.user_id)

    async def lose_sessions(self, keys: list[SessionKey]) -> None:
        """This replica lost its ownership lease: close those sessions at once (the next owner
        must not meet our client ids) and tell their accounts why they are not connected."""
        view = StatusView(
            IntegrationStatus.DISCONNECTED,
            code="handover",
            message="the connector replica serving this account stopped; "
            "another one is taking over",
        )
        for key in keys:
            await self.pool.hand_over(key, view)

    async def release(self, key: SessionKey) -> None:
        """Another replica owns this session now: close ours without status events."""
        await self.pool.close_session(key)

    async def _test(
        self, request: IntegrationTestRequest, budget: float
    ) -> IntegrationTestReply:
        config = _ib_config(request.config)
        key = session_key(config, request.user_id)
        if self.ownership is not None and not self.ownership.owns(key):
            owner = await self.ownership.owner_if_known(key)
            if owner is not None and owner != self.ownership.replica_id:
                answer = await self._forward(
                    owner, ForwardedTest(data=request), timeout_s=budget
                )
                if answer.result is None:
                    raise ForwardFailed(f"replica {owner} sent no test result")
                return answer.result
        return await self._test_local(request, budget)

    async def _test_local(
        self, request: IntegrationTestRequest, budget: float
    ) -> IntegrationTestReply:
        config = _ib_config(request.config)
        session = self.pool.sessions.get(session_key(config, request.user_id))
        try:
            if session is not None:
                message = await session.test(config.account_code, budget)
            else:
                message = await self._one_shot_test(config, request.user_id, budget)
        except (RefreshError, GatewayError) as exc:
            return IntegrationTestReply(
                success=False, message=exc.message, code=str(exc.code)[:64]
            )
        except AccountSelectionError as exc:
            return IntegrationTestReply(success=False, message=str(exc), code=exc.code)
        return IntegrationTestReply(success=True, message=message)

    async def _one_shot_test(
        self, config: IBConnection, user_id: int | None, budget: float
    ) -> str:
        """Test a gateway no session of this user uses yet: connect, read the summary, disconnect.
        Until the user has reached a gateway there, every connection failure reads the same."""
        client = IBGatewayClient(
            on_notice=lambda _code, _text: None,
            on_closed=lambda _reason: None,
            reach=self.settings.reach,
        )
        reached = (user_id or 0, config.host.lower(), config.port)
        try:
            try:
                managed = await client.connect(
                    config.host,
                    config.port,
                    config.client_id,
                    min(budget, self.settings.connect_timeout_s),
                )
            except GatewayError as exc:
                if reached in self.pool.reached:
                    raise
                raise GatewayError(
                    UNREACHABLE, unreachable_message(config.host, config.port)
                ) from exc
            # a test connection holds the gateway's accounts only while it reads them
            holder = transient_holder(time.time(), uuid.uuid4().hex[:12])
            await hold_accounts(
                lambda: self._claims().claim(user_id or 0, managed, [holder]),
                f"u{user_id or 0}@{config.host}:{config.port}/{config.client_id} (test)",
            )
            self.pool.reached.add(reached)
            try:
                code = select_account(managed, config.account_code)
                rows, _ = await client.read_account(code, max(0.5, budget / 2))
            finally:
                with contextlib.suppress(Exception):
                    await self._claims().release(holder, managed)
            net_liq = next(
                (
                    r
                    for r in rows
                    if r.tag == "NetLiquidation" and r.currency not in ("", "BASE")
                ),
                None,
            )
            figure = (
                f" net liquidation {net_liq.value} {net_liq.currency}"
                if net_liq
                else ""
            )
            return f"connected to {config.host}:{config.port}; account {code}{figure}"
        finally:
            await client.close()

    # ---- routing ---------------------------------------------------------------------------

    async def _route(
        self,
        command: ForwardedRefresh | ForwardedConfigured,
        config: IBConnection,
        account_id: int | None,
        user_id: int | None,
    ) -> bool:
        """True when this replica handles the command; otherwise it was forwarded to the owner."""
        if self.ownership is None:
            return True
        key = session_key(config, user_id)
        session = self.pool.sessions.get(key)
        if (
            self.ownership.owns(key)
            and session is not None
            and account_id in session.bindings
        ):
            return True  # fast path: nothing new to record
        owner = await self.ownership.claim(key, config, account_id, user_id)
        if owner == self.ownership.replica_id:
            return True
        await self._forward(owner, command)
        return False

    async def _owned_here(
        self, config: IBConnection, account_id: int | None, user_id: int | None
    ) -> bool:
        if self.ownership is None:
            return True
        owner = await self.ownership.claim(
            session_key(config, user_id), config, account_id, user_id
        )
        return owner == self.ownership.replica_id

    async def _forward(
        self,
        owner: str,
        command: ForwardedCommand,
        timeout_s: float | None = None,
    ) -> ForwardReply:
        body = command.model_dump_json().encode()
        try:
            reply = await self.broker.connection.request(
                forward_subject(self.topology, owner),
                body,
                timeout=timeout_s or self.settings.forward_timeout_s,
            )
        except NoRespondersError:
            # The owner is gone; its lease lapses within lease_ttl_s and a later delivery
            # takes the session over here. Waiting for that is not a failed attempt.
            raise RetryLater(
                self.settings.lease_ttl_s / 6,
                f"replica {owner} is unreachable; waiting for its lease to lapse",
            ) from None
        except (NatsTimeoutError, TimeoutError):
            # A replica killed mid-request, or the bus failing over under it: the owner answers
            # next time or its lease lapses and the session moves. Not a fault of the message.
            raise RetryLater(
                1.0, f"replica {owner} did not answer within the forward timeout"
            ) from None
        answer = ForwardReply.model_validate_json(reply.data)
        if not answer.ok:
            raise ForwardFailed(
                f"replica {owner} refused {command.kind}: {answer.error}"
            )
        log.debug("forwarded", extra={"kind": command.kind, "owner": owner})
        return answer


def _ib_config(config: Any) -> IBConnection:
    if not isinstance(config, IBConnection):
        raise ValueError("not an IB integration config")
    return config
