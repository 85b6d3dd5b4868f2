"""Registration, sign-in (throttled, with the second factor), sign-in sessions (rotating refresh
tokens, sign-out, sign-out everywhere), password change and two-factor enrolment."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from brokerlink_shared.crypto import SecretBox
from sqlalchemy.exc import IntegrityError

from account_api.auth import two_factor
from account_api.auth.passwords import (
    DUMMY_HASH,
    hash_password_async,
    verify_password_async,
)
from account_api.auth.repository import (
    RecoveryCodeRepository,
    SessionRepository,
    UserRepository,
)
from account_api.auth.revocations import RevocationList
from account_api.auth.schemas import (
    LoginIn,
    PasswordChangeIn,
    RecoveryCodesOut,
    RegisterIn,
    TokenOut,
    TwoFactorDisableIn,
    TwoFactorSetupOut,
    UserOut,
)
from account_api.auth.tokens import RefreshToken, TokenIssuer, TokenPair
from account_api.config import Settings
from account_api.db import UnitOfWork
from account_api.errors import (
    Conflict,
    InvalidField,
    NotAuthenticated,
    TooManyRequests,
)
from account_api.tables import User
from account_api.throttling import ThrottleRepository


class SecondFactorRequired(NotAuthenticated):
    def __init__(self) -> None:
        super().__init__(
            "two-factor sign-in is on: send the code from your authenticator app "
            "(or a recovery code) as `code`",
            field="code",
        )
        self.code = "two_factor_required"


class SecondFactorWrong(NotAuthenticated):
    def __init__(self, message: str = "wrong or expired two-factor code") -> None:
        super().__init__(message, field="code")
        self.code = "two_factor_invalid"


@dataclass(frozen=True)
class _Limit:
    key: str
    max_count: int
    window_s: int


def _user_out(user: User) -> UserOut:
    return UserOut(
        id=user.id,
        email=user.email,
        name=user.name,
        base_currency=user.base_currency,
        two_factor_enabled=user.two_factor_enabled,
    )


def _token_out(pair: TokenPair) -> TokenOut:
    return TokenOut(
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        expires_in=pair.expires_in,
    )


class AuthService:
    def __init__(
        self,
        settings: Settings,
        issuer: TokenIssuer,
        secrets: SecretBox,
        revocations: RevocationList | None = None,
    ) -> None:
        self._settings = settings
        self._issuer = issuer
        self._secrets = secrets
        self._revocations = revocations

    # ---- registration and profile --------------------------------------------------------

    async def register(self, uow: UnitOfWork, body: RegisterIn) -> UserOut:
        password_hash = await hash_password_async(body.password.get_secret_value())
        async with uow:
            users = UserRepository(uow.session)
            if await users.by_email(body.email):
                raise Conflict(
                    "an account with this email already exists", field="email"
                )
            user = await users.add(
                User(email=str(body.email), name=body.name, password_hash=password_hash)
            )
            try:
                await uow.commit()
            except IntegrityError:
                raise Conflict(
                    "an account with this email already exists", field="email"
                ) from None
            return _user_out(user)

    async def me(self, uow: UnitOfWork, user_id: int) -> UserOut:
        async with uow:
            user = await UserRepository(uow.session).get(user_id)
            if not user:
                raise NotAuthenticated("user no longer exists")
            return _user_out(user)

    # ---- sign-in -------------------------------------------------------------------------

    def _login_limits(self, email: str, client: str) -> tuple[_Limit, _Limit]:
        s = self._settings
        digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:40]
        return (
            _Limit(
                f"login:acct:{digest}",
                s.login_account_max_failures,
                s.login_account_window_s,
            ),
            _Limit(
                f"login:client:{client[:64]}",
                s.login_client_max_failures,
                s.login_client_window_s,
            ),
        )

    async def _check(self, throttle: ThrottleRepository, *limits: _Limit) -> None:
        wait = await throttle.blocked_for(
            [(x.key, x.max_count, x.window_s) for x in limits]
        )
        if wait is not None:
            raise TooManyRequests("too many failed attempts; try again later", wait)

    async def login(self, uow: UnitOfWork, body: LoginIn, client: str) -> TokenOut:
        """Unknown e-mail or wrong password: the same answer after the same work (one hash
        verification, the same counters)."""
        account, by_client = self._login_limits(body.email, client)
        password = body.password.get_secret_value()
        async with uow:
            throttle = ThrottleRepository(uow.session)
            await self._check(throttle, account, by_client)
            user = await UserRepository(uow.session).by_email(body.email)
            ok, rehash = await verify_password_async(
                user.password_hash if user else DUMMY_HASH, password
            )
            failure: NotAuthenticated | None = None
            if user is None or not ok:
                failure = NotAuthenticated("wrong email or password")
            elif user.two_factor_enabled:
                failure = await self._second_factor(uow, user, body)
            if failure is not None:
                if not isinstance(failure, SecondFactorRequired):
                    await throttle.hit(account.key, account.window_s)
                    await throttle.hit(by_client.key, by_client.window_s)
                    await uow.commit()
                raise failure
            if user is None:
                raise RuntimeError("a login without failure has a user")
            await throttle.clear(account.key)
            if rehash:
                user.password_hash = await hash_password_async(password)
            pair = self._open_session(uow, user.id)
            await uow.commit()
            return _token_out(pair)

    async def _second_factor(
        self, uow: UnitOfWork, user: User, body: LoginIn
    ) -> NotAuthenticated | None:
        """None when the code is right (and spends it); else the error to answer with."""
        if body.code is None:
            return SecondFactorRequired()
        locked = await UserRepository(uow.session).get(user.id, for_update=True)
        if locked is None:
            raise RuntimeError("the user being signed in exists")
        if await self._spend_code(uow, locked, body.code.get_secret_value()):
            return None
        secret = self._totp_secret(locked)
        if secret and two_factor.was_replayed(
            secret, body.code.get_secret_value(), locked.two_factor_last_step
        ):
            return SecondFactorWrong(
                "this code was already used; wait for the next one"
            )
        return SecondFactorWrong()

    async def _spend_code(self, uow: UnitOfWork, user: User, code: str) -> bool:
        """Accept a TOTP code (once per time step) or an unused recovery code."""
        secret = self._totp_secret(user)
        if secret is not None:
            step = two_factor.matching_step(secret, code, user.two_factor_last_step)
            if step is not None:
                user.two_factor_last_step = step
                return True
        if two_factor.looks_like_recovery_code(code):
            return await RecoveryCodeRepository(uow.session).use(
                user.id, two_factor.recovery_hash(code)
            )
        return False

    def _totp_secret(self, user: User) -> str | None:
        if not user.two_factor_secret_enc:
            return None
        return self._secrets.decrypt(user.two_factor_secret_enc)

    def _open_session(self, uow: UnitOfWork, user_id: int) -> TokenPair:
        refresh = RefreshToken.new(uuid.uuid4())
        SessionRepository(uow.session).add(
            refresh.session_id, user_id, refresh.hash, self._issuer.refresh_s
        )
        return self._issuer.pair(user_id, refresh)

    # ---- sessions ------------------------------------------------------------------------

    async def refresh(self, uow: UnitOfWork, value: str) -> TokenOut:
        """Rotate: the presented token must be the family's newest; an older one means the
        family leaked, so the whole sign-in session ends."""
        token = RefreshToken.parse(value)
        async with uow:
            sessions = SessionRepository(uow.session)
            row = await sessions.locked(token.session_id)
            if (
                row is None
                or row.revoked_at is not None
                or row.expires_at <= datetime.now(UTC)
            ):
                raise NotAuthenticated("refresh token expired or signed out")
            if not hmac.compare_digest(row.token_hash, token.hash):
                await sessions.revoke(row.id, "reuse")
                await uow.commit()
                self._note_revoked(row.id)
                raise NotAuthenticated(
                    "this refresh token was already used; the session has been signed "
                    "out everywhere it was used"
                )
            rotated = RefreshToken.new(row.id)
            row.token_hash = rotated.hash
            row.generation += 1
            row.last_used_at = datetime.now(UTC)
            user_id = row.user_id
            await uow.commit()
        return _token_out(self._issuer.pair(user_id, rotated))

    async def logout(self, uow: UnitOfWork, session_id: uuid.UUID) -> None:
        async with uow:
            await SessionRepository(uow.session).revoke(session_id, "logout")
            await uow.commit()
        self._note_revoked(session_id)

    async def logout_all(self, uow: UnitOfWork, user_id: int) -> None:
        async with uow:
            await SessionRepository(uow.session).revoke_all(user_id, "logout_all")
            await uow.commit()
        if self._revocations is not None:
            await self._revocations.poll_once()

    async def change_password(
        self,
        uow: UnitOfWork,
        user_id: int,
        session_id: uuid.UUID,
        body: PasswordChangeIn,
    ) -> None:
        """Needs the current password; every other session of the user is signed out."""
        new_hash = await hash_password_async(body.new_password.get_secret_value())
        async with uow:
            throttle = ThrottleRepository(uow.session)
            limit = _Limit(
                f"password:{user_id}",
                self._settings.login_account_max_failures,
                self._settings.login_account_window_s,
            )
            await self._check(throttle, limit)
            user = await UserRepository(uow.session).get(user_id, for_update=True)
            if user is None:
                raise NotAuthenticated("user no longer exists")
            ok, _ = await verify_password_async(
                user.password_hash, body.current_password.get_secret_value()
            )
            if not ok:
                await throttle.hit(limit.key, limit.window_s)
                await uow.commit()
                raise InvalidField(
                    "the current password is wrong", field="current_password"
                )
            user.password_hash = new_hash
            user.updated_at = datetime.now(UTC)
            await SessionRepository(uow.session).revoke_all(
                user_id, "password_change", keep=session_id
            )
            await uow.commit()
        if self._revocations is not None:
            await self._revocations.poll_once()

    def _note_revoked(self, session_id: uuid.UUID) -> None:
        if self._revocations is not None:
            self._revocations.note_session(session_id)

    # ---- two-factor enrolment ------------------------------------------------------------

    async def two_factor_setup(
        self, uow: UnitOfWork, user_id: int
    ) -> TwoFactorSetupOut:
        """A new secret, stored (encrypted) but not in force until confirmed with a code."""
        async with uow:
            user = await UserRepository(uow.session).get(user_id, for_update=True)
            if user is None:
                raise NotAuthenticated("user no longer exists")
            if user.two_factor_enabled:
                raise Conflict(
                    "two-factor sign-in is already on; turn it off first",
                    field="two_factor",
                )
            secret = two_factor.new_secret()
            user.two_factor_secret_enc = self._secrets.encrypt(secret)
            user.two_factor_last_step = None
            await uow.commit()
            uri = two_factor.provisioning_uri(secret, user.email)
        return TwoFactorSetupOut(
            secret=secret, otpauth_uri=uri, qr_svg=two_factor.qr_svg(uri)
        )

    async def two_factor_confirm(
        self, uow: UnitOfWork, user_id: int, session_id: uuid.UUID, code: str
    ) -> RecoveryCodesOut:
        """Turn two-factor sign-in on; every other session is signed out (one signed in with
        the password alone would otherwise keep going), this one stays."""
        async with uow:
            throttle = ThrottleRepository(uow.session)
            limit = self._code_limit(user_id)
            await self._check(throttle, limit)
            user = await UserRepository(uow.session).get(user_id, for_update=True)
            if user is None:
                raise NotAuthenticated("user no longer exists")
            if user.two_factor_enabled:
                raise Conflict("two-factor sign-in is already on", field="two_factor")
            secret = self._totp_secret(user)
            if secret is None:
                raise Conflict(
                    "start with POST /api/auth/2fa/setup", field="two_factor"
                )
            step = two_factor.matching_step(secret, code, user.two_factor_last_step)
            if step is None:
                await throttle.hit(limit.key, limit.window_s)
                await uow.commit()
                raise InvalidField("wrong or expired code", field="code")
            codes = two_factor.new_recovery_codes()
            await RecoveryCodeRepository(uow.session).replace(
                user_id, [two_factor.recovery_hash(c) for c in codes]
            )
            user.two_factor_enabled = True
            user.two_factor_last_step = step
            await SessionRepository(uow.session).revoke_all(
                user_id, "two_factor_on", keep=session_id
            )
            await uow.commit()
        if self._revocations is not None:
            await self._revocations.poll_once()
        return RecoveryCodesOut(recovery_codes=codes)

    async def two_factor_disable(
        self, uow: UnitOfWork, user_id: int, body: TwoFactorDisableIn
    ) -> None:
        async with uow:
            throttle = ThrottleRepository(uow.session)
            limit = self._code_limit(user_id)
            await self._check(throttle, limit)
            user = await UserRepository(uow.session).get(user_id, for_update=True)
            if user is None:
                raise NotAuthenticated("user no longer exists")
            if not user.two_factor_enabled:
                raise Conflict("two-factor sign-in is not on", field="two_factor")
            ok, _ = await verify_password_async(
                user.password_hash, body.password.get_secret_value()
            )
            if not ok or not await self._spend_code(
                uow, user, body.code.get_secret_value()
            ):
                await throttle.hit(limit.key, limit.window_s)
                await uow.commit()
                raise InvalidField(
                    "wrong password or code", field="password" if not ok else "code"
                )
            user.two_factor_enabled = False
            user.two_factor_secret_enc = None
            user.two_factor_last_step = None
            await RecoveryCodeRepository(uow.session).clear(user_id)
            await uow.commit()

    def _code_limit(self, user_id: int) -> _Limit:
        return _Limit(
            f"2fa:{user_id}",
            self._settings.two_factor_max_failures,
            self._settings.two_factor_window_s,
        )
