"""Balance history routes."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from account_api.deps import CurrentActor, DbId, UowDep
from account_api.history import service
from account_api.history.schemas import HistoryIn, HistoryOut, HistoryUpdate

router = APIRouter(prefix="/api/accounts/{account_id}/history", tags=["history"])


@router.get("", response_model=list[HistoryOut])
async def list_history(
    account_id: DbId, actor: CurrentActor, uow: UowDep
) -> list[HistoryOut]:
    return await service.list_history(uow, actor, account_id)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=HistoryOut)
async def add_history(
    account_id: DbId, body: HistoryIn, actor: CurrentActor, uow: UowDep
) -> HistoryOut:
    return await service.add_history(uow, actor, account_id, body)


@router.put("/{history_id}", response_model=HistoryOut)
async def update_history(
    account_id: DbId,
    history_id: DbId,
    body: HistoryUpdate,
    actor: CurrentActor,
    uow: UowDep,
) -> HistoryOut:
    return await service.update_history(uow, actor, account_id, history_id, body)


@router.delete("/{history_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_history(
    account_id: DbId, history_id: DbId, actor: CurrentActor, uow: UowDep
) -> Response:
    await service.delete_history(uow, actor, account_id, history_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
