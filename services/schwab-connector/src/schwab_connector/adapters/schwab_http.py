"""schwab-py's async client pointed at a configurable origin, with retries and a shared rate budget.

schwab-py hard-codes `https://api.schwabapi.com` for both the Trader API and the token endpoint. We
do not fork it: a request event hook on the client's httpx session (authlib's AsyncOAuth2Client)
rewrites scheme, host and port of every request bound for that host to `api_base_url`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import httpx
import orjson
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from schwab.auth import TOKEN_ENDPOINT, client_from_access_functions
from schwab.client import AsyncClient

from schwab_connector.domain.retry import is_retryable, parse_retry_after, retry_delay
from schwab_connector.domain.tokens import is_reauth_error

log = logging.getLogger(__name__)

SCHWAB_API_HOST = "api.schwabapi.com"
TokenObject = dict[str, Any]


class SchwabCallError(Exception):
    """A Schwab call failed; the message is safe to show to the user (no secrets)."""

    def __init__(
        self,
        reason: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class ReauthRequiredError(Exception):
    """The login's refresh token is gone (expired or refused): only a new browser login helps."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RateBudget(Protocol):
    async def acquire(self, app_key: str) -> None:
        """Wait until one more Trader API request for `app_key` fits the budget."""


def origin_rewriter(base_url: str) -> Callable[[httpx.Request], Awaitable[None]] | None:
    """An httpx request hook sending api.schwabapi.com traffic to `base_url` (None if it is Schwab)."""
    target = httpx.URL(base_url)
    if (
        target.host == SCHWAB_API_HOST
        and target.scheme == "https"
        and target.port in (None, 443)
    ):
        return None

    async def rewrite(request: httpx.Request) -> None:
        if request.url.host == SCHWAB_API_HOST:
            request.url = request.url.copy_with(
                scheme=target.scheme, host=target.host, port=target.port
            )
            request.headers["Host"] = target.netloc.decode()

    return rewrite


def _guard_token_response(response: httpx.Response) -> httpx.Response:
    """authlib compliance hook: turn 429/5xx from the token endpoint into a retryable error."""
    if is_retryable(response.status_code):
        raise SchwabCallError(
            f"token endpoint answered {response.status_code}",
            status=response.status_code,
            retryable=True,
            retry_after_s=parse_retry_after(
                response.headers.get("Retry-After"), time.time()
            ),
        )
    return response


def _oauth_failure(exc: OAuthError) -> Exception:
    code = getattr(exc, "error", None) or "oauth_error"
    if is_reauth_error(code):
        return ReauthRequiredError(f"Schwab refused the login ({code}): sign in again")
    return SchwabCallError(f"Schwab token endpoint refused the request ({code})")


