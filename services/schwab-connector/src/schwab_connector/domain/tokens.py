"""Token lifecycle rules: when to refresh, when a login is expiring soon or needs re-authentication.

The token object is schwab-py's: `{"creation_timestamp": epoch s, "token": {..., "expires_at": epoch s}}`.
The refresh token lives a fixed time from the login (creation_timestamp), however often it is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from brokerlink_shared.contracts.values import IntegrationStatus

# Schwab answers these when a refresh token is dead; all mean "log in again".
REAUTH_ERRORS = frozenset({"invalid_grant", "unsupported_token_type", "invalid_client"})


@dataclass(frozen=True, slots=True)
class LoginTokenTimes:
    """When a login's access and refresh tokens run out."""

    access_expires_at: datetime
    refresh_expires_at: datetime

    def sort_key(self) -> tuple[datetime, datetime]:
        return (self.refresh_expires_at, self.access_expires_at)


def token_times(token_object: dict[str, Any], refresh_ttl_s: float) -> LoginTokenTimes:
    """Read the expiry times out of a schwab-py token object."""
    created = datetime.fromtimestamp(float(token_object["creation_timestamp"]), UTC)
    token = token_object["token"]
    if "expires_at" in token:
        access = datetime.fromtimestamp(float(token["expires_at"]), UTC)
    else:
        access = created + timedelta(seconds=float(token.get("expires_in", 0)))
    return LoginTokenTimes(access, created + timedelta(seconds=refresh_ttl_s))


def is_newer(candidate: LoginTokenTimes, current: LoginTokenTimes | None) -> bool:
    """A later login wins; within one login, a later access token wins."""
    return current is None or candidate.sort_key() > current.sort_key()


def needs_access_refresh(
    times: LoginTokenTimes, now: datetime, margin_s: float
) -> bool:
    """True once the access token is within `margin_s` of expiry (or past it)."""
    return now >= times.access_expires_at - timedelta(seconds=margin_s)


def refresh_token_alive(times: LoginTokenTimes, now: datetime) -> bool:
    return now < times.refresh_expires_at


def lifecycle_status(
    times: LoginTokenTimes, now: datetime, expiring_soon_s: float
) -> IntegrationStatus:
    """connected, expiring_soon (within the threshold of the refresh token's end) or reauth_required."""
    if not refresh_token_alive(times, now):
        return IntegrationStatus.REAUTH_REQUIRED
    if now >= times.refresh_expires_at - timedelta(seconds=expiring_soon_s):
        return IntegrationStatus.EXPIRING_SOON
    return IntegrationStatus.CONNECTED


def is_reauth_error(oauth_error: str | None) -> bool:
    return (oauth_error or "") in REAUTH_ERRORS
