"""The unit of work the use cases are written against: one transaction and the repositories that
share it. `db.UnitOfWork` is the PostgreSQL one; the fast tests pass in-memory fakes
(`tests/fast/fakes.py`). The protocols name only what the use cases call."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from decimal import Decimal
from types import TracebackType
from typing import Any, Protocol, Self

from account_api.gateways.service import EndpointOwners
from account_api.integrations.lifecycle import Transition
from account_api.limits import Quotas
from account_api.tables import (
    Account,
    AuditEntry,
    BalanceHistory,
    CashSnapshot,
    OAuthState,
    PendingLink,
    PositionSnapshot,
    Refresh,
    RefreshJob,
)
from account_api.throttling import Throttle


class Accounts(Protocol):
    async def owned(
        self, user_id: int, account_id: int, *, for_update: bool = False
    ) -> Account | None: ...

    async def locked(
        self, account_id: int, user_id: int | None = None
    ) -> Account | None: ...

    async def locked_many(self, account_ids: Iterable[int]) -> dict[int, Account]: ...

    async def write_changes(self, accounts: Iterable[Account]) -> None: ...

    async def sharing_login(self, user_id: int, app_key: str) -> list[Account]: ...

    async def integrated(
        self, user_id: int | None = None, *, lock: bool = False
    ) -> list[Account]: ...


class AuditLog(Protocol):
    async def record(
        self,
        *,
        actor: str,
        user_id: int | None,
        account_id: int | None,
        action: str,
        changed_fields: list[str] | None = None,
        request_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None: ...

    async def for_account(
        self, account_id: int, limit: int = 200
    ) -> list[AuditEntry]: ...


class Integrations(Protocol):
    def save(self, account: Account, transition: Transition) -> None: ...

    async def save_many(self, saves: Sequence[tuple[Account, Transition]]) -> None: ...


class Refreshes(Protocol):
    def add(
        self,
        refresh_id: uuid.UUID,
        account_id: int,
        integration_version: int,
        job_id: uuid.UUID | None = None,
    ) -> None: ...

    async def add_many(
        self, rows: Sequence[tuple[uuid.UUID, int, int, uuid.UUID | None]]
    ) -> None: ...

    def add_job(
        self, job_id: uuid.UUID, user_id: int | None, total: int, trigger: str
    ) -> None: ...

    async def get(self, refresh_id: uuid.UUID) -> Refresh | None: ...

    async def get_many(self, refresh_ids: Iterable[uuid.UUID]) -> list[Refresh]: ...

    async def settle_many(
        self,
        ended: Iterable[tuple[Refresh, str, str | None, Decimal | None]],
        now: dt.datetime,
    ) -> None: ...

    async def settle(
        self,
        refresh: Refresh,
        status: str,
        now: dt.datetime,
        *,
        message: str | None = None,
        balance: Decimal | None = None,
    ) -> None: ...

    async def get_for_account(
        self, refresh_id: uuid.UUID, account_id: int
    ) -> Refresh | None: ...

    async def job(self, job_id: uuid.UUID, user_id: int) -> RefreshJob | None: ...

    async def job_counts(self, job_id: uuid.UUID) -> dict[str, int]: ...


class Snapshots(Protocol):
    async def positions(self, account_id: int) -> list[PositionSnapshot]: ...

    async def cash(self, account_id: int) -> list[CashSnapshot]: ...

    async def replace(
        self,
        account_id: int,
        as_of: dt.datetime,
        positions: Iterable[dict[str, object]],
        cash: Iterable[tuple[str, Decimal]],
    ) -> None: ...

    async def replace_many(
        self,
        snapshots: dict[
            int,
            tuple[dt.datetime, list[dict[str, object]], list[tuple[str, Decimal]]],
        ],
    ) -> None: ...


class ProcessedEvents(Protocol):
    async def first_time(self, event_id: uuid.UUID, consumer: str) -> bool: ...

    async def first_times(
        self, event_ids: list[uuid.UUID], consumer: str
    ) -> set[uuid.UUID]: ...


class OAuthStates(Protocol):
    def add(
        self, nonce: str, user_id: int, account_id: int, expires_at: dt.datetime
    ) -> None: ...

    async def consume(self, nonce: str, now: dt.datetime) -> OAuthState | None: ...


class PendingLinks(Protocol):
    async def for_user(self, user_id: int) -> list[PendingLink]: ...

    async def owned(
        self, user_id: int, link_id: int, *, for_update: bool = False
    ) -> PendingLink | None: ...

    async def delete(self, item: PendingLink) -> None: ...


class History(Protocol):
    async def upsert(
        self,
        account_id: int,
        day: dt.date,
        balance: Decimal,
        *,
        note: str | None = None,
        source: str = "MANUAL",
        as_of: dt.datetime | None = None,
    ) -> BalanceHistory | None: ...

    async def upsert_broker_days(
        self, rows: list[tuple[int, dt.date, Decimal, str, dt.datetime]]
    ) -> None: ...


class UnitOfWork(Protocol):
    """One transaction: `commit()` is explicit, leaving the block rolls back what was not."""

    # Read-only (properties), so an implementation may hold any conforming repository.
    @property
    def accounts(self) -> Accounts: ...

    @property
    def audit_log(self) -> AuditLog: ...

    @property
    def integrations(self) -> Integrations: ...

    @property
    def refreshes(self) -> Refreshes: ...

    @property
    def snapshots(self) -> Snapshots: ...

    @property
    def processed_events(self) -> ProcessedEvents: ...

    @property
    def oauth_states(self) -> OAuthStates: ...

    @property
    def pending_links(self) -> PendingLinks: ...

    @property
    def history(self) -> History: ...

    @property
    def quotas(self) -> Quotas: ...

    @property
    def throttle(self) -> Throttle: ...

    @property
    def gateway_endpoints(self) -> EndpointOwners: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def commit(self) -> None: ...
