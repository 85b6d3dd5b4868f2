"""The one place the error tree meets HTTP: `error_response` renders an `AccountApiError`,
`add_exception_handlers` installs it for the whole app."""

from __future__ import annotations

from fastapi import FastAPI, Request

from account_api.errors import AccountApiError
from account_api.responses import JSONBytes


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
