"""The integration lifecycle, pure: an account's integration state and every transition of it.

Each transition takes the current `IntegrationState` (and the time, passed in) and returns a
`Transition`: the new state and the events to write to the outbox with it. No I/O, no web
framework, no ORM here; `integrations.repository` loads and stores the state on an account row.
Every place that changes an integration's status, version, error, config or tokens goes
through this module."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from brokerlink_shared.contracts.events import (
    Event,
    IntegrationConfigured,
    IntegrationRemoved,
    RefreshRequested,
)
from brokerlink_shared.contracts.plugins import plugin_for
from brokerlink_shared.contracts.values import IntegrationStatus

from account_api.errors import IntegrationNotConfigured
from account_api.integrations import rules

# Statuses a successful refresh turns into CONNECTED (a token warning or a re-auth demand stays).
_HEALED_BY_SUCCESS = frozenset(
    {
        IntegrationStatus.PENDING,
        IntegrationStatus.ERROR,
        IntegrationStatus.DISCONNECTED,
    }
)
# Statuses whose message a connector's report stores as the last error.
_FAILING = frozenset(
    {
        IntegrationStatus.ERROR,
        IntegrationStatus.REAUTH_REQUIRED,
        IntegrationStatus.DISCONNECTED,
    }
)
SECRET_KEYS = ("app_secret_enc", "token_enc")


@dataclass(frozen=True, slots=True)
class IntegrationState:
    """One account's integration, as the lifecycle sees it."""

    account_id: int
    user_id: int
    type: str | None = None
    config: Mapping[str, Any] | None = None
    version: int = 0
    status: IntegrationStatus = IntegrationStatus.NOT_CONFIGURED
    status_at: datetime | None = None
    last_error: str | None = None
    last_error_code: str | None = None
    last_refresh_at: datetime | None = None
    last_success_at: datetime | None = None
    last_failure_at: datetime | None = None
    last_connected_at: datetime | None = None
    token_access_expires_at: datetime | None = None
    token_refresh_expires_at: datetime | None = None

    def require_configured(self) -> str:
        """The integration type; `IntegrationNotConfigured` when there is none."""
        if self.type is None:
            raise IntegrationNotConfigured()
        return self.type

    def with_(self, **changes: Any) -> IntegrationState:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True)
class Transition:
    """The state after a transition and the events to publish (through the outbox) with it."""

    state: IntegrationState
    events: list[Event] = field(default_factory=list)


def configured(
    state: IntegrationState,
    kind: str,
    stored: dict[str, Any],
    *,
    correlation_id: str | None,
    now: datetime,
) -> Transition:
    """A new or changed configuration: a new version, pending until a connector reports.
    A login's token expiries are forgotten when the login changes (its declaration's credential
    fields, or the type)."""
    drop_tokens = state.type is not None and not plugin_for(state.type).same_login(
        state.config or {} if state.type == kind else None, stored
    )
    new = state.with_(
        type=kind,
        config=stored,
        version=state.version + 1,
        status=IntegrationStatus.PENDING,
        status_at=now,
        last_error=None,
        last_error_code=None,
        last_failure_at=None,
    )
    if drop_tokens:
        new = new.with_(token_access_expires_at=None, token_refresh_expires_at=None)
    return Transition(new, [_configured_event(new, correlation_id)])


def removed(
    state: IntegrationState, *, correlation_id: str | None, now: datetime
) -> Transition:
    """The integration is removed; the connector is told to forget the connection."""
    kind = state.require_configured()
    event = IntegrationRemoved(
        user_id=state.user_id,
        account_id=state.account_id,
        correlation_id=correlation_id,
        payload={
            "broker": kind,
            "config": rules.bus_connection(kind, dict(state.config or {})),
            # the version after the removal: a connector drops commands older than it
            "version": state.version + 1,
        },
    )
    new = state.with_(
        type=None,
        config=None,
        version=state.version + 1,
        status=IntegrationStatus.NOT_CONFIGURED,
        status_at=now,
        last_error=None,
        last_error_code=None,
        last_failure_at=None,
        token_access_expires_at=None,
        token_refresh_expires_at=None,
    )
    return Transition(new, [event])


