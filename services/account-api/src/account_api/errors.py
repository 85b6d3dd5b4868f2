"""One error tree for account-api. Plain exceptions: `exception_handlers` maps them to HTTP."""

from __future__ import annotations

import math


class AccountApiError(Exception):
    """Base of every expected failure; carries its HTTP status and, when known, the field."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotAuthenticated(AccountApiError):
    status_code = 401
    code = "not_authenticated"


class NotFound(AccountApiError):
    status_code = 404
    code = "not_found"


class AccountNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("account not found")


class Conflict(AccountApiError):
    status_code = 409
    code = "conflict"


class InvalidField(AccountApiError):
    status_code = 422
    code = "invalid_field"


class IntegrationNotConfigured(Conflict):
    def __init__(self) -> None:
        super().__init__("this account has no integration configured")
        self.code = "integration_not_configured"


class TooManyRequests(AccountApiError):
    """Throttled: answered with `Retry-After`."""

    status_code = 429
    code = "too_many_requests"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, math.ceil(retry_after_s))


class UpstreamFailed(AccountApiError):
    status_code = 502
    code = "upstream_failed"


class ServiceUnavailable(AccountApiError):
    status_code = 503
    code = "unavailable"
