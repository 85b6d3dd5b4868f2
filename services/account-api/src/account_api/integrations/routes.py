"""Integration routes: thin — parse, call the service, return."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Query, Request, Response, status
from fastapi.responses import RedirectResponse

from account_api.deps import ContainerDep, CurrentActor, DbId, UowDep
from account_api.errors import AccountApiError
from account_api.integrations.schemas import (
    CashOut,
    HealthRowOut,
    IntegrationIn,
    IntegrationOut,
    OAuthStartOut,
    PositionOut,
    RefreshJobOut,
    RefreshOut,
    TestResultOut,
)

router = APIRouter(tags=["integrations"])
ACCOUNT = "/api/accounts/{account_id}/integration"


@router.put(ACCOUNT, response_model=IntegrationOut)
async def put_integration(
    account_id: DbId,
    body: IntegrationIn,
    actor: CurrentActor,
    uow: UowDep,
    c: ContainerDep,
) -> IntegrationOut:
    return await c.integrations.configuration.configure(uow, actor, account_id, body)


@router.get(ACCOUNT, response_model=IntegrationOut)
async def get_integration(
    account_id: DbId, actor: CurrentActor, uow: UowDep, c: ContainerDep
) -> IntegrationOut:
    return await c.integrations.reads.get(uow, actor, account_id)


@router.delete(ACCOUNT, status_code=status.HTTP_204_NO_CONTENT)
async def delete_integration(
    account_id: DbId, actor: CurrentActor, uow: UowDep, c: ContainerDep
) -> Response:
    await c.integrations.configuration.remove(uow, actor, account_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(f"{ACCOUNT}/test", response_model=TestResultOut)
async def test_integration(
    account_id: DbId,
    actor: CurrentActor,
    uow: UowDep,
    c: ContainerDep,
    body: Annotated[
        IntegrationIn | None,
        Body(
            description="settings to test without saving them (the same body as PUT; "
            "omitted secrets and backups are taken from the saved integration); "
            "no body tests the saved settings"
        ),
    ] = None,
) -> TestResultOut:
    return await c.integrations.configuration.test(uow, actor, account_id, body)


@router.post(
    f"{ACCOUNT}/refresh",
    response_model=RefreshOut,
    responses={
        202: {"model": RefreshOut, "description": "still running; poll the refresh"}
    },
)
async def refresh_integration(
    account_id: DbId,
    actor: CurrentActor,
    uow: UowDep,
    c: ContainerDep,
    response: Response,
    wait: Annotated[
        float | None,
        Query(
            ge=0,
            le=60,
            description="seconds to wait for the result; 0 = answer at once",
        ),
    ] = None,
) -> RefreshOut:
    wait_s = c.settings.refresh_wait_default_s if wait is None else wait
    result = await c.integrations.refreshes.refresh(uow, actor, account_id, wait_s)
    if result.status == "pending":
        response.status_code = status.HTTP_202_ACCEPTED
        response.headers["Location"] = (
            f"/api/accounts/{account_id}/integration/refresh/{result.refresh_id}"
        )
    return result


@router.get(f"{ACCOUNT}/refresh/{{refresh_id}}", response_model=RefreshOut)
async def get_refresh(
    account_id: DbId,
    refresh_id: uuid.UUID,
    actor: CurrentActor,
    uow: UowDep,
    c: ContainerDep,
) -> RefreshOut:
    return await c.integrations.refreshes.refresh_status(
        uow, actor, account_id, refresh_id
    )


@router.get(f"{ACCOUNT}/portfolio", response_model=list[PositionOut])
async def portfolio(
    account_id: DbId, actor: CurrentActor, uow: UowDep, c: ContainerDep
) -> list[PositionOut]:
    return await c.integrations.reads.positions(uow, actor, account_id)


@router.get(f"{ACCOUNT}/cash", response_model=list[CashOut])
async def cash(
    account_id: DbId, actor: CurrentActor, uow: UowDep, c: ContainerDep
) -> list[CashOut]:
    return await c.integrations.reads.cash(uow, actor, account_id)


@router.post(f"{ACCOUNT}/oauth/start", response_model=OAuthStartOut)
async def oauth_start(
    account_id: DbId, actor: CurrentActor, uow: UowDep, c: ContainerDep
) -> OAuthStartOut:
    return await c.integrations.oauth.oauth_start(uow, actor, account_id)


@router.post(
    "/api/integrations/refresh",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RefreshJobOut,
)
async def refresh_all(
    actor: CurrentActor, uow: UowDep, c: ContainerDep, response: Response
) -> RefreshJobOut:
    job = await c.integrations.refreshes.refresh_all(uow, actor)
    response.headers["Location"] = f"/api/integrations/refresh/{job.job_id}"
    return job


@router.get("/api/integrations/refresh/{job_id}", response_model=RefreshJobOut)
async def refresh_job(
    job_id: uuid.UUID, actor: CurrentActor, uow: UowDep, c: ContainerDep
) -> RefreshJobOut:
    return await c.integrations.refreshes.job(uow, actor, job_id)


@router.get("/api/integrations/health", response_model=list[HealthRowOut])
async def integrations_health(
    actor: CurrentActor, uow: UowDep, c: ContainerDep
) -> list[HealthRowOut]:
    return await c.integrations.reads.health(uow, actor)


@router.get("/api/integrations/schwab/callback", include_in_schema=False)
async def schwab_callback(
    request: Request,
    uow: UowDep,
    c: ContainerDep,
    code: Annotated[str, Query(min_length=1, max_length=2048)],
    state: Annotated[str, Query(min_length=1, max_length=512)],
) -> RedirectResponse:
    request_id = (request.headers.get("x-request-id") or uuid.uuid4().hex)[:128]
    try:
        account_id, ok, _message = await c.integrations.oauth.oauth_callback(
            uow, code, state, request_id
        )
    except AccountApiError as exc:
        if "json" in request.headers.get("accept", ""):
            raise
        return RedirectResponse(f"/?oauth=error&reason={exc.code}", status_code=303)
    return RedirectResponse(
        f"/?oauth={'ok' if ok else 'failed'}&account={account_id}", status_code=303
    )
