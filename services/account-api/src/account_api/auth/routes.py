"""Auth routes: register, login, refresh, me."""

from __future__ import annotations

from fastapi import APIRouter, status

from account_api.auth import service
from account_api.auth.schemas import LoginIn, RefreshIn, RegisterIn, TokenOut, UserOut
from account_api.deps import ContainerDep, CurrentActor, UowDep

router = APIRouter(prefix="/api/auth", tags=["auth"])


@router.post("/register", status_code=status.HTTP_201_CREATED, response_model=UserOut)
async def register(body: RegisterIn, uow: UowDep) -> UserOut:
    return await service.register(uow, body)


@router.post("/login", response_model=TokenOut)
async def login(body: LoginIn, uow: UowDep, container: ContainerDep) -> TokenOut:
    return await service.login(uow, container.issuer, body)


@router.post("/refresh", response_model=TokenOut)
async def refresh(body: RefreshIn, uow: UowDep, container: ContainerDep) -> TokenOut:
    return await service.refresh(uow, container.issuer, body.refresh_token)


@router.get("/me", response_model=UserOut)
async def me(actor: CurrentActor, uow: UowDep) -> UserOut:
    return await service.me(uow, actor.user_id)
