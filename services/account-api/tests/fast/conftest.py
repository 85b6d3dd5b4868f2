"""The fast layer's one fixture module: in-memory fakes of every repository the use cases reach
through `unit_of_work.UnitOfWork`, and of the outbox the integration transitions write to
(cosmicpython's FakeRepository / FakeUnitOfWork). No database, no bus, no network: the real
PostgreSQL and NATS behaviour (locks, the outbox relay, redelivery) stays covered by the tests
one folder up. Rows are the real ORM classes, built in memory with their server defaults."""

from __future__ import annotations

import datetime as dt
import itertools
import secrets
import uuid
from collections.abc import Iterable, Sequence
from decimal import Decimal
from types import TracebackType
from typing import Any, Self

import pytest
from account_api.actor import Actor
from account_api.config import Settings
from account_api.integrations.lifecycle import Transition
from account_api.integrations.repository import store_state
from account_api.integrations.service import IntegrationService
from account_api.integrations.waiter import RefreshWaiter
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
from brokerlink_shared.contracts.events import Event
from brokerlink_shared.crypto import SecretBox, generate_key
from brokerlink_shared.messaging import EventPublisher
from brokerlink_shared.subjects import Topology
from faststream.nats import NatsBroker

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class FakeAccounts:
    def __init__(self) -> None:
        self.rows: dict[int, Account] = {}
        self._ids = itertools.count(1)

    def put(self, user_id: int, **values: Any) -> Account:
        """Seed an account row as the database would hold it after an INSERT."""
        row = Account(
            id=next(self._ids),
            user_id=user_id,
            name=values.pop("name", "Brokerage"),
            currency=values.pop("currency", "USD"),
            account_type="INVESTMENT",
            original_capital=Decimal(0),
            current_balance=Decimal(0),
            integration_version=0,
            integration_status="not_configured",
            created_at=NOW,
            updated_at=NOW,
        )
        for name, value in values.items():
            setattr(row, name, value)
        self.rows[row.id] = row
        return row

    async def owned(
        self, user_id: int, account_id: int, *, for_update: bool = False
    ) -> Account | None:
        row = self.rows.get(account_id)
        return row if row is not None and row.user_id == user_id else None

    async def locked(
        self, account_id: int, user_id: int | None = None
    ) -> Account | None:
        row = self.rows.get(account_id)
        if row is None or (user_id is not None and row.user_id != user_id):
            return None
        return row

    async def locked_many(self, account_ids: Iterable[int]) -> dict[int, Account]:
        return {i: self.rows[i] for i in sorted(account_ids) if i in self.rows}

    async def write_changes(self, accounts: Iterable[Account]) -> None:
        """The rows are the objects themselves: changed in place, nothing to write."""

    async def sharing_login(self, user_id: int, app_key: str) -> list[Account]:
        return [
            a
            for a in self._ordered()
            if a.user_id == user_id
            and a.integration_type == "SCHWAB"
            and (a.integration_config or {}).get("app_key") == app_key
        ]

    async def integrated(
        self, user_id: int | None = None, *, lock: bool = False
    ) -> list[Account]:
        return [
            a
            for a in self._ordered()
            if a.integration_type is not None
            and (user_id is None or a.user_id == user_id)
        ]

    def _ordered(self) -> list[Account]:
        return [self.rows[k] for k in sorted(self.rows)]


class FakeAuditLog:
    def __init__(self) -> None:
        self.entries: list[AuditEntry] = []

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
    ) -> None:
        self.entries.append(
            AuditEntry(
                id=len(self.entries) + 1,
                at=_now(),
                actor=actor,
                user_id=user_id,
                account_id=account_id,
                action=action,
                changed_fields=changed_fields or [],
                request_id=request_id,
                detail=detail,
            )
        )

    async def for_account(self, account_id: int, limit: int = 200) -> list[AuditEntry]:
        return [e for e in reversed(self.entries) if e.account_id == account_id][:limit]

    @property
    def actions(self) -> list[str]:
        return [e.action for e in self.entries]


