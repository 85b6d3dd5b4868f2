"""The one place the error tree meets HTTP: `error_response` renders an `AccountApiError`,
`add_exception_handlers` installs it for the whole app."""

from __future__ import annotations

import asyncio

import psycopg
from fastapi import FastAPI, Request
from sqlalchemy import exc as sa_exc

from account_api.db import is_transient
from account_api.errors import AccountApiError, ServiceUnavailable
from account_api.responses import JSONBytes

_pool_checks: set[asyncio.Task[None]] = set()


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


def add_exception_handlers(app: FastAPI) -> None:
    """Map the error tree to HTTP for the whole app."""

    async def handle(_request: Request, exc: Exception) -> JSONBytes:
        assert isinstance(exc, AccountApiError)
        return error_response(exc)

    app.add_exception_handler(AccountApiError, handle)

    async def database_away(request: Request, exc: Exception) -> JSONBytes:
        if not is_transient(exc):
            raise exc
        # Drop the pool's other connections to a restarted server now, not one request each.
        container = getattr(request.app.state, "container", None)
        if container is not None and not _pool_checks:
            task = asyncio.get_running_loop().create_task(container.read_pool.check())
            _pool_checks.add(task)
            task.add_done_callback(_pool_checks.discard)
        response = error_response(
            ServiceUnavailable(
                "the database is unavailable for a moment; retry shortly"
            )
        )
        response.headers["Retry-After"] = "2"
        return response

    for kind in (psycopg.OperationalError, sa_exc.DBAPIError, sa_exc.TimeoutError):
        app.add_exception_handler(kind, database_away)
