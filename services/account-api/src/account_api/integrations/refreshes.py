"""Refreshing balances: one account (optionally waiting for the result), every account of a
user or of everyone (a job), and reading a refresh's or a job's progress."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from account_api.actor import Actor
from account_api.audit.service import Change, audit
from account_api.config import Settings
from account_api.errors import NotFound, UpstreamFailed
from account_api.integrations import lifecycle
from account_api.integrations.reads import owned_account
from account_api.integrations.repository import integration_state
from account_api.integrations.schemas import RefreshJobOut, RefreshOut
from account_api.integrations.waiter import RefreshWaiter
from account_api.tables import Account
from account_api.throttling import rate_limit
from account_api.unit_of_work import UnitOfWork


class RefreshService:
    def __init__(self, settings: Settings, waiter: RefreshWaiter) -> None:
        self._settings = settings
        self._waiter = waiter

    def stage(
        self,
        uow: UnitOfWork,
        account: Account,
        *,
        correlation: str | None,
        job_id: uuid.UUID | None,
        refresh_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        """Queue a refresh of `account` in the open transaction (outbox); returns its id."""
        refresh_id = refresh_id or uuid.uuid4()
        transition = _requested(
            account, refresh_id, job_id, correlation, datetime.now(UTC)
        )
        uow.refreshes.add(refresh_id, account.id, account.integration_version, job_id)
        uow.integrations.save(account, transition)
        return refresh_id

    @staticmethod
    async def stage_many(
        uow: UnitOfWork,
        accounts: Sequence[Account],
        *,
        correlation: str | None,
        job_id: uuid.UUID | None,
    ) -> None:
        """`stage` for many accounts, written in three statements (refreshes, account states,
        outbox) whatever their number: a bulk refresh is the hot path of every scheduled and "refresh all" run."""
        now = datetime.now(UTC)
        staged = [(account, uuid.uuid4()) for account in accounts]
        await uow.refreshes.add_many(
            [(rid, a.id, a.integration_version, job_id) for a, rid in staged]
        )
        await uow.integrations.save_many(
            [(a, _requested(a, rid, job_id, correlation, now)) for a, rid in staged]
        )

    async def refresh(
        self, uow: UnitOfWork, actor: Actor, account_id: int, wait_s: float
    ) -> RefreshOut:
        refresh_id = uuid.uuid4()
        async with self._waiter.watch(refresh_id) as done:
            async with uow:
                account = await owned_account(uow, actor, account_id, lock=True)
                self.stage(
                    uow,
                    account,
                    correlation=actor.request_id,
                    job_id=None,
                    refresh_id=refresh_id,
                )
                # after the owner check: nobody else can spend this account's budget
                await rate_limit(
                    uow.throttle,
                    f"refresh:acct:{account.id}",
                    self._settings.refreshes_per_account_per_minute,
                    "refreshes of an account",
                )
                await audit(
                    uow,
                    actor,
                    Change(
                        "integration.refresh",
                        account.id,
                        detail={"refresh_id": str(refresh_id)},
                    ),
                )
                await uow.commit()
            if wait_s <= 0:
                # Just committed as pending; reading it back would cost a second transaction.
                return RefreshOut(refresh_id=refresh_id, status="pending")
            await self._wait_for(uow, account_id, refresh_id, done, wait_s)
        return await self.refresh_status(uow, actor, account_id, refresh_id)

    async def _wait_for(
        self,
        uow: UnitOfWork,
        account_id: int,
        refresh_id: uuid.UUID,
        done: asyncio.Event,
        wait_s: float,
    ) -> None:
        deadline = asyncio.get_running_loop().time() + wait_s
        while (remaining := deadline - asyncio.get_running_loop().time()) > 0:
            # Re-check now and then in case a notification was lost with a connection.
            timeout = (
                remaining if self._waiter.listening.is_set() else min(remaining, 1.0)
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout)
            done.clear()
            async with uow:
                refresh = await uow.refreshes.get_for_account(refresh_id, account_id)
                if refresh is not None and refresh.status != "pending":
                    return

    async def refresh_status(
        self, uow: UnitOfWork, actor: Actor, account_id: int, refresh_id: uuid.UUID
    ) -> RefreshOut:
        async with uow:
            await owned_account(uow, actor, account_id)
            refresh = await uow.refreshes.get_for_account(refresh_id, account_id)
            if refresh is None:
                raise NotFound("refresh not found")
            if refresh.status == "failed":
                raise UpstreamFailed(refresh.message or "refresh failed")
            return RefreshOut(
                refresh_id=refresh.id,
                status=refresh.status,
                balance=refresh.balance,
                updated_at=refresh.completed_at,
                message=refresh.message,
            )

    async def refresh_all(
        self, uow: UnitOfWork, actor: Actor | None, trigger: str = "user"
    ) -> RefreshJobOut:
        """Refresh every integrated account of the actor (or of everyone, for the scheduler)."""
        job_id = uuid.uuid4()
        async with uow:
            if actor is not None:
                await rate_limit(
                    uow.throttle,
                    f"refresh-all:user:{actor.user_id}",
                    self._settings.bulk_refreshes_per_user_per_minute,
                    "refreshes of all accounts",
                )
            # Locked, so a concurrent change of an integration cannot slip between our read of
            # its config and the refresh command we queue with it.
            accounts = await uow.accounts.integrated(
                actor.user_id if actor else None, lock=True
            )
            uow.refreshes.add_job(
                job_id, actor.user_id if actor else None, len(accounts), trigger
            )
            await self.stage_many(
                uow,
                accounts,
                correlation=actor.request_id if actor else f"scheduled-{job_id}",
                job_id=job_id,
            )
            if actor:
                await audit(
                    uow,
                    actor,
                    Change(
                        "integration.refresh_all",
                        detail={"job_id": str(job_id), "accounts": len(accounts)},
                    ),
                )
            await uow.commit()
            return RefreshJobOut(
                job_id=job_id,
                total=len(accounts),
                done=0,
                failed=0,
                pending=len(accounts),
                created_at=datetime.now(UTC),
            )

    async def job(
        self, uow: UnitOfWork, actor: Actor, job_id: uuid.UUID
    ) -> RefreshJobOut:
        async with uow:
            repo = uow.refreshes
            job = await repo.job(job_id, actor.user_id)
            if job is None:
                raise NotFound("refresh job not found")
            counts = await repo.job_counts(job_id)
            done, failed = counts.get("succeeded", 0), counts.get("failed", 0)
            return RefreshJobOut(
                job_id=job.id,
                total=job.total,
                done=done,
                failed=failed,
                pending=job.total - done - failed,
                created_at=job.created_at,
            )


def _requested(
    account: Account,
    refresh_id: uuid.UUID,
    job_id: uuid.UUID | None,
    correlation: str | None,
    now: datetime,
) -> lifecycle.Transition:
    return lifecycle.refresh_requested(
        integration_state(account),
        refresh_id=refresh_id,
        job_id=job_id,
        correlation_id=correlation,
        now=now,
    )
