"""IB's Flex Web Service over httpx: SendRequest, then GetStatement until the report is ready.

Every HTTP request first spends one unit of the token's budget (shared by all replicas), so IB's
throttle is respected by construction; a 1018 "too many requests" answer is still backed off and
retried. The token travels only in the query string IB requires; no URL, answer body or token ever
reaches a log line or an exception message.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

import httpx
from brokerlink_shared.backoff import backoff_delay

from ibflex_connector.domain.answers import Answer, Verdict, read_answer, user_message

log = logging.getLogger(__name__)

USER_AGENT = (
    "brokerlink-ibflex-connector/0.1"  # IB refuses requests without a User-Agent
)


class RateBudget(Protocol):
    async def acquire(self, credential: str) -> None:
        """Wait until one more request with this token fits IB's throttle."""


class FlexCallError(Exception):
    """A Flex call failed for good; `message` is safe to show (no token, no URL)."""

    def __init__(
        self,
        verdict: Verdict,
        message: str,
        code: str | None = None,
        expires_in_days: int | None = None,
    ) -> None:
        super().__init__(message)
        self.verdict = verdict
        self.message = message
        self.code = code
        self.expires_in_days = expires_in_days


@dataclass(frozen=True, slots=True)
class FetchedReport:
    """The report's XML and what the answers said about the token."""

    body: bytes
    expires_in_days: int | None
    requests: int


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try: attempts per step and the shared backoff's base and cap."""

    not_ready_attempts: int = 10
    throttled_attempts: int = 4
    transport_attempts: int = 3
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 30.0


class FlexWebService:
    """The two calls, with the budget, retries and error classification."""

    def __init__(
        self,
        send_request_url: str,
        budget: RateBudget,
        http: httpx.AsyncClient,
        policy: RetryPolicy,
    ) -> None:
        self._send_request_url = send_request_url
        self._budget = budget
        self._http = http
        self._policy = policy
        self.requests = 0  # HTTP requests made, for health and tests

    async def _get(self, url: str, token: str, q: str, what: str) -> Answer | bytes:
        """One budgeted GET; transport errors and 5xx retried; the body, or its classified answer."""
        attempt = 0
        while True:
            attempt += 1
            await self._budget.acquire(token)
            self.requests += 1
            try:
                response = await self._http.get(
                    url,
                    params={"t": token, "q": q, "v": "3"},
                    headers={"User-Agent": USER_AGENT},
                )
            except httpx.HTTPError as exc:
                reason = (
                    f"{what}: IB's Flex Web Service unreachable ({type(exc).__name__})"
                )
            else:
                if response.status_code == 200:
                    answer = read_answer(response.content)
                    if (
                        answer.verdict is Verdict.READY
                        and answer.reference_code is None
                    ):
                        return response.content  # the report itself
                    return answer
                reason = f"{what}: IB's Flex Web Service answered HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code != 429:
                    raise FlexCallError(
                        Verdict.FAILED, reason, f"http_{response.status_code}"
                    )
            if attempt >= self._policy.transport_attempts:
                raise FlexCallError(Verdict.FAILED, reason, "unreachable")
            await asyncio.sleep(self._delay(attempt))

    def _delay(self, attempt: int) -> float:
        base, cap = self._policy.backoff_base_s, self._policy.backoff_cap_s
        return backoff_delay(attempt, base=base, cap=cap) if base else 0.0

    def _fail(self, answer: Answer, query_id: str) -> FlexCallError:
        return FlexCallError(
            answer.verdict,
            user_message(answer.code, answer.message, query_id),
            answer.code,
            answer.expires_in_days,
        )

    async def _reference(self, token: str, query_id: str) -> Answer:
        """SendRequest until IB hands out a reference code (backing off while throttled)."""
        throttled = 0
        while True:
            answer = await self._get(
                self._send_request_url, token, query_id, "SendRequest"
            )
            if isinstance(answer, bytes):
                raise FlexCallError(Verdict.FAILED, "SendRequest answered a report")
            if answer.verdict is Verdict.READY:
                return answer
            if answer.verdict in (Verdict.THROTTLED, Verdict.NOT_READY):
                throttled += 1
                if throttled < self._policy.throttled_attempts:
                    await asyncio.sleep(self._delay(throttled))
                    continue
            raise self._fail(answer, query_id)

    async def fetch(self, token: str, query_id: str) -> FetchedReport:
        """Run the query and return its report (waiting while IB generates it)."""
        start = self.requests
        restarted = False
        while True:
            reference = await self._reference(token, query_id)
            if reference.reference_code is None:
                raise RuntimeError("IB's accepted request carries a reference code")
            url = reference.url or self._send_request_url.replace(
                "SendRequest", "GetStatement"
            )
            not_ready = throttled = 0
            while True:
                got = await self._get(
                    url, token, reference.reference_code, "GetStatement"
                )
                if isinstance(got, bytes):
                    return FetchedReport(
                        got, reference.expires_in_days, self.requests - start
                    )
                if got.verdict is Verdict.NOT_READY:
                    not_ready += 1
                    if not_ready >= self._policy.not_ready_attempts:
                        raise FlexCallError(
                            Verdict.NOT_READY,
                            f"IB was still generating the statement after {not_ready} tries "
                            f"({got.code}); the next refresh tries again",
                            got.code,
                        )
                    log.debug("flex statement not ready", extra={"tries": not_ready})
                    await asyncio.sleep(self._delay(not_ready))
                    continue
                if got.verdict is Verdict.THROTTLED:
                    throttled += 1
                    if throttled < self._policy.throttled_attempts:
                        await asyncio.sleep(self._delay(throttled))
                        continue
                if got.verdict is Verdict.RESTART and not restarted:
                    restarted = True
                    break  # the reference code lapsed: ask for a new one, once
                raise self._fail(got, query_id)
