"""The one place the error tree meets HTTP: `error_response` renders an `AccountApiError`,
`validation_error_response` a request that failed validation, and `add_exception_handlers`
installs both for the whole app (the legacy routes call them too)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy import exc as sa_exc

from account_api.db import is_transient
from account_api.errors import AccountApiError, ServiceUnavailable, TooManyRequests
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
    if isinstance(exc, TooManyRequests):
        headers = {"Retry-After": str(exc.retry_after_s)}
        body["retry_after_s"] = exc.retry_after_s
    return JSONBytes(body, status_code=exc.status_code, headers=headers)


_LOCATIONS = {"body", "query", "path", "header", "cookie"}


# Runs of three or more characters that are not separators a message might quote around.
_PIECES = re.compile(r"[^\s@\[\]()'\",;:<>]{3,}")


def _strings(value: Any) -> Iterator[str]:
    """Every string (and number) inside a rejected input, keys included."""
    if isinstance(value, str | bytes):
        yield value.decode(errors="replace") if isinstance(value, bytes) else value
    elif isinstance(value, int | float):
        yield str(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list | tuple | set):
        for item in value:
            yield from _strings(item)


# Messages that tell something of the input by construction: a UUID's first bad character and
# the lengths it found, and a too long or too short value's actual length (`, not 390`).
_TELLS_INPUT = {"uuid_parsing": "Input should be a valid UUID"}
_ACTUAL_LENGTH = re.compile(r", not \d+$")


def _rule(error: dict[str, Any]) -> str:
    """The error's message, unless it quotes any part of the input (email validation, for
    one, names the offending part): then only the rule's name."""
    kind = str(error.get("type", ""))
    if kind in _TELLS_INPUT:
        return _TELLS_INPUT[kind]
    message = _ACTUAL_LENGTH.sub("", str(error.get("msg", "invalid value")))
    if message.startswith("value is not a valid email address"):
        return "value is not a valid email address"  # the validator quotes and decodes parts
    for text in _strings(error.get("input")):
        for piece in (text, *_PIECES.findall(text)):
            # an empty or one-letter input is "in" every message; it quotes nothing
            if len(piece) >= 3 and piece in message:
                return f"invalid value ({error.get('type', 'value_error')})"
    return message


def _field(loc: Sequence[Any]) -> str | None:
    parts = [str(p) for p in loc]
    if parts and parts[0] in _LOCATIONS:
        parts = parts[1:]
    return ".".join(parts) or None


def validation_error_response(exc: RequestValidationError) -> JSONBytes:
    """The one rendering of a request that failed validation: for each error its location,
    rule and type — never the rejected input (FastAPI's default echoes it)."""
    errors = [
        {
            "loc": list(error.get("loc", ())),
            "msg": _rule(error),
            "type": str(error.get("type", "value_error")),
        }
        for error in exc.errors()
    ]
    body: dict[str, object] = {"detail": errors, "code": "invalid_field"}
    field = _field(errors[0]["loc"]) if errors else None
    if field:
        body["field"] = field
    return JSONBytes(body, status_code=422)


def add_exception_handlers(app: FastAPI) -> None:
    """Map the error tree (and request validation) to HTTP for the whole app."""

    async def handle(_request: Request, exc: Exception) -> JSONBytes:
        if not isinstance(exc, AccountApiError):
            raise exc
        return error_response(exc)

    async def invalid(_request: Request, exc: Exception) -> JSONBytes:
        if not isinstance(exc, RequestValidationError):
            raise exc
        return validation_error_response(exc)

    app.add_exception_handler(AccountApiError, handle)
    app.add_exception_handler(RequestValidationError, invalid)

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
