"""Pending-links routes: thin — parse, call the service, return."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from account_api.deps import ContainerDep, CurrentActor, DbId, UowDep
from account_api.integrations.schemas import IntegrationOut
from account_api.pending_links.schemas import LinkIn, PendingLinkOut
from account_api.pending_links.service import PendingLinkService

router = APIRouter(prefix="/api/integrations/pending-links", tags=["integrations"])


def _service(c: ContainerDep) -> PendingLinkService:
    return PendingLinkService(c.integrations, c.secrets)


@router.get("", response_model=list[PendingLinkOut])
async def list_pending(
    actor: CurrentActor, uow: UowDep, c: ContainerDep
) -> list[PendingLinkOut]:
    return await _service(c).list(uow, actor)


@router.post("/{link_id}/link", response_model=IntegrationOut | list[IntegrationOut])
async def link_pending(
    link_id: DbId, body: LinkIn, actor: CurrentActor, uow: UowDep, c: ContainerDep
) -> IntegrationOut | list[IntegrationOut]:
    """`{"account_id": n}` answers that account's integration; `{"account_ids": [...]}` (a
    Schwab login attached to several accounts in one action) answers the list."""
    linked = await _service(c).link(uow, actor, link_id, body.targets)
    return linked if body.account_ids is not None else linked[0]


@router.delete("/{link_id}", status_code=status.HTTP_204_NO_CONTENT)
async def discard_pending(
    link_id: DbId, actor: CurrentActor, uow: UowDep, c: ContainerDep
) -> Response:
    await _service(c).discard(uow, actor, link_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