class FakeOutbox:
    """The fake publisher: what the real outbox would hold, checked the way the real
    `OutboxRepository` checks it (each event re-validated and given its subject)."""

    def __init__(self, publisher: EventPublisher) -> None:
        self._publisher = publisher
        self.events: list[Event] = []
        self.subjects: list[str] = []

    def add(self, event: Event) -> None:
        subject, _body = self._publisher.encode(event)
        self.events.append(event)
        self.subjects.append(subject)

    def of_type(self, event_type: type[Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, event_type)]


class FakeIntegrations:
    def __init__(self, outbox: FakeOutbox) -> None:
        self._outbox = outbox

    def save(self, account: Account, transition: Transition) -> None:
        store_state(account, transition.state)
        for event in transition.events:
            self._outbox.add(event)

    async def save_many(self, saves: Sequence[tuple[Account, Transition]]) -> None:
        for account, transition in saves:
            self.save(account, transition)


class FakeRefreshes:
    def __init__(self) -> None:
        self.rows: dict[uuid.UUID, Refresh] = {}
        self.jobs: dict[uuid.UUID, RefreshJob] = {}
        self.notified: list[uuid.UUID] = []

    def add(
        self,
        refresh_id: uuid.UUID,
        account_id: int,
        integration_version: int,
        job_id: uuid.UUID | None = None,
    ) -> None:
        self.rows[refresh_id] = Refresh(
            id=refresh_id,
            account_id=account_id,
            job_id=job_id,
            integration_version=integration_version,
            status="pending",
            requested_at=_now(),
        )

    async def add_many(
        self, rows: Sequence[tuple[uuid.UUID, int, int, uuid.UUID | None]]
    ) -> None:
        for refresh_id, account_id, version, job_id in rows:
            self.add(refresh_id, account_id, version, job_id)

    def add_job(
        self, job_id: uuid.UUID, user_id: int | None, total: int, trigger: str
    ) -> None:
        self.jobs[job_id] = RefreshJob(
            id=job_id, user_id=user_id, total=total, trigger=trigger, created_at=_now()
        )

    async def get(self, refresh_id: uuid.UUID) -> Refresh | None:
        return self.rows.get(refresh_id)

    async def get_many(self, refresh_ids: Iterable[uuid.UUID]) -> list[Refresh]:
        return [self.rows[i] for i in refresh_ids if i in self.rows]

    async def settle_many(
        self,
        ended: Iterable[tuple[Refresh, str, str | None, Decimal | None]],
        now: dt.datetime,
    ) -> None:
        for refresh, status, message, balance in ended:
            await self.settle(refresh, status, now, message=message, balance=balance)

    async def settle(
        self,
        refresh: Refresh,
        status: str,
        now: dt.datetime,
        *,
        message: str | None = None,
        balance: Decimal | None = None,
    ) -> None:
        refresh.status, refresh.completed_at = status, now
        if message is not None:
            refresh.message = message
        if balance is not None:
            refresh.balance = balance
        self.notified.append(refresh.id)

    async def get_for_account(
        self, refresh_id: uuid.UUID, account_id: int
    ) -> Refresh | None:
        row = self.rows.get(refresh_id)
        return row if row is not None and row.account_id == account_id else None

    async def job(self, job_id: uuid.UUID, user_id: int) -> RefreshJob | None:
        job = self.jobs.get(job_id)
        return job if job is not None and job.user_id == user_id else None

    async def job_counts(self, job_id: uuid.UUID) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.rows.values():
            if row.job_id == job_id:
                counts[row.status] = counts.get(row.status, 0) + 1
        return counts


class FakeSnapshots:
    def __init__(self) -> None:
        self.positions_of: dict[int, list[PositionSnapshot]] = {}
        self.cash_of: dict[int, list[CashSnapshot]] = {}

    async def positions(self, account_id: int) -> list[PositionSnapshot]:
        return sorted(self.positions_of.get(account_id, []), key=lambda p: p.symbol)

    async def cash(self, account_id: int) -> list[CashSnapshot]:
        return sorted(self.cash_of.get(account_id, []), key=lambda c: c.currency)

    async def replace(
        self,
        account_id: int,
        as_of: dt.datetime,
        positions: Iterable[dict[str, object]],
        cash: Iterable[tuple[str, Decimal]],
    ) -> None:
        self.positions_of[account_id] = [
            PositionSnapshot(account_id=account_id, as_of=as_of, **p) for p in positions
        ]
        self.cash_of[account_id] = [
            CashSnapshot(account_id=account_id, currency=c, amount=a, as_of=as_of)
            for c, a in cash
        ]

    async def replace_many(
        self,
        snapshots: dict[
            int,
            tuple[dt.datetime, list[dict[str, object]], list[tuple[str, Decimal]]],
        ],
    ) -> None:
        for account_id, (as_of, positions, cash) in snapshots.items():
            await self.replace(account_id, as_of, positions, cash)


