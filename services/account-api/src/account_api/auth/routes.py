"""Auth routes: register, sign-in, token refresh, sign-out, password, two-factor, me."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from account_api.auth.schemas import (
    LoginIn,
    PasswordChangeIn,
    RecoveryCodesOut,
    RefreshIn,
    RegisterIn,
    TokenOut,
    TwoFactorCodeIn,
    TwoFactorDisableIn,
    TwoFactorSetupOut,
    UserOut,
)
from account_api.deps import ContainerDep, CurrentActor, UowDep

router = APIRouter(prefix="/api/auth", tags=["auth"])
NO_CONTENT = status.HTTP_204_NO_CONTENT


@router.post("/register", status_code=status.HTTP_201_CREATED, response_model=UserOut)
async def register(body: RegisterIn, uow: UowDep, c: ContainerDep) -> UserOut:
    return await c.auth.register(uow, body)


@router.post(
    "/login",
    response_model=TokenOut,
    responses={429: {"description": "too many failed attempts; see Retry-After"}},
)
async def login(
    body: LoginIn, request: Request, uow: UowDep, c: ContainerDep
) -> TokenOut:
    client = request.client.host if request.client else "unknown"
    return await c.auth.login(uow, body, client)


@router.post("/refresh", response_model=TokenOut)
async def refresh(body: RefreshIn, uow: UowDep, c: ContainerDep) -> TokenOut:
    return await c.auth.refresh(uow, body.refresh_token)


@router.post("/logout", status_code=NO_CONTENT)
async def logout(actor: CurrentActor, uow: UowDep, c: ContainerDep) -> Response:
    """Sign this session out: its refresh token and access tokens stop working."""
    if actor.session_id is None:
        raise RuntimeError("a signed-in actor has a session")
    await c.auth.logout(uow, actor.session_id)
    return Response(status_code=NO_CONTENT)


@router.post("/logout-all", status_code=NO_CONTENT)
async def logout_all(actor: CurrentActor, uow: UowDep, c: ContainerDep) -> Response:
    """Sign out every session of the user, this one included."""
    await c.auth.logout_all(uow, actor.user_id)
    return Response(status_code=NO_CONTENT)


@router.post("/password", status_code=NO_CONTENT)
async def change_password(
    body: PasswordChangeIn, actor: CurrentActor, uow: UowDep, c: ContainerDep
) -> Response:
    """Change the password; every other session is signed out, this one stays."""
    if actor.session_id is None:
        raise RuntimeError("a signed-in actor has a session")
    await c.auth.change_password(uow, actor.user_id, actor.session_id, body)
    return Response(status_code=NO_CONTENT)


@router.post("/2fa/setup", response_model=TwoFactorSetupOut)
async def two_factor_setup(
    actor: CurrentActor, uow: UowDep, c: ContainerDep
) -> TwoFactorSetupOut:
    """A new TOTP secret (with its otpauth URI and QR code); on after `/2fa/confirm`."""
    return await c.auth.two_factor_setup(uow, actor.user_id)


@router.post("/2fa/confirm", response_model=RecoveryCodesOut)
async def two_factor_confirm(
    body: TwoFactorCodeIn, actor: CurrentActor, uow: UowDep, c: ContainerDep
) -> RecoveryCodesOut:
    """Turn two-factor sign-in on with a code from the app; other sessions are signed out."""
    if actor.session_id is None:
        raise RuntimeError("a signed-in actor has a session")
    return await c.auth.two_factor_confirm(
        uow, actor.user_id, actor.session_id, body.code.get_secret_value()
    )


@router.post("/2fa/disable", status_code=NO_CONTENT)
async def two_factor_disable(
    body: TwoFactorDisableIn, actor: CurrentActor, uow: UowDep, c: ContainerDep
) -> Response:
    await c.auth.two_factor_disable(uow, actor.user_id, body)
    return Response(status_code=NO_CONTENT)


@router.get("/me", response_model=UserOut)
async def me(actor: CurrentActor, uow: UowDep, c: ContainerDep) -> UserOut:
    return await c.auth.me(uow, actor.user_id)
