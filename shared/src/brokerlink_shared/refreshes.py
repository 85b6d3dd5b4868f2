"""What a connector publishes when it finishes a refresh: `RefreshResultPublisher` turns a
`refresh.requested` into exactly one `balance.updated` or `refresh.failed` (de-duplicated by a
message id derived from the account and the refresh), and `fail_parked_refreshes` does the
same for a request the bus gave up on, so every refresh ends."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from faststream.nats import NatsBroker
from nats.aio.msg import Msg
from pydantic import ValidationError

from brokerlink_shared.contracts.events import (
    BalanceUpdated,
    BalanceUpdatedPayload,
    RefreshFailed,
    RefreshFailedPayload,
    RefreshRequested,
)
from brokerlink_shared.contracts.values import CashBalance, Position
from brokerlink_shared.messaging import EventPublisher, ParkedHook, make_broker
from brokerlink_shared.settings import BusSettings
from brokerlink_shared.subjects import Broker, Topology


class RefreshResultPublisher:
    """Publishes the outcome of one connector's refreshes."""

    def __init__(self, publisher: EventPublisher, broker: Broker) -> None:
        self._publisher = publisher
        self._broker = broker

    async def succeeded(
        self,
        request: RefreshRequested,
        *,
        as_of: datetime,
        currency: str,
        balance: Decimal,
        cash_balance: Decimal | None = None,
        cash: Sequence[CashBalance] = (),
        positions: Sequence[Position] = (),
        broker_account: str | None = None,
    ) -> None:
        event = BalanceUpdated(
            user_id=request.user_id,
            account_id=request.account_id,
            correlation_id=request.correlation_id,
            payload=BalanceUpdatedPayload(
                broker=self._broker,
                refresh_id=request.payload.refresh_id,
                job_id=request.payload.job_id,
                as_of=as_of,
                currency=currency,
                balance=balance,
                cash_balance=cash_balance,
                cash=list(cash),
                positions=list(positions),
                broker_account=broker_account,
            ),
        )
        await self._publisher.publish(
            event, msg_id=f"{request.account_id}:{request.payload.refresh_id}"
        )

    async def failed(
        self, request: RefreshRequested, *, code: str | None, message: str
    ) -> None:
        event = RefreshFailed(
            user_id=request.user_id,
            account_id=request.account_id,
            correlation_id=request.correlation_id,
            payload=RefreshFailedPayload(
                broker=self._broker,
                refresh_id=request.payload.refresh_id,
                job_id=request.payload.job_id,
                code=code[:64] if code else code,
                message=message[:2000],
            ),
        )
        await self._publisher.publish(
            event, msg_id=f"{request.account_id}:{request.payload.refresh_id}:failed"
        )


def fail_parked_refreshes(topology: Topology, service: str) -> ParkedHook:
    """A `make_broker(on_parked=...)` hook: a parked `refresh.requested` becomes `refresh.failed`,
    so whoever waits on the refresh (a user, a bulk job) learns it will not happen."""

    async def hook(broker: NatsBroker, raw: Msg, exc: BaseException) -> None:
        publisher = EventPublisher(broker, topology)
        try:
            event = RefreshRequested.model_validate_json(raw.data)
        except ValidationError:
            return
        await publisher.publish(
            RefreshFailed(
                user_id=event.user_id,
                account_id=event.account_id,
                correlation_id=event.correlation_id,
                payload={
                    "broker": event.payload.broker,
                    "refresh_id": event.payload.refresh_id,
                    "job_id": event.payload.job_id,
                    "code": "parked",
                    "message": f"{service} could not process the refresh ({type(exc).__name__}); "
                    "it was parked for inspection",
                },
            ),
            msg_id=f"parked:{event.event_id}",
        )

    return hook


def connector_broker(
    settings: BusSettings, topology: Topology, service: str
) -> NatsBroker:
    """A broker connector's bus, built one way for every connector: its settings (bus, delivery
    limit, outage budget) and a parked refresh command answered as failed."""
    return make_broker(
        settings.nats_url,
        topology,
        service,
        max_deliver=settings.max_deliver,
        on_parked=fail_parked_refreshes(topology, service),
        outage_budget_s=settings.outage_budget_s,
    )