class FakeProcessedEvents:
    def __init__(self) -> None:
        self.seen: set[tuple[uuid.UUID, str]] = set()

    async def first_time(self, event_id: uuid.UUID, consumer: str) -> bool:
        key = (event_id, consumer)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True

    async def first_times(
        self, event_ids: list[uuid.UUID], consumer: str
    ) -> set[uuid.UUID]:
        return {e for e in event_ids if await self.first_time(e, consumer)}


class FakeOAuthStates:
    def __init__(self) -> None:
        self.rows: dict[str, OAuthState] = {}

    def add(
        self, nonce: str, user_id: int, account_id: int, expires_at: dt.datetime
    ) -> None:
        self.rows[nonce] = OAuthState(
            nonce=nonce, user_id=user_id, account_id=account_id, expires_at=expires_at
        )

    async def consume(self, nonce: str, now: dt.datetime) -> OAuthState | None:
        row = self.rows.get(nonce)
        if row is None or row.used_at is not None or row.expires_at <= now:
            return None
        row.used_at = now
        return row


class FakePendingLinks:
    def __init__(self) -> None:
        self.rows: dict[int, PendingLink] = {}
        self._ids = itertools.count(1)

    def put(
        self, user_id: int, integration_type: str, config: dict[str, Any]
    ) -> PendingLink:
        """Seed an item as the migrator writes it."""
        row = PendingLink(
            id=next(self._ids),
            user_id=user_id,
            integration_type=integration_type,
            config=config,
            reason="no target account",
            suggestions=[],
            legacy_table="ib_connections"
            if integration_type == "IB"
            else "schwab_settings",
            legacy_id=40 + len(self.rows),
            created_at=NOW,
        )
        self.rows[row.id] = row
        return row

    async def for_user(self, user_id: int) -> list[PendingLink]:
        return [
            self.rows[k] for k in sorted(self.rows) if self.rows[k].user_id == user_id
        ]

    async def owned(
        self, user_id: int, link_id: int, *, for_update: bool = False
    ) -> PendingLink | None:
        row = self.rows.get(link_id)
        return row if row is not None and row.user_id == user_id else None

    async def delete(self, item: PendingLink) -> None:
        del self.rows[item.id]


class FakeHistory:
    def __init__(self) -> None:
        self.rows: dict[tuple[int, dt.date], BalanceHistory] = {}

    async def upsert(
        self,
        account_id: int,
        day: dt.date,
        balance: Decimal,
        *,
        note: str | None = None,
        source: str = "MANUAL",
        as_of: dt.datetime | None = None,
    ) -> BalanceHistory | None:
        current = self.rows.get((account_id, day))
        if (
            current is not None
            and as_of is not None
            and current.as_of is not None
            and current.as_of > as_of
        ):
            return None  # a broker update never replaces a newer one
        row = BalanceHistory(
            account_id=account_id,
            date=day,
            balance=balance,
            note=note,
            source=source,
            as_of=as_of,
        )
        self.rows[(account_id, day)] = row
        return row

    async def upsert_broker_days(
        self, rows: list[tuple[int, dt.date, Decimal, str, dt.datetime]]
    ) -> None:
        for account_id, day, balance, source, as_of in rows:
            await self.upsert(account_id, day, balance, source=source, as_of=as_of)


class FakeQuotas:
    def __init__(self, accounts: FakeAccounts) -> None:
        self._accounts = accounts
        self.locked_users: list[int] = []

    async def lock_user(self, user_id: int) -> None:
        self.locked_users.append(user_id)

    async def accounts(self, user_id: int) -> int:
        return sum(a.user_id == user_id for a in self._accounts.rows.values())

    async def integrations(self, user_id: int) -> int:
        return len(await self._accounts.integrated(user_id))


