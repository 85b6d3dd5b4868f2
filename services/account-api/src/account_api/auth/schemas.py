"""Request and response models of the auth routes."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, EmailStr, Field, SecretStr

from account_api.inputs import InputModel

Password = Annotated[SecretStr, Field(min_length=8, max_length=256)]
# A 6-digit TOTP code or a recovery code (xxxxx-xxxxx).
SecondFactor = Annotated[SecretStr, Field(min_length=6, max_length=16)]


class RegisterIn(InputModel):
    email: Annotated[EmailStr, Field(max_length=254)]
    password: Password
    name: Annotated[str, Field(min_length=1, max_length=200)]


class LoginIn(InputModel):
    email: Annotated[str, Field(min_length=1, max_length=254)]
    password: Annotated[SecretStr, Field(min_length=1, max_length=256)]
    code: SecondFactor | None = Field(
        default=None,
        description="required when two-factor sign-in is on: the authenticator's code "
        "or a recovery code",
    )


class RefreshIn(InputModel):
    refresh_token: Annotated[str, Field(min_length=1, max_length=4096)]


class PasswordChangeIn(InputModel):
    current_password: Annotated[SecretStr, Field(min_length=1, max_length=256)]
    new_password: Password


class TwoFactorCodeIn(InputModel):
    code: SecondFactor


class TwoFactorDisableIn(InputModel):
    password: Annotated[SecretStr, Field(min_length=1, max_length=256)]
    code: SecondFactor


class TokenOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str = "bearer"  # noqa: S105 - OAuth's token type, not a secret
    expires_in: int


class UserOut(BaseModel):
    id: int
    email: str
    name: str
    base_currency: str
    two_factor_enabled: bool = False


class TwoFactorSetupOut(BaseModel):
    secret: str = Field(description="base32, for typing into an authenticator by hand")
    otpauth_uri: str
    qr_svg: str


class RecoveryCodesOut(BaseModel):
    recovery_codes: list[str] = Field(
        description="each usable once instead of a code; shown only now"
    )