def tested(state: IntegrationState) -> Transition:
    """A connection test: allowed only when configured; its result is reported to the caller
    and audited, never stored (a test is not a refresh)."""
    state.require_configured()
    return Transition(state)


def refresh_requested(
    state: IntegrationState,
    *,
    refresh_id: UUID,
    job_id: UUID | None,
    correlation_id: str | None,
    now: datetime,
) -> Transition:
    """A refresh is queued for the connector, with the config in force now."""
    kind = state.require_configured()
    event = RefreshRequested(
        user_id=state.user_id,
        account_id=state.account_id,
        correlation_id=correlation_id,
        payload={
            "broker": kind,
            "refresh_id": refresh_id,
            "job_id": job_id,
            "config": rules.bus_connection(kind, dict(state.config or {})),
            # An integration written before versions existed (version 0) is not ordered.
            "version": state.version or None,
        },
    )
    return Transition(state.with_(last_refresh_at=now), [event])


def refresh_overdue_reason(
    kind: str | None, *, connector_answers: bool, deadline_s: float
) -> str:
    """Why a refresh nobody answered within its deadline ends as failed (what the user reads):
    the connector is not running, or it did not answer in time."""
    name = f"{kind} connector" if kind else "connector"
    if not connector_answers:
        return f"connector unavailable: no {name} is running; retry later"
    return f"timed out: the {name} did not answer within {deadline_s:g} s; retry"


def stale_reason(
    state: IntegrationState, broker: str, refresh_version: int | None
) -> str | None:
    """Why a connector's result must not touch the integration, if it must not: it was read
    for another integration, or with a version of this one no longer in force."""
    if state.type != broker:
        return "the integration was removed or replaced while this refresh ran"
    if refresh_version is not None and refresh_version != state.version:
        return "the integration was changed while this refresh ran"
    return None


def refresh_succeeded(state: IntegrationState, *, now: datetime) -> Transition:
    """A (non-stale, newest) balance arrived: the integration works."""
    new = state.with_(last_success_at=now, last_error=None, last_error_code=None)
    if state.type and state.status in _HEALED_BY_SUCCESS:
        new = new.with_(status=IntegrationStatus.CONNECTED, status_at=now)
    return Transition(new)


def refresh_failed(
    state: IntegrationState, *, message: str, code: str | None, now: datetime
) -> Transition:
    """A (non-stale) refresh failed: its message is the integration's last error, and `now`
    the last failure (which, against the last success, says how the newest attempt ended)."""
    return Transition(
        state.with_(last_error=message, last_error_code=code, last_failure_at=now)
    )


def status_reported(
    state: IntegrationState,
    status: IntegrationStatus,
    *,
    occurred_at: datetime,
    message: str | None = None,
    code: str | None = None,
    last_connected: datetime | None = None,
    access_expires_at: datetime | None = None,
    refresh_expires_at: datetime | None = None,
    account_hash: str | None = None,
) -> Transition:
    """A connector reported the integration's status. An older report than the stored status
    does not change the status, but its facts (last connection, token expiries, account hash)
    still count."""
    new = state
    if state.status_at is None or state.status_at <= occurred_at:
        new = new.with_(status=status, status_at=occurred_at)
        if status in _FAILING:
            new = new.with_(last_error=message, last_error_code=code)
        elif status == IntegrationStatus.CONNECTED:
            new = new.with_(last_error=None, last_error_code=None)
    if last_connected:
        new = new.with_(
            last_connected_at=max(filter(None, [new.last_connected_at, last_connected]))
        )
    if access_expires_at:
        new = new.with_(token_access_expires_at=access_expires_at)
    if refresh_expires_at:
        new = new.with_(token_refresh_expires_at=refresh_expires_at)
    if (
        account_hash
        and new.config is not None
        and new.config.get("account_hash") != account_hash
    ):
        new = new.with_(config=_verified(new.config, account_hash))
    return Transition(new)


