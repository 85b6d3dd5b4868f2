"""One error tree for account-api, mapped to HTTP in one place (`add_exception_handlers`)."""

from __future__ import annotations

import asyncio

import psycopg
from fastapi import FastAPI, Request
from sqlalchemy import exc as sa_exc

from account_api.db import is_transient
from account_api.responses import JSONBytes


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


class UpstreamFailed(AccountApiError):
    status_code = 502
    code = "upstream_failed"


class ServiceUnavailable(AccountApiError):
    status_code = 503
    code = "unavailable"


def error_response(exc: AccountApiError) -> JSONBytes:
    """The one rendering of an AccountApiError: `{detail, code, field}` with its status."""
    body: dict[str, object] = {"detail": exc.message, "code": exc.code}
    if exc.field:
        body["field"] = exc.field
    if exc.status_code == 422:
        # Same shape as FastAPI's own validation errors, so clients handle one format.
        loc = ["body", *exc.field.split(".")] if exc.field else ["body"]
        body["detail"] = [{"loc": loc, "msg": exc.message, "type": exc.code}]
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    return JSONBytes(body, status_code=exc.status_code, headers=headers)


_pool_checks: set[asyncio.Task[None]] = set()


def add_exception_handlers(app: FastAPI) -> None:
    """Map the error tree to HTTP for the whole app."""

    async def handle(_request: Request, exc: Exception) -> JSONBytes:
        assert isinstance(exc, AccountApiError)
        return error_response(exc)

    app.add_exception_handler(AccountApiError, handle)

    async def database_away(_request: Request, exc: Exception) -> JSONBytes:
        if not is_transient(exc):
            raise exc
        response = error_response(
            ServiceUnavailable(
                "the database is unavailable for a moment; retry shortly"
            )
        )
        response.headers["Retry-After"] = "2"
        return response

    for kind in (psycopg.OperationalError, sa_exc.DBAPIError, sa_exc.TimeoutError):
        app.add_exception_handler(kind, database_away)
