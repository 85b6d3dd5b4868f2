"""Refreshes as use cases over the in-memory fakes: one account, every account (a job), and
reading their progress."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from account_api.errors import (
    IntegrationNotConfigured,
    NotFound,
    TooManyRequests,
    UpstreamFailed,
)
from account_api.integrations.refreshes import RefreshService
from account_api.integrations.service import IntegrationService
from brokerlink_shared.contracts.events import RefreshRequested
from brokerlink_shared.subjects import Broker

pytestmark = pytest.mark.fast

IB_CONFIG = {"host": "10.1.2.3", "port": 4002, "client_id": 7, "read_only": True}


@pytest.fixture
def refreshes(integrations: IntegrationService) -> RefreshService:
    return integrations.refreshes


def integrated(uow, user_id: int, **values: object):  # type: ignore[no-untyped-def]
    return uow.accounts.put(
        user_id,
        integration_type="IB",
        integration_config=dict(IB_CONFIG),
        integration_version=3,
        integration_status="connected",
        **values,
    )


async def test_a_refresh_is_queued_with_the_config_in_force(
    refreshes, uow, actor, topology
) -> None:  # type: ignore[no-untyped-def]
    account = integrated(uow, actor.user_id)

    out = await refreshes.refresh(uow, actor, account.id, wait_s=0)

    assert out.status == "pending"
    row = uow.refreshes.rows[out.refresh_id]
    assert (row.account_id, row.integration_version, row.job_id) == (
        account.id,
        3,
        None,
    )
    [event] = uow.outbox.events
    assert isinstance(event, RefreshRequested)
    assert event.payload.refresh_id == out.refresh_id
    assert event.payload.config.host == "10.1.2.3"
    assert uow.outbox.subjects == [topology.subject("refresh.requested", Broker.IB)]
    assert account.last_refresh_at is not None
    assert uow.audit_log.actions == ["integration.refresh"]


async def test_an_account_without_integration_is_not_refreshed(
    refreshes, uow, actor
) -> None:  # type: ignore[no-untyped-def]
    account = uow.accounts.put(actor.user_id)

    with pytest.raises(IntegrationNotConfigured):
        await refreshes.refresh(uow, actor, account.id, wait_s=0)

    assert uow.refreshes.rows == {}
    assert uow.outbox.events == []
    assert uow.commits == 0


async def test_a_settled_refresh_reports_its_balance(refreshes, uow, actor) -> None:  # type: ignore[no-untyped-def]
    account = integrated(uow, actor.user_id)
    out = await refreshes.refresh(uow, actor, account.id, wait_s=0)
    row = uow.refreshes.rows[out.refresh_id]
    await uow.refreshes.settle(
        row, "succeeded", datetime.now(UTC), balance=Decimal("42.10")
    )

    status = await refreshes.refresh_status(uow, actor, account.id, out.refresh_id)

    assert (status.status, status.balance) == ("succeeded", Decimal("42.10"))


async def test_a_failed_refresh_is_an_upstream_failure_with_its_message(
    refreshes, uow, actor
) -> None:  # type: ignore[no-untyped-def]
    account = integrated(uow, actor.user_id)
    out = await refreshes.refresh(uow, actor, account.id, wait_s=0)
    row = uow.refreshes.rows[out.refresh_id]
    await uow.refreshes.settle(row, "failed", datetime.now(UTC), message="gateway down")

    with pytest.raises(UpstreamFailed, match="gateway down"):
        await refreshes.refresh_status(uow, actor, account.id, out.refresh_id)


async def test_another_accounts_refresh_is_not_found(refreshes, uow, actor) -> None:  # type: ignore[no-untyped-def]
    mine, other = integrated(uow, actor.user_id), integrated(uow, actor.user_id)
    out = await refreshes.refresh(uow, actor, mine.id, wait_s=0)

    with pytest.raises(NotFound):
        await refreshes.refresh_status(uow, actor, other.id, out.refresh_id)


async def test_refresh_all_queues_one_refresh_per_integrated_account_of_the_user(
    refreshes, uow, actor
) -> None:  # type: ignore[no-untyped-def]
    first, second = integrated(uow, actor.user_id), integrated(uow, actor.user_id)
    uow.accounts.put(actor.user_id)  # no integration
    integrated(uow, actor.user_id + 1)  # someone else's

    job = await refreshes.refresh_all(uow, actor)

    assert (job.total, job.pending) == (2, 2)
    assert {e.account_id for e in uow.outbox.events} == {first.id, second.id}
    assert {r.job_id for r in uow.refreshes.rows.values()} == {job.job_id}
    assert uow.audit_log.entries[-1].detail == {
        "job_id": str(job.job_id),
        "accounts": 2,
    }


async def test_a_jobs_progress_counts_its_settled_refreshes(
    refreshes, uow, actor
) -> None:  # type: ignore[no-untyped-def]
    integrated(uow, actor.user_id)
    integrated(uow, actor.user_id)
    job = await refreshes.refresh_all(uow, actor)
    one = next(iter(uow.refreshes.rows.values()))
    await uow.refreshes.settle(one, "failed", datetime.now(UTC), message="x")

    progress = await refreshes.job(uow, actor, job.job_id)

    assert (progress.total, progress.done, progress.failed, progress.pending) == (
        2,
        0,
        1,
        1,
    )


async def test_someone_elses_job_is_not_found(refreshes, uow, actor) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotFound):
        await refreshes.job(uow, actor, uuid.uuid4())


async def test_the_scheduler_refreshes_everyone_without_an_audit_entry(
    refreshes, uow
) -> None:  # type: ignore[no-untyped-def]
    integrated(uow, 1)
    integrated(uow, 2)

    job = await refreshes.refresh_all(uow, None, trigger="schedule")

    assert job.total == 2
    assert all(e.correlation_id == f"scheduled-{job.job_id}" for e in uow.outbox.events)
    assert uow.audit_log.entries == []


async def test_refreshes_past_the_accounts_budget_are_refused_and_nothing_is_queued(
    refreshes, uow, actor, settings
) -> None:  # type: ignore[no-untyped-def]
    account = integrated(uow, actor.user_id)
    uow.throttle.counts[f"refresh:acct:{account.id}"] = (
        settings.refreshes_per_account_per_minute
    )

    with pytest.raises(TooManyRequests):
        await refreshes.refresh(uow, actor, account.id, wait_s=0)

    assert uow.commits == 0
    assert uow.audit_log.entries == []
