"""Registration, login and token refresh."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError

from account_api.auth.passwords import DUMMY_HASH, hash_password, verify_password
from account_api.auth.repository import UserRepository
from account_api.auth.schemas import LoginIn, RegisterIn, TokenOut, UserOut
from account_api.auth.tokens import TokenIssuer
from account_api.db import UnitOfWork
from account_api.errors import Conflict, NotAuthenticated
from account_api.tables import User


def _user_out(user: User) -> UserOut:
    return UserOut(
        id=user.id, email=user.email, name=user.name, base_currency=user.base_currency
    )


async def register(uow: UnitOfWork, body: RegisterIn) -> UserOut:
    async with uow:
        users = UserRepository(uow.session)
        if await users.by_email(body.email):
            raise Conflict("an account with this email already exists", field="email")
        user = await users.add(
            User(
                email=str(body.email),
                name=body.name,
                password_hash=hash_password(body.password.get_secret_value()),
            )
        )
        try:
            await uow.commit()
        except IntegrityError:
            raise Conflict(
                "an account with this email already exists", field="email"
            ) from None
        return _user_out(user)


async def login(uow: UnitOfWork, issuer: TokenIssuer, body: LoginIn) -> TokenOut:
    async with uow:
        users = UserRepository(uow.session)
        user = await users.by_email(body.email)
        ok, rehash = verify_password(
            user.password_hash if user else DUMMY_HASH, body.password.get_secret_value()
        )
        if not user or not ok:
            raise NotAuthenticated("wrong email or password")
        if rehash:
            user.password_hash = hash_password(body.password.get_secret_value())
            await uow.commit()
        pair = issuer.issue(user.id)
        return TokenOut(
            access_token=pair.access_token,
            refresh_token=pair.refresh_token,
            expires_in=pair.expires_in,
        )


async def refresh(uow: UnitOfWork, issuer: TokenIssuer, refresh_token: str) -> TokenOut:
    user_id = issuer.verify(refresh_token, "refresh")
    async with uow:
        if not await UserRepository(uow.session).get(user_id):
            raise NotAuthenticated("user no longer exists")
    pair = issuer.issue(user_id)
    return TokenOut(
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        expires_in=pair.expires_in,
    )


async def me(uow: UnitOfWork, user_id: int) -> UserOut:
    async with uow:
        user = await UserRepository(uow.session).get(user_id)
        if not user:
            raise NotAuthenticated("user no longer exists")
        return _user_out(user)