class SchwabGateway:
    """Builds schwab-py clients and runs calls with the retry policy and the rate budget."""

    def __init__(
        self,
        base_url: str,
        budget: RateBudget,
        *,
        timeout_s: float = 15.0,
        max_attempts: int = 4,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
    ) -> None:
        self._rewriter = origin_rewriter(base_url)
        self._budget = budget
        self._timeout = httpx.Timeout(timeout_s)
        self._max_attempts = max_attempts
        self._backoff = (backoff_base_s, backoff_cap_s)
        self.calls = 0  # Trader API HTTP attempts, for health and benchmarks

    def _prepare(self, session: AsyncOAuth2Client) -> None:
        session.timeout = self._timeout
        if self._rewriter is not None:
            session.event_hooks = {"request": [self._rewriter], "response": []}
        session.register_compliance_hook("access_token_response", _guard_token_response)
        session.register_compliance_hook(
            "refresh_token_response", _guard_token_response
        )

    def build_client(
        self,
        app_key: str,
        app_secret: str,
        read_token: Callable[[], TokenObject],
        write_token: Callable[..., None],
    ) -> AsyncClient:
        """A schwab-py async client whose token lives in our vault."""
        client = client_from_access_functions(
            app_key, app_secret, read_token, write_token, asyncio=True
        )
        self._prepare(client.session)
        return client

    async def _sleep_before_retry(
        self, attempt: int, error: SchwabCallError | None
    ) -> None:
        delay = retry_delay(
            attempt, error.retry_after_s if error else None, *self._backoff
        )
        log.debug(
            "retrying schwab call",
            extra={"attempt": attempt, "delay_s": round(delay, 3)},
        )
        await asyncio.sleep(delay)

    async def exchange_code(
        self, app_key: str, app_secret: str, code: str, redirect_uri: str
    ) -> TokenObject:
        """Trade an authorization code for a token (the token endpoint's raw answer).

        One attempt only: a code is single-use, so a retry after a lost answer would be refused
        and hide the real outcome."""
        async with AsyncOAuth2Client(
            app_key, client_secret=app_secret, redirect_uri=redirect_uri
        ) as oauth:
            self._prepare(oauth)
            try:
                token = await oauth.fetch_token(
                    TOKEN_ENDPOINT,
                    grant_type="authorization_code",
                    code=code,
                    redirect_uri=redirect_uri,
                )
            except OAuthError as exc:
                code_ = getattr(exc, "error", None) or "oauth_error"
                raise SchwabCallError(
                    f"Schwab refused the authorization code ({code_})"
                ) from None
            except httpx.HTTPError as exc:
                raise SchwabCallError(
                    f"token endpoint unreachable ({type(exc).__name__})", retryable=True
                ) from None
            return dict(token)

    async def refresh_token(self, client: AsyncClient) -> None:
        """Refresh the client's access token (its write function stores the result)."""
        last: SchwabCallError | None = None
        for attempt in range(1, self._max_attempts + 1):
            try:
                await client.session.refresh_token(TOKEN_ENDPOINT)
                return
            except OAuthError as exc:
                raise _oauth_failure(exc) from None
            except SchwabCallError as exc:
                last = exc
            except httpx.HTTPError as exc:
                last = SchwabCallError(
                    f"token endpoint unreachable ({type(exc).__name__})", retryable=True
                )
            if attempt < self._max_attempts:
                await self._sleep_before_retry(attempt, last)
        raise last or SchwabCallError("token refresh failed")

    async def call_json(
        self,
        app_key: str,
        what: str,
        request: Callable[[], Awaitable[httpx.Response]],
        on_unauthorized: Callable[[], Awaitable[None]],
    ) -> Any:
        """Run one Trader API GET: budget per attempt, 429/5xx backoff, one token refresh on 401."""
        refreshed = False
        last: SchwabCallError | None = None
        attempt = 0
        while attempt < self._max_attempts:
            attempt += 1
            await self._budget.acquire(app_key)
            self.calls += 1
            try:
                response = await request()
            except (
                OAuthError
            ) as exc:  # authlib refreshing on its own inside the request
                raise _oauth_failure(exc) from None
            except SchwabCallError as exc:
                last = exc
            except httpx.HTTPError as exc:
                last = SchwabCallError(
                    f"{what}: Schwab unreachable ({type(exc).__name__})", retryable=True
                )
            else:
                status = response.status_code
                if status == 200:
                    try:
                        return orjson.loads(response.content)
                    except orjson.JSONDecodeError:
                        raise SchwabCallError(
                            f"{what}: Schwab answered malformed JSON", status=status
                        ) from None
                if status == 401 and not refreshed:
                    refreshed = True
                    attempt -= 1  # the refresh is not a failed attempt
                    await on_unauthorized()
                    continue
                if not is_retryable(status):
                    raise SchwabCallError(
                        f"{what}: Schwab answered {status}", status=status
                    )
                last = SchwabCallError(
                    f"{what}: Schwab answered {status}",
                    status=status,
                    retryable=True,
                    retry_after_s=parse_retry_after(
                        response.headers.get("Retry-After"), time.time()
                    ),
                )
            if attempt < self._max_attempts:
                await self._sleep_before_retry(attempt, last)
        raise last or SchwabCallError(f"{what}: failed")
