"""Account routes. The two hot reads return orjson bytes straight from the read model."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response, status

from account_api.accounts import service
from account_api.accounts.repository import AccountReadModel
from account_api.accounts.schemas import (
    AccountCreate,
    AccountOut,
    AccountUpdate,
    AccountWithHistoryOut,
    TotalsOut,
)
from account_api.audit import service as audit_service
from account_api.audit.schemas import AuditOut
from account_api.deps import ContainerDep, CurrentActor, DbId, UowDep
from account_api.responses import JSONBytes

router = APIRouter(prefix="/api/accounts", tags=["accounts"])


@router.get("", response_model=list[AccountWithHistoryOut])
async def list_accounts(
    actor: CurrentActor,
    c: ContainerDep,
    include: Annotated[
        Literal["history"] | None,
        Query(
            description="`history`: each account with its balance history, newest first"
        ),
    ] = None,
    history_limit: Annotated[
        int, Query(ge=1, le=3660, description="history rows per account")
    ] = 3660,
) -> JSONBytes:
    return JSONBytes(
        await service.list_accounts(
            AccountReadModel(c.read_pool),
            actor,
            history_limit=history_limit if include == "history" else 0,
        )
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=AccountOut)
async def create_account(
    body: AccountCreate, actor: CurrentActor, uow: UowDep, c: ContainerDep
) -> AccountOut:
    return await service.create_account(
        uow, actor, body, c.settings.max_accounts_per_user
    )


@router.get("/totals", response_model=TotalsOut)
async def totals(actor: CurrentActor, c: ContainerDep) -> TotalsOut:
    return await service.totals(AccountReadModel(c.read_pool), actor)


@router.get("/{account_id}", response_model=AccountOut)
async def get_account(
    account_id: DbId, actor: CurrentActor, c: ContainerDep
) -> JSONBytes:
    return JSONBytes(
        await service.get_account(AccountReadModel(c.read_pool), actor, account_id)
    )


@router.put("/{account_id}", response_model=AccountOut)
async def update_account(
    account_id: DbId,
    body: AccountUpdate,
    actor: CurrentActor,
    uow: UowDep,
    c: ContainerDep,
) -> AccountOut:
    return await service.update_account(uow, c.integrations, actor, account_id, body)


@router.delete("/{account_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_account(
    account_id: DbId, actor: CurrentActor, uow: UowDep, c: ContainerDep
) -> Response:
    await service.delete_account(uow, c.integrations, actor, account_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{account_id}/audit", response_model=list[AuditOut])
async def audit(account_id: DbId, actor: CurrentActor, uow: UowDep) -> list[AuditOut]:
    return await audit_service.account_audit(uow, actor, account_id)
