"""Two-factor authentication with TOTP (RFC 6238: SHA-1, 6 digits, 30-second steps — what
authenticator apps and the legacy app use) and single-use recovery codes. Pure functions; the
secret is stored encrypted (`users.two_factor_secret_enc`), recovery codes as hashes."""

from __future__ import annotations

import hashlib
import hmac
import io
import secrets
import time

import pyotp
import segno

ISSUER = "brokerlink"
STEP_S = 30
RECOVERY_CODES = 10
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"


def new_secret() -> str:
    return pyotp.random_base32()  # 160 bits, base32


def provisioning_uri(secret: str, email: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=ISSUER)


def qr_svg(uri: str) -> str:
    """The otpauth URI as an inline SVG QR code."""
    out = io.BytesIO()
    segno.make(uri, error="m").save(out, kind="svg", scale=4, xmldecl=False, svgns=True)
    return out.getvalue().decode()


def normalise_secret(secret: str) -> str:
    """A base32 secret as stored by other apps (spaces, lower case, no padding) in pyotp form."""
    cleaned = "".join(secret.split()).upper().rstrip("=")
    return cleaned


def matching_step(
    secret: str, code: str, after_step: int | None, now: float | None = None
) -> int | None:
    """The time step whose code `code` is (the current one or a neighbour, for clock drift),
    provided it is later than `after_step` — a code is accepted once. None when it matches none."""
    code = code.strip().replace(" ", "")
    if not (code.isdigit() and len(code) == 6):
        return None
    totp = pyotp.TOTP(normalise_secret(secret))
    current = int((time.time() if now is None else now) // STEP_S)
    for step in (current, current - 1, current + 1):
        if after_step is not None and step <= after_step:
            continue
        if hmac.compare_digest(totp.at(step * STEP_S), code):
            return step
    return None


def was_replayed(secret: str, code: str, after_step: int | None) -> bool:
    """Whether `code` is valid now but its step was already used (for a clear error)."""
    return (
        after_step is not None
        and matching_step(secret, code, None) is not None
        and matching_step(secret, code, after_step) is None
    )


def new_recovery_codes() -> list[str]:
    def one() -> str:
        raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(10))
        return f"{raw[:5]}-{raw[5:]}"

    return [one() for _ in range(RECOVERY_CODES)]


def recovery_hash(code: str) -> str:
    normal = code.strip().lower().replace("-", "").replace(" ", "")
    return hashlib.sha256(f"brokerlink-recovery:{normal}".encode()).hexdigest()


def looks_like_recovery_code(code: str) -> bool:
    normal = code.strip().lower().replace("-", "").replace(" ", "")
    return len(normal) == 10 and all(c in _RECOVERY_ALPHABET for c in normal)