def token_is_newer(
    candidate: tuple[datetime | None, datetime | None],
    stored: tuple[datetime | None, datetime | None],
) -> bool:
    """The one ordering rule for Schwab tokens (the connector's too): the later refresh expiry
    (a later login) wins; within one login, the later access expiry wins. Unknown is oldest."""

    def key(times: tuple[datetime | None, datetime | None]) -> tuple[float, float]:
        first, second = (t.timestamp() if t else float("-inf") for t in times)
        return first, second

    return key(candidate) > key(stored)


def tokens_rotated(
    state: IntegrationState,
    *,
    token_enc: str,
    access_expires_at: datetime | None,
    refresh_expires_at: datetime | None,
    login: str | None = None,
    keep_newer: bool = True,
) -> Transition:
    """A Schwab login's tokens (already ciphertext) were renewed, or signed in (`login`: who).
    With `keep_newer`, a token older than the stored one (by `token_is_newer`) is ignored:
    rotations arrive out of order, and a refresh of an old login can finish after a consent."""
    if keep_newer and not token_is_newer(
        (refresh_expires_at, access_expires_at),
        (state.token_refresh_expires_at, state.token_access_expires_at),
    ):
        return Transition(state)
    config = dict(state.config or {})
    config["token_enc"] = token_enc
    if login:
        config["login"] = login
    return Transition(
        state.with_(
            config=config,
            token_access_expires_at=access_expires_at,
            token_refresh_expires_at=refresh_expires_at,
        )
    )


def reauth_succeeded(
    state: IntegrationState,
    *,
    account_hash: str | None,
    correlation_id: str | None,
    now: datetime,
) -> Transition:
    """The user signed in at Schwab again: a new version, connected, the connector told."""
    config = dict(state.config or {})
    if account_hash:
        config = _verified(config, account_hash)
    new = state.with_(
        config=config,
        version=state.version + 1,
        status=IntegrationStatus.CONNECTED,
        status_at=now,
        last_connected_at=now,
        last_error=None,
        last_error_code=None,
    )
    return Transition(new, [_configured_event(new, correlation_id)])


def reauth_required(
    state: IntegrationState, *, message: str, now: datetime
) -> Transition:
    """The user must sign in at the broker again (the sign-in failed or the login expired)."""
    return Transition(
        state.with_(
            status=IntegrationStatus.REAUTH_REQUIRED, status_at=now, last_error=message
        )
    )


def legacy_login_adopted(
    state: IntegrationState,
    *,
    token_enc: str | None,
    access_expires_at: datetime | None,
    refresh_expires_at: datetime | None,
) -> Transition:
    """A migrated Schwab login is attached: it keeps its tokens (they reach the connector with
    the next refresh request) and stays unverified until Schwab confirms the account number."""
    config = dict(state.config or {})
    config["unverified"] = not config.get("account_hash")
    new = state
    if token_enc:
        config["token_enc"] = token_enc
        if access_expires_at is not None and refresh_expires_at is not None:
            new = new.with_(
                token_access_expires_at=access_expires_at,
                token_refresh_expires_at=refresh_expires_at,
            )
    return Transition(new.with_(config=config))


def secrets_reencrypted(
    config: Mapping[str, Any], rotate: Callable[[str], str]
) -> dict[str, Any] | None:
    """The config with every stored secret re-encrypted by `rotate`; None when it holds none."""
    changed = dict(config)
    touched = False
    for key in SECRET_KEYS:
        if changed.get(key):
            changed[key] = rotate(changed[key])
            touched = True
    return changed if touched else None


def _verified(config: Mapping[str, Any], account_hash: str) -> dict[str, Any]:
    """Schwab confirmed the account number: the config holds its hash and is verified."""
    updated = dict(config)
    updated["account_hash"] = account_hash
    updated.pop("unverified", None)
    return updated


def _configured_event(
    state: IntegrationState, correlation_id: str | None
) -> IntegrationConfigured:
    kind = state.require_configured()
    return IntegrationConfigured(
        user_id=state.user_id,
        account_id=state.account_id,
        correlation_id=correlation_id,
        payload={
            "broker": kind,
            "config": rules.bus_connection(kind, dict(state.config or {})),
            "version": state.version,
        },
    )
