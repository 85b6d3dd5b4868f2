"""Deprecated legacy routes (`/api/ib/*`, `/api/schwab/*`): every answer, errors included,
carries `Deprecation`, `Sunset` and a `Link` to the per-account route that replaces it."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from account_api.compat.schemas import (
    IBBalanceOut,
    IBSettingsIn,
    IBSettingsOut,
    SchwabSettingsIn,
    SchwabSettingsOut,
    SchwabTokenStatusOut,
)
from account_api.compat.service import CompatService, usage
from account_api.deps import ContainerDep, CurrentActor, UowDep
from account_api.errors import AccountApiError
from account_api.exception_handlers import error_response, validation_error_response

DEPRECATED_ON = "@1795478400"  # 2026-11-24 (RFC 9745 structured date)
SUNSET = "Mon, 31 May 2027 00:00:00 GMT"  # RFC 8594: removed with the first release after this date
SUCCESSOR = "/api/accounts/{id}/integration"
MAX_ID = 9_223_372_036_854_775_807


class DeprecatedRoute(APIRoute):
    """Adds the deprecation headers to every answer, including errors, and logs the use."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                response = await original(request)
            except AccountApiError as exc:
                response = error_response(exc)
            except RequestValidationError as exc:
                response = validation_error_response(exc)
            successor = getattr(request.state, "successor", None) or SUCCESSOR
            response.headers["Deprecation"] = DEPRECATED_ON
            response.headers["Sunset"] = SUNSET
            response.headers["Link"] = f'<{successor}>; rel="successor-version"'
            return response

        return handler


router = APIRouter(tags=["legacy (deprecated)"], route_class=DeprecatedRoute)


def _service(c: ContainerDep) -> CompatService:
    return CompatService(c.integrations)


def _seen(request: Request, user_id: int, successor: str | None) -> None:
    usage.use(user_id, f"{request.method} {request.url.path}")
    if successor:
        request.state.successor = successor


def _account_link(account_id: int | None) -> str | None:
    return f"/api/accounts/{account_id}/integration" if account_id else None


@router.get("/api/ib/settings", response_model=IBSettingsOut, deprecated=True)
async def get_ib_settings(
    request: Request,
    actor: CurrentActor,
    uow: UowDep,
    c: ContainerDep,
    target_account_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> IBSettingsOut:
    out = await _service(c).ib_settings(uow, actor, target_account_id)
    _seen(request, actor.user_id, _account_link(out.target_account_id))
    return out


@router.post("/api/ib/settings", response_model=IBSettingsOut, deprecated=True)
async def post_ib_settings(
    request: Request,
    body: IBSettingsIn,
    actor: CurrentActor,
    uow: UowDep,
    c: ContainerDep,
) -> IBSettingsOut:
    _seen(request, actor.user_id, _account_link(body.target_account_id))
    out = await _service(c).save_ib_settings(uow, actor, body)
    request.state.successor = _account_link(out.target_account_id)
    return out


@router.get("/api/ib/balance", response_model=IBBalanceOut, deprecated=True)
async def get_ib_balance(
    request: Request, actor: CurrentActor, uow: UowDep, c: ContainerDep
) -> IBBalanceOut:
    out = await _service(c).ib_balance(uow, actor)
    _seen(request, actor.user_id, _account_link(out.account_id))
    return out


@router.post("/api/ib/portfolio/refresh", status_code=202, deprecated=True)
async def post_ib_refresh(
    request: Request, actor: CurrentActor, uow: UowDep, c: ContainerDep
) -> dict[str, Any]:
    _seen(request, actor.user_id, "/api/integrations/refresh")
    return {"refreshes": await _service(c).ib_refresh(uow, actor)}


@router.get("/api/schwab/settings", response_model=SchwabSettingsOut, deprecated=True)
async def get_schwab_settings(
    request: Request, actor: CurrentActor, uow: UowDep, c: ContainerDep
) -> SchwabSettingsOut:
    out = await _service(c).schwab_settings(uow, actor)
    _seen(
        request,
        actor.user_id,
        _account_link(out.accounts[0]["account_id"] if out.accounts else None),
    )
    return out


@router.post("/api/schwab/settings", response_model=SchwabSettingsOut, deprecated=True)
async def post_schwab_settings(
    request: Request,
    body: SchwabSettingsIn,
    actor: CurrentActor,
    uow: UowDep,
    c: ContainerDep,
) -> SchwabSettingsOut:
    _seen(request, actor.user_id, None)
    out = await _service(c).save_schwab_settings(uow, actor, body)
    request.state.successor = _account_link(
        out.accounts[0]["account_id"] if out.accounts else None
    )
    return out


@router.get(
    "/api/schwab/token-status", response_model=SchwabTokenStatusOut, deprecated=True
)
async def get_schwab_token_status(
    request: Request, actor: CurrentActor, uow: UowDep, c: ContainerDep
) -> SchwabTokenStatusOut:
    _seen(request, actor.user_id, None)
    return await _service(c).schwab_token_status(uow, actor)