class FakeThrottle:
    """Fixed windows that never end: each key's count only grows within a test."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    async def hit(self, key: str, window_s: int) -> tuple[int, float]:
        self.counts[key] = self.counts.get(key, 0) + 1
        return self.counts[key], float(window_s)


class FakeEndpointOwners:
    def __init__(self, accounts: FakeAccounts) -> None:
        self._accounts = accounts
        self.owner: dict[tuple[str, int], int] = {}

    async def claim(
        self, user_id: int, endpoints: Iterable[tuple[str, int]]
    ) -> dict[tuple[str, int], int]:
        keys = set(endpoints)
        for key in keys:
            self.owner.setdefault(key, user_id)
        return {key: self.owner[key] for key in keys}

    async def owners(
        self, endpoints: Iterable[tuple[str, int]]
    ) -> dict[tuple[str, int], int]:
        return {key: self.owner[key] for key in set(endpoints) if key in self.owner}

    async def used_by_others(
        self, user_id: int, endpoints: Iterable[tuple[str, int]]
    ) -> set[tuple[str, int]]:
        used = {
            (str(c.get("host", "")).lower(), int(c.get("port", 0)))
            for a in self._accounts.rows.values()
            if a.integration_type == "IB" and a.user_id != user_id
            for c in [a.integration_config or {}]
        }
        return used & set(endpoints)


class FakeUnitOfWork:
    """Every repository in memory, shared by all the transactions opened on it (the data
    outlives a transaction, as in the database). `commits` counts the commits: a use case that
    refuses its input must leave it at zero."""

    def __init__(self, publisher: EventPublisher) -> None:
        self.outbox = FakeOutbox(publisher)
        self.accounts = FakeAccounts()
        self.audit_log = FakeAuditLog()
        self.integrations = FakeIntegrations(self.outbox)
        self.refreshes = FakeRefreshes()
        self.snapshots = FakeSnapshots()
        self.processed_events = FakeProcessedEvents()
        self.oauth_states = FakeOAuthStates()
        self.pending_links = FakePendingLinks()
        self.history = FakeHistory()
        self.quotas = FakeQuotas(self.accounts)
        self.throttle = FakeThrottle()
        self.gateway_endpoints = FakeEndpointOwners(self.accounts)
        self.commits = 0
        self.open = False

    async def __aenter__(self) -> Self:
        assert not self.open, "a use case opened a transaction inside another"
        self.open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.open = False

    async def commit(self) -> None:
        assert self.open, "commit outside a transaction"
        self.commits += 1


@pytest.fixture
def topology() -> Topology:
    return Topology(f"fast{secrets.token_hex(3)}")


@pytest.fixture
def broker() -> NatsBroker:
    """Never connected: request/reply tests wrap it in FastStream's `TestNatsBroker`."""
    return NatsBroker()


@pytest.fixture
def publisher(broker: NatsBroker, topology: Topology) -> EventPublisher:
    return EventPublisher(broker, topology)


@pytest.fixture
def uow(publisher: EventPublisher) -> FakeUnitOfWork:
    return FakeUnitOfWork(publisher)


@pytest.fixture
def secret_box() -> SecretBox:
    return SecretBox.from_setting(generate_key())


@pytest.fixture
def settings() -> Settings:
    return Settings(
        jwt_secret=secrets.token_urlsafe(32),
        integration_test_timeout_s=1.0,
        public_url="https://brokerlink.example",
        ib_allowed_networks="10.0.0.0/8",  # the tests' gateways; never from the environment
    )


@pytest.fixture
def integrations(
    settings: Settings, secret_box: SecretBox, broker: NatsBroker, topology: Topology
) -> IntegrationService:
    """The integration use cases as the composition root builds them; the refresh waiter is
    never started (`watch` only registers interest in memory)."""
    return IntegrationService.build(
        settings, secret_box, broker, topology, RefreshWaiter("postgresql://unused")
    )


@pytest.fixture
def actor() -> Actor:
    return Actor(user_id=7, request_id="req-fast-1")
