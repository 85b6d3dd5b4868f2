"""`BodySizeLimit`: an ASGI middleware answering 413 to request bodies over a size — announced
by Content-Length or streamed in chunks — before any route sees them. The body (at most the
limit) is read first and replayed to the app."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from account_api.errors import AccountApiError
from account_api.exception_handlers import error_response


class BodyTooLarge(AccountApiError):
    status_code = 413
    code = "body_too_large"


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # one constant answer, rendered once rather than on every request
        self.too_large = error_response(
            BodyTooLarge(f"the request body is over {max_bytes} bytes")
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            declared = value.isdigit() and int(value)
            if name == b"content-length" and declared and declared > self.max_bytes:
                await self.too_large(scope, receive, send)
                return
        buffered: list[Message] = []
        size = 0
        while True:
            message = await receive()
            buffered.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self.too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return buffered.pop(0) if buffered else await receive()

        await self.app(scope, replay, send)
