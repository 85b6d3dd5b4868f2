"""The simulator's state: reference codes waiting for their statements, and IB's throttle per token."""

from __future__ import annotations

import itertools
import secrets
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from brokerlink_simulators.ib_flex import reports
from brokerlink_simulators.ib_flex.scenario import (
    FlexAccount,
    FlexQuery,
    FlexToken,
    Scenario,
)

_NEW_YORK = ZoneInfo("America/New_York")


@dataclass
class _Pending:
    token: str
    query: FlexQuery
    polls_left: int


@dataclass
class TokenCounters:
    """What one token did: for tests to assert the throttle was respected."""

    requests: int = 0
    throttled: int = 0
    send_requests: int = 0
    statements: int = 0
    times: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))

    def max_in_window(self, window_s: float) -> int:
        """Most accepted requests seen in any `window_s` interval."""
        stamps, best, start = list(self.times), 0, 0
        for end, t in enumerate(stamps):
            while t - stamps[start] >= window_s:
                start += 1
            best = max(best, end - start + 1)
        return best

    def min_gap(self) -> float | None:
        stamps = list(self.times)
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        return min(gaps) if gaps else None


class FlexState:
    """Answers the two Flex Web Service calls from a scenario."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.counters: dict[str, TokenCounters] = defaultdict(TokenCounters)
        self._pending: dict[str, _Pending] = {}

    def report_date(self) -> date:
        """The statements' date: the scenario's, or the last business day before today (IB's
        "LastBusinessDay" period, in New York)."""
        if self.scenario.report_date is not None:
            return self.scenario.report_date
        day = datetime.now(_NEW_YORK).date() - timedelta(days=1)
        while day.weekday() >= 5:
            day -= timedelta(days=1)
        return day

    # ---- lookups ------------------------------------------------------------------------

    def token(self, token: str) -> FlexToken | None:
        return next((t for t in self.scenario.tokens if t.token == token), None)

    def query(self, query_id: str) -> FlexQuery | None:
        return next((q for q in self.scenario.queries if q.query_id == query_id), None)

    def account(self, account_id: str) -> FlexAccount:
        found = next(
            (a for a in self.scenario.accounts if a.account_id == account_id), None
        )
        return found or FlexAccount(account_id=account_id)

    # ---- throttle -----------------------------------------------------------------------

    def _throttled(self, token: str, now: float) -> bool:
        counters = self.counters[token]
        limits = self.scenario.limits
        counters.requests += 1
        recent = [t for t in counters.times if now - t < limits.window_s]
        too_soon = (
            bool(counters.times) and now - counters.times[-1] < limits.min_interval_s
        )
        if len(recent) >= limits.per_window or too_soon:
            counters.throttled += 1
            return True
        counters.times.append(now)
        return False

    # ---- the two calls ------------------------------------------------------------------

    def send_request(self, token: str, query_id: str, statement_url: str) -> bytes:
        now = datetime.now(UTC)
        known = self.token(token)
        if known is None:
            return reports.error_response(now, "1015")
        if self._throttled(token, time.time()):
            return reports.error_response(now, "1018")
        self.counters[token].send_requests += 1
        if known.expired:
            return reports.error_response(now, "1012")
        query = self.query(query_id)
        if query is None or query.token != token:
            return reports.error_response(now, "1014")
        code = "".join(secrets.choice("0123456789") for _ in range(10))
        self._pending[code] = _Pending(token, query, query.not_ready_polls)
        children = {"Status": "Success", "ReferenceCode": code, "Url": statement_url}
        if known.expires_in_days is not None:
            children["Warning"] = f"Token expires in {known.expires_in_days} days."
        return reports.statement_response(now, **children)

    def get_statement(self, token: str, reference_code: str) -> bytes:
        now = datetime.now(UTC)
        known = self.token(token)
        if known is None:
            return reports.error_response(now, "1015")
        if self._throttled(token, time.time()):
            return reports.error_response(now, "1018")
        if known.expired:
            return reports.error_response(now, "1012")
        pending = self._pending.get(reference_code)
        if pending is None or pending.token != token:
            return reports.error_response(now, "1017")
        if pending.polls_left > 0:
            pending.polls_left -= 1
            return reports.error_response(now, "1019")
        del self._pending[reference_code]
        self.counters[token].statements += 1
        accounts = [self.account(a) for a in pending.query.accounts]
        return reports.query_response(
            pending.query, accounts, self.report_date().isoformat(), now
        )
