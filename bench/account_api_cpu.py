"""account-api's own CPU on the refresh pipeline's two hot paths, in one process (not a test).

On a shared machine, throughput and latency move with whatever else runs; the CPU a process
spends per unit of work (`time.process_time`) moves much less, so this is the figure to compare
before and after a change to these paths. Both run the production code on embedded PostgreSQL
(fsync on) and, for the consumer, embedded NATS with `sync_interval: always`:

- bulk refresh: `RefreshService.refresh_all` for users of 20 IB accounts (rate limit, locked
  read, refreshes, account states, outbox rows, audit, commit) — ms of CPU per bulk and per
  account;
- balance consumer: `BalanceUpdated` events (3 positions, 1 cash balance, a pending refresh
  each) already in JetStream, consumed by account-api's real subscribers (FastStream, group
  commit, `record_balances`) until every refresh is settled — ms of CPU per event.

PostgreSQL's and NATS's own CPU is not included (see `bench/ib_refresh.py` for all processes).

    uv run python bench/account_api_cpu.py [--bulks 500] [--events 4000] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as dt
import os
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from account_api.actor import Actor
from account_api.config import Settings
from account_api.consumers.handlers import register_consumers
from account_api.db import UnitOfWork, is_transient
from account_api.integrations.refreshes import RefreshService
from account_api.migrate import upgrade
from brokerlink_devkit.devstack.embedded import (
    EmbeddedNats,
    EmbeddedPostgres,
    sqlalchemy_url,
)
from brokerlink_shared.contracts.events import BalanceUpdated
from brokerlink_shared.messaging import EventPublisher, ensure_streams, make_broker
from brokerlink_shared.subjects import Topology
from faststream.nats import NatsBroker
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

IB_CONFIG = (
    '{"host": "gw1.example", "port": 4001, "client_id": 7, "account_code": "U1234567",'
    ' "read_only": true, "backups": []}'
)
PER_USER = 20


def seed(
    libpq: str, users: int, *, with_refreshes: bool
) -> list[tuple[int, int, uuid.UUID]]:
    """`users` users of 20 connected IB accounts; (user, account, pending refresh) each."""
    rows = []
    with psycopg.connect(libpq, autocommit=True) as conn:
        for u in range(users):
            user_id = conn.execute(
                "INSERT INTO users (email, name, password_hash) VALUES (%s, 'x', 'x')"
                " RETURNING id",
                (f"cpu{u}@example.com",),
            ).fetchone()[0]  # type: ignore[index]
            for i in range(PER_USER):
                account_id = conn.execute(
                    "INSERT INTO accounts (user_id, name, currency, integration_type,"
                    " integration_config, integration_version, integration_status)"
                    " VALUES (%s, %s, 'USD', 'IB', %s, 2, 'connected') RETURNING id",
                    (user_id, f"A{i}", IB_CONFIG),
                ).fetchone()[0]  # type: ignore[index]
                refresh_id = uuid.uuid4()
                if with_refreshes:
                    conn.execute(
                        "INSERT INTO refreshes (id, account_id, integration_version)"
                        " VALUES (%s, %s, 2)",
                        (refresh_id, account_id),
                    )
                rows.append((user_id, account_id, refresh_id))
    return rows


class Profiled:
    """CPU seconds of this process over a block, optionally under cProfile (CPU clock)."""

    def __init__(self, out: Path | None) -> None:
        self._out = out
        self._profile = cProfile.Profile(time.process_time) if out else None
        self.cpu_s = 0.0

    def __enter__(self) -> Profiled:
        if self._profile:
            self._profile.enable()
        self._t0 = time.process_time()
        return self

    def __exit__(self, *_: object) -> None:
        self.cpu_s = time.process_time() - self._t0
        if self._profile and self._out:
            self._profile.disable()
            self._profile.dump_stats(str(self._out))


async def bulk_refresh(url: str, libpq: str, bulks: int, profile: Path | None) -> str:
    users = [u for u, _, _ in seed(libpq, 50, with_refreshes=False)][::PER_USER]
    engine = create_async_engine(url, pool_size=5)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    publisher = EventPublisher(
        NatsBroker(), Topology("cpu")
    )  # outbox rows only: no bus
    service = RefreshService(
        Settings.model_construct(bulk_refreshes_per_user_per_minute=10**9),
        None,  # type: ignore[arg-type]  # refresh_all never waits
    )

    async def once(i: int) -> None:
        actor = Actor(
            user_id=users[i % len(users)],
            request_id=uuid.uuid4().hex,
            session_id=uuid.uuid4(),
        )
        await service.refresh_all(UnitOfWork(sessions, publisher), actor)

    try:
        for i in range(30):  # warm-up: caches, prepared statements
            await once(i)
        with Profiled(profile) as p:
            for i in range(bulks):
                await once(i)
    finally:
        await engine.dispose()
    per_bulk = 1000 * p.cpu_s / bulks
    return (
        f"bulk refresh ({bulks} x {PER_USER} accounts): {per_bulk:.2f} ms CPU per bulk, "
        f"{per_bulk / PER_USER:.3f} ms per account"
    )


async def consumer(
    url: str, libpq: str, nats_url: str, events: int, profile: Path | None
) -> str:
    seeded = seed(libpq, max(1, events // PER_USER), with_refreshes=True)
    topology = Topology("cpu")
    producer = make_broker(nats_url, topology, "bench-connector")
    await producer.connect()
    await ensure_streams(producer, topology, replicas=1)
    now = dt.datetime.now(dt.UTC)
    publisher = EventPublisher(producer, topology)
    for user_id, account_id, refresh_id in seeded:
        await publisher.publish(
            BalanceUpdated(
                user_id=user_id,
                account_id=account_id,
                payload={
                    "broker": "IB",
                    "refresh_id": refresh_id,
                    "as_of": now,
                    "currency": "USD",
                    "balance": "1234.56",
                    "cash": [{"currency": "USD", "amount": "100"}],
                    "positions": [
                        {"symbol": s, "quantity": "10", "market_value": "113.4"}
                        for s in ("AAPL", "MSFT", "VT")
                    ],
                },
            )
        )
    await producer.stop()
    engine = create_async_engine(url, pool_size=10)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    broker = make_broker(nats_url, topology, "account-api", transient=is_transient)
    bus = EventPublisher(broker, topology)
    balances = register_consumers(broker, topology, lambda: UnitOfWork(sessions, bus))
    try:
        async with await psycopg.AsyncConnection.connect(
            libpq, autocommit=True
        ) as conn:
            with Profiled(profile) as p:
                await broker.connect()
                await broker.start()
                while (
                    True
                ):  # the wait is part of the measured process: 50 polls a second
                    cur = await conn.execute(
                        "SELECT count(*) FROM refreshes WHERE status = 'pending'"
                    )
                    if (await cur.fetchone())[0] == 0:  # type: ignore[index]
                        break
                    await asyncio.sleep(0.02)
    finally:
        await broker.stop()
        await balances.aclose()
        await engine.dispose()
    return (
        f"balance consumer ({len(seeded)} events): "
        f"{1000 * p.cpu_s / len(seeded):.3f} ms CPU per event"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bulks", type=int, default=500)
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument(
        "--profile", type=Path, help="write cProfile stats (CPU clock) here"
    )
    args = parser.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    print(
        f"account-api CPU, one process; machine {os.cpu_count()} cores, "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="cpu-bench-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg")
        pg.start()
        bus = EmbeddedNats(Path(tmp) / "nats")
        bus.start()
        try:
            for name, run in (
                (
                    "bulk",
                    lambda url, libpq, out: bulk_refresh(url, libpq, args.bulks, out),
                ),
                (
                    "consumer",
                    lambda url, libpq, out: consumer(
                        url, libpq, bus.url, args.events, out
                    ),
                ),
            ):
                libpq = pg.ensure_database(name)
                url = sqlalchemy_url(libpq)
                upgrade(url)
                out = args.profile / f"{name}.prof" if args.profile else None
                print(asyncio.run(run(url, libpq, out)), flush=True)
        finally:
            bus.stop()
            pg.stop()


if __name__ == "__main__":
    main()
