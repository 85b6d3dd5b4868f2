"""The integration lifecycle, pure: every transition's new state and events, no infrastructure."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from account_api.errors import IntegrationNotConfigured
from account_api.integrations import lifecycle
from account_api.integrations.lifecycle import IntegrationState
from brokerlink_shared.contracts.events import (
    IntegrationConfigured,
    IntegrationRemoved,
    RefreshRequested,
)
from brokerlink_shared.contracts.values import IntegrationStatus

pytestmark = pytest.mark.fast

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)
IB_CONFIG = {
    "host": "127.0.0.1",
    "port": 4002,
    "client_id": 7,
    "account_code": "U1234567",
}
SCHWAB_CONFIG = {"app_key": "key-1", "app_secret_enc": "enc-secret"}


def unconfigured() -> IntegrationState:
    return IntegrationState(account_id=11, user_id=3)


def ib(**changes: object) -> IntegrationState:
    state = IntegrationState(
        account_id=11,
        user_id=3,
        type="IB",
        config=IB_CONFIG,
        version=2,
        status=IntegrationStatus.CONNECTED,
        status_at=T0,
    )
    return state.with_(**changes)


def schwab(**changes: object) -> IntegrationState:
    state = IntegrationState(
        account_id=12,
        user_id=3,
        type="SCHWAB",
        config={**SCHWAB_CONFIG, "token_enc": "enc-token"},
        version=4,
        status=IntegrationStatus.CONNECTED,
        status_at=T0,
        token_access_expires_at=T0 + timedelta(minutes=30),
        token_refresh_expires_at=T0 + timedelta(days=7),
    )
    return state.with_(**changes)


def test_configured_is_a_new_pending_version_and_tells_the_connector() -> None:
    t = lifecycle.configured(
        unconfigured(), "IB", IB_CONFIG, correlation_id="req-1", now=T1
    )
    assert t.state.type == "IB"
    assert t.state.version == 1
    assert t.state.status == IntegrationStatus.PENDING
    assert t.state.status_at == T1
    [event] = t.events
    assert isinstance(event, IntegrationConfigured)
    assert (event.account_id, event.user_id, event.correlation_id) == (11, 3, "req-1")
    assert event.payload.version == 1


def test_configured_clears_the_last_error() -> None:
    failing = ib(last_error="gateway down", last_error_code="E1")
    t = lifecycle.configured(failing, "IB", IB_CONFIG, correlation_id=None, now=T1)
    assert (t.state.last_error, t.state.last_error_code) == (None, None)


def test_a_new_schwab_app_key_forgets_the_old_logins_token_expiries() -> None:
    new_key = {"app_key": "key-2", "app_secret_enc": "enc-other"}
    t = lifecycle.configured(schwab(), "SCHWAB", new_key, correlation_id=None, now=T1)
    assert t.state.token_access_expires_at is None
    assert t.state.token_refresh_expires_at is None


def test_the_same_schwab_app_key_keeps_the_token_expiries() -> None:
    before = schwab()
    t = lifecycle.configured(
        before, "SCHWAB", dict(SCHWAB_CONFIG), correlation_id=None, now=T1
    )
    assert t.state.token_access_expires_at == before.token_access_expires_at


def test_removed_forgets_everything_and_tells_the_connector_with_the_old_config() -> (
    None
):
    t = lifecycle.removed(schwab(last_error="x"), correlation_id="req-2", now=T1)
    assert t.state.type is None and t.state.config is None
    assert t.state.version == 5
    assert t.state.status == IntegrationStatus.NOT_CONFIGURED
    assert t.state.status_at == T1
    assert t.state.last_error is None
    assert t.state.token_access_expires_at is None
    [event] = t.events
    assert isinstance(event, IntegrationRemoved)
    assert event.payload.broker.value == "SCHWAB"


@pytest.mark.parametrize(
    "transition",
    [
        lambda s: lifecycle.removed(s, correlation_id=None, now=T1),
        lambda s: lifecycle.tested(s),
        lambda s: lifecycle.refresh_requested(
            s, refresh_id=uuid.uuid4(), job_id=None, correlation_id=None, now=T1
        ),
    ],
    ids=["removed", "tested", "refresh_requested"],
)
def test_transitions_of_a_configured_integration_refuse_an_unconfigured_one(
    transition,  # type: ignore[no-untyped-def]
) -> None:
    with pytest.raises(IntegrationNotConfigured):
        transition(unconfigured())


def test_tested_changes_nothing() -> None:
    t = lifecycle.tested(ib())
    assert t.state == ib()
    assert t.events == []


def test_refresh_requested_stamps_the_request_and_sends_the_current_config() -> None:
    refresh_id, job_id = uuid.uuid4(), uuid.uuid4()
    t = lifecycle.refresh_requested(
        ib(), refresh_id=refresh_id, job_id=job_id, correlation_id="c", now=T1
    )
    assert t.state.last_refresh_at == T1
    assert t.state.status == IntegrationStatus.CONNECTED  # a request is not a result
    [event] = t.events
    assert isinstance(event, RefreshRequested)
    assert (event.payload.refresh_id, event.payload.job_id) == (refresh_id, job_id)
    assert event.payload.version == 2


def test_a_refresh_of_an_integration_from_before_versions_carries_none() -> None:
    t = lifecycle.refresh_requested(
        ib(version=0), refresh_id=uuid.uuid4(), job_id=None, correlation_id="c", now=T1
    )
    [event] = t.events
    assert isinstance(event, RefreshRequested)
    assert event.payload.version is None


@pytest.mark.parametrize(
    "status",
    [
        IntegrationStatus.PENDING,
        IntegrationStatus.ERROR,
        IntegrationStatus.DISCONNECTED,
    ],
)
def test_a_successful_refresh_heals_a_failing_status(
    status: IntegrationStatus,
) -> None:
    t = lifecycle.refresh_succeeded(ib(status=status, last_error="x"), now=T1)
    assert t.state.status == IntegrationStatus.CONNECTED
    assert t.state.status_at == T1
    assert t.state.last_success_at == T1
    assert t.state.last_error is None


@pytest.mark.parametrize(
    "status",
    [IntegrationStatus.REAUTH_REQUIRED, IntegrationStatus.EXPIRING_SOON],
)
def test_a_successful_refresh_keeps_a_token_warning(status: IntegrationStatus) -> None:
    t = lifecycle.refresh_succeeded(schwab(status=status), now=T1)
    assert t.state.status == status
    assert t.state.status_at == T0
    assert t.state.last_success_at == T1


def test_a_failed_refresh_records_the_error_and_its_time_only() -> None:
    t = lifecycle.refresh_failed(ib(), message="timed out", code="timeout", now=T1)
    assert (t.state.last_error, t.state.last_error_code) == ("timed out", "timeout")
    assert t.state.last_failure_at == T1
    assert t.state.status == IntegrationStatus.CONNECTED
    # a new configuration starts with a clean slate
    again = lifecycle.configured(
        t.state, "IB", dict(t.state.config or {}), correlation_id=None, now=T1
    )
    assert again.state.last_failure_at is None and again.state.last_error is None


def test_stale_results() -> None:
    assert lifecycle.stale_reason(ib(), "IB", 2) is None
    assert lifecycle.stale_reason(ib(), "IB", None) is None
    assert "changed" in (lifecycle.stale_reason(ib(), "IB", 1) or "")
    assert "removed" in (lifecycle.stale_reason(ib(), "SCHWAB", 2) or "")
    assert "removed" in (lifecycle.stale_reason(unconfigured(), "IB", None) or "")


def test_a_reported_failure_sets_status_time_and_error() -> None:
    t = lifecycle.status_reported(
        ib(), IntegrationStatus.DISCONNECTED, occurred_at=T1, message="lost", code="E"
    )
    assert (t.state.status, t.state.status_at) == (IntegrationStatus.DISCONNECTED, T1)
    assert (t.state.last_error, t.state.last_error_code) == ("lost", "E")


def test_an_older_report_keeps_the_status_but_its_facts_count() -> None:
    connected = T0 - timedelta(hours=1)
    t = lifecycle.status_reported(
        ib(status_at=T1),
        IntegrationStatus.ERROR,
        occurred_at=T0,
        message="old",
        last_connected=connected,
    )
    assert (t.state.status, t.state.status_at) == (IntegrationStatus.CONNECTED, T1)
    assert t.state.last_error is None
    assert t.state.last_connected_at == connected


def test_a_connected_report_clears_the_error_and_verifies_the_account() -> None:
    t = lifecycle.status_reported(
        schwab(last_error="x", config={**SCHWAB_CONFIG, "unverified": True}),
        IntegrationStatus.CONNECTED,
        occurred_at=T1,
        account_hash="HASH",
    )
    assert t.state.last_error is None
    assert t.state.config == {**SCHWAB_CONFIG, "account_hash": "HASH"}


def test_rotated_tokens_are_stored_unless_older_than_the_stored_ones() -> None:
    later = T0 + timedelta(hours=1)
    newer = lifecycle.tokens_rotated(
        schwab(),
        token_enc="enc-new",
        access_expires_at=later,
        refresh_expires_at=later + timedelta(days=7),
    )
    assert newer.state.config is not None
    assert newer.state.config["token_enc"] == "enc-new"
    assert newer.state.token_access_expires_at == later
    older = lifecycle.tokens_rotated(
        schwab(),
        token_enc="enc-old",
        access_expires_at=T0,
        refresh_expires_at=T0,
    )
    assert older.state == schwab()
    forced = lifecycle.tokens_rotated(
        schwab(),
        token_enc="enc-signin",
        access_expires_at=T0,
        refresh_expires_at=T0,
        keep_newer=False,
    )
    assert forced.state.token_access_expires_at == T0


def test_reauth_required_sets_the_status_time() -> None:
    t = lifecycle.reauth_required(schwab(), message="sign in again", now=T1)
    assert t.state.status == IntegrationStatus.REAUTH_REQUIRED
    assert t.state.status_at == T1
    assert t.state.last_error == "sign in again"
    assert t.events == []


def test_reauth_succeeded_is_a_new_connected_version_told_to_the_connector() -> None:
    before = schwab(
        status=IntegrationStatus.REAUTH_REQUIRED,
        last_error="x",
        config={**SCHWAB_CONFIG, "unverified": True},
    )
    t = lifecycle.reauth_succeeded(
        before, account_hash="HASH", correlation_id="req-3", now=T1
    )
    assert t.state.version == before.version + 1
    assert (t.state.status, t.state.status_at) == (IntegrationStatus.CONNECTED, T1)
    assert t.state.last_connected_at == T1
    assert t.state.last_error is None
    assert t.state.config == {**SCHWAB_CONFIG, "account_hash": "HASH"}
    [event] = t.events
    assert isinstance(event, IntegrationConfigured)
    assert event.payload.version == t.state.version


def test_an_adopted_legacy_login_keeps_its_tokens_and_stays_unverified() -> None:
    state = schwab(config=dict(SCHWAB_CONFIG), token_access_expires_at=None)
    t = lifecycle.legacy_login_adopted(
        state, token_enc="enc-legacy", access_expires_at=T1, refresh_expires_at=T1
    )
    assert t.state.config == {
        **SCHWAB_CONFIG,
        "token_enc": "enc-legacy",
        "unverified": True,
    }
    assert t.state.token_access_expires_at == T1


def test_secrets_are_reencrypted_and_nothing_else() -> None:
    config = {"app_key": "k", "app_secret_enc": "a", "token_enc": "b"}
    assert lifecycle.secrets_reencrypted(config, str.upper) == {
        "app_key": "k",
        "app_secret_enc": "A",
        "token_enc": "B",
    }
    assert lifecycle.secrets_reencrypted({"host": "h"}, str.upper) is None


def test_transitions_never_mutate_the_state_they_were_given() -> None:
    config = {**SCHWAB_CONFIG, "token_enc": "enc-token"}
    state = schwab(config=config)
    lifecycle.tokens_rotated(
        state,
        token_enc="enc-new",
        access_expires_at=T1 + timedelta(days=1),
        refresh_expires_at=T1,
    )
    lifecycle.reauth_succeeded(state, account_hash="H", correlation_id=None, now=T1)
    assert config == {**SCHWAB_CONFIG, "token_enc": "enc-token"}
