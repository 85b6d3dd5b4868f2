"""FastAPI dependencies: the per-app container, a unit of work, the current user."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from brokerlink_shared.crypto import SecretBox
from brokerlink_shared.messaging import EventPublisher
from brokerlink_shared.subjects import Topology
from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from faststream.nats import NatsBroker
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from account_api.actor import Actor
from account_api.auth.tokens import TokenIssuer
from account_api.config import Settings
from account_api.db import ReadPool, UnitOfWork
from account_api.errors import NotAuthenticated

if TYPE_CHECKING:
    from account_api.auth.service import AuthService
    from account_api.integrations.service import IntegrationService
    from account_api.outbox.relay import OutboxRelay


@dataclass
class Container:
    """Long-lived objects built by the composition root (`main.create_app`)."""

    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    read_pool: ReadPool
    issuer: TokenIssuer
    secrets: SecretBox
    broker: NatsBroker
    topology: Topology
    integrations: IntegrationService
    relay: OutboxRelay
    auth: AuthService


async def get_container(request: Request) -> Container:
    container: Container = request.app.state.container
    return container


ContainerDep = Annotated[Container, Depends(get_container)]


async def get_uow(container: ContainerDep) -> UnitOfWork:
    return UnitOfWork(
        container.sessionmaker, EventPublisher(container.broker, container.topology)
    )


UowDep = Annotated[UnitOfWork, Depends(get_uow)]
_bearer = HTTPBearer(auto_error=False)


async def current_actor(
    request: Request,
    container: ContainerDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Actor:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise NotAuthenticated("missing bearer token")
    claims = container.issuer.verify(credentials.credentials)
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    return Actor(
        user_id=claims.user_id,
        request_id=request_id[:128],
        session_id=claims.session_id,
    )


CurrentActor = Annotated[Actor, Depends(current_actor)]


# Database ids are BIGINT: bound path ids so an out-of-range id is a 422, not a database error.
DbId = Annotated[int, Path(ge=1, le=9_223_372_036_854_775_807)]
