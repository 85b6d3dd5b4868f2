"""The simulator's mutable world: a movable clock, tokens, rate windows, faults and counters.

Token lifetimes follow the simulated clock (tests move it); the rate limit follows real time
(a sliding 60-second window per app key), as a real server's would.
"""

from __future__ import annotations

import secrets
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from brokerlink_simulators.schwab_api.scenario import (
    Scenario,
    SimAccount,
    SimApp,
    SimLogin,
)

RATE_WINDOW_S = 60.0


class Fault(BaseModel):
    """An injected failure: the next `count` matching requests answer `status` and/or wait `delay_s`."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str = Field(
        default="*",
        description="token, authorize, accountNumbers, accounts, account or *",
    )
    app_key: str | None = None
    status: int | None = Field(
        default=None, ge=400, le=599, description="None: only delay"
    )
    count: int = Field(default=1, ge=1)
    delay_s: float = Field(default=0.0, ge=0, le=120)
    retry_after_s: int | None = Field(
        default=None, ge=0, description="Retry-After header value"
    )

    def matches(self, endpoint: str, app_key: str | None) -> bool:
        return self.endpoint in ("*", endpoint) and self.app_key in (None, app_key)


@dataclass
class AccessGrant:
    """What an access or refresh token stands for."""

    app_key: str
    login_id: str
    expires_at: float


@dataclass
class PendingCode:
    app_key: str
    login_id: str
    redirect_uri: str
    expires_at: float


@dataclass
class SimulatorState:
    """Everything the HTTP handlers read and the admin API changes."""

    scenario: Scenario
    clock_offset_s: float = 0.0
    apps: dict[str, SimApp] = field(default_factory=dict)
    logins: dict[str, SimLogin] = field(default_factory=dict)
    codes: dict[str, PendingCode] = field(default_factory=dict)
    issued_codes: list[str] = field(
        default_factory=list
    )  # every code ever issued, for leak checks
    access_tokens: dict[str, AccessGrant] = field(default_factory=dict)
    refresh_tokens: dict[str, AccessGrant] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    requests_per_minute: int = 120
    # endpoint -> app key -> count, and endpoint -> app key -> status -> count
    requests: dict[str, dict[str, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )
    responses: dict[str, dict[str, dict[str, int]]] = field(
        default_factory=lambda: defaultdict(
            lambda: defaultdict(lambda: defaultdict(int))
        )
    )
    _rate: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))

    def __post_init__(self) -> None:
        self.reset()

    # ---- world ------------------------------------------------------------------------------

    def reset(self, scenario: Scenario | None = None) -> None:
        """Back to the scenario (or a new one): clock, tokens, faults and counters cleared."""
        if scenario is not None:
            self.scenario = scenario
        self.clock_offset_s = 0.0
        self.apps = {a.app_key: a.model_copy(deep=True) for a in self.scenario.apps}
        self.logins = {
            lg.login_id: lg.model_copy(deep=True) for lg in self.scenario.logins
        }
        self.codes.clear()
        self.access_tokens.clear()
        self.refresh_tokens.clear()
        self.faults.clear()
        self.requests_per_minute = self.scenario.requests_per_minute
        self.reset_counters()

    def now(self) -> float:
        """Simulated epoch seconds."""
        return time.time() + self.clock_offset_s

    def add_app(self, app: SimApp) -> None:
        self.apps[app.app_key] = app

    def add_login(self, login: SimLogin) -> None:
        self.logins[login.login_id] = login

    def find_account(self, account_number: str) -> SimAccount | None:
        for login in self.logins.values():
            for account in login.accounts:
                if account.account_number == account_number:
                    return account
        return None

    # ---- OAuth ------------------------------------------------------------------------------

    def issue_code(self, app_key: str, login_id: str, redirect_uri: str) -> str:
        code = f"C0.{secrets.token_urlsafe(24)}@"
        self.codes[code] = PendingCode(
            app_key, login_id, redirect_uri, self.now() + self.scenario.code_ttl_s
        )
        self.issued_codes.append(code)
        return code

    def redeem_code(
        self, code: str, app_key: str, redirect_uri: str | None
    ) -> PendingCode | None:
        """Single use: the code is gone after this call whatever the outcome."""
        pending = self.codes.pop(code, None)
        if (
            pending is None
            or pending.app_key != app_key
            or pending.expires_at <= self.now()
        ):
            return None
        if redirect_uri is not None and redirect_uri != pending.redirect_uri:
            return None
        return pending

    def issue_tokens(
        self, app_key: str, login_id: str, refresh_token: str | None = None
    ) -> dict[str, object]:
        """A token response; a refresh grant keeps the refresh token and its original expiry."""
        now = self.now()
        if refresh_token is None:
            refresh_token = secrets.token_urlsafe(48)
            self.refresh_tokens[refresh_token] = AccessGrant(
                app_key, login_id, now + self.scenario.refresh_token_ttl_s
            )
        access_token = f"I0.{secrets.token_urlsafe(48)}@"
        self.access_tokens[access_token] = AccessGrant(
            app_key, login_id, now + self.scenario.access_token_ttl_s
        )
        return {
            "expires_in": self.scenario.access_token_ttl_s,
            "token_type": "Bearer",
            "scope": "api",
            "refresh_token": refresh_token,
            "access_token": access_token,
            "id_token": secrets.token_urlsafe(32),
        }

    def revoke(self, app_key: str | None = None, login_id: str | None = None) -> int:
        """Invalidate matching access and refresh tokens; returns how many went."""
        gone = 0
        for store in (self.access_tokens, self.refresh_tokens):
            for token, grant in list(store.items()):
                if app_key in (None, grant.app_key) and login_id in (
                    None,
                    grant.login_id,
                ):
                    del store[token]
                    gone += 1
        return gone

    # ---- limits, faults, counters -----------------------------------------------------------

    def take_rate_slot(self, app_key: str) -> float | None:
        """Record one trader request; returns None if allowed, else seconds until a slot frees."""
        now = time.monotonic()
        window = self._rate[app_key]
        while window and window[0] <= now - RATE_WINDOW_S:
            window.popleft()
        if len(window) >= self.requests_per_minute:
            return max(0.0, window[0] + RATE_WINDOW_S - now)
        window.append(now)
        return None

    def take_fault(self, endpoint: str, app_key: str | None) -> Fault | None:
        for fault in self.faults:
            if fault.matches(endpoint, app_key):
                fault.count -= 1
                if fault.count <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    def count(self, endpoint: str, app_key: str | None, status: int) -> None:
        key = app_key or "unknown"
        self.requests[endpoint][key] += 1
        self.responses[endpoint][key][str(status)] += 1

    def reset_counters(self) -> None:
        self.requests.clear()
        self.responses.clear()
        self._rate.clear()

    def counters(self) -> dict[str, object]:
        return {
            "requests": {e: dict(v) for e, v in self.requests.items()},
            "responses": {
                e: {k: dict(s) for k, s in v.items()} for e, v in self.responses.items()
            },
        }
