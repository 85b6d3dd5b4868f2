"""One worker of a replica runs the bus consumers (`ConsumerClaim`); whichever worker outlives
the holder takes over (a replacement for a killed worker, a SIGHUP's new generation), and
balances are stored again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from account_api.consumers.worker_claim import CLAIM_ENV, ConsumerClaim
from account_api.migrate import upgrade
from brokerlink_devkit.devstack.embedded import free_port
from brokerlink_devkit.testing import wait_until
from brokerlink_devkit.testing.proxy import TcpProxy
from brokerlink_shared.contracts.events import BalanceUpdated
from brokerlink_shared.messaging import EventPublisher, make_broker
from brokerlink_shared.subjects import Topology
from faststream.nats import NatsBroker

from .conftest import ib_integration, register_user

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="abstract socket names are Linux's"
)


def test_one_holder_per_claim_until_it_lets_go() -> None:
    name = ConsumerClaim.new_name()
    first, second = ConsumerClaim(name), ConsumerClaim(name)
    assert first.take()
    assert not second.take()
    first.release()
    assert second.take()
    second.release()


def test_a_killed_holder_leaves_the_claim_free() -> None:
    name = ConsumerClaim.new_name()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from account_api.consumers.worker_claim import ConsumerClaim\n"
            f"claim = ConsumerClaim({name!r})\n"
            "assert claim.take()\n"
            "print('held', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline() == "held\n"
    claim = ConsumerClaim(name)
    assert not claim.take()
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert claim.take()
    claim.release()


class Balances:
    """A user's IB account, its refreshes asked through the API and answered on the bus as a
    connector would: `stored(amount)` returns once account-api has committed the balance."""

    def __init__(
        self, client: httpx.AsyncClient, broker: NatsBroker, topology: Topology
    ) -> None:
        self.client, self.broker, self.topology = client, broker, topology

    async def open(self) -> None:
        self.h = await register_user(self.client)
        self.user_id = (await self.client.get("/api/auth/me", headers=self.h)).json()[
            "id"
        ]
        created = await self.client.post(
            "/api/accounts", headers=self.h, json={"name": "A", "currency": "USD"}
        )
        self.aid = created.json()["id"]
        put = await self.client.put(
            f"/api/accounts/{self.aid}/integration",
            headers=self.h,
            json=ib_integration(),
        )
        assert put.status_code == 200, put.text

    async def stored(self, amount: str) -> None:
        asked = await self.client.post(
            f"/api/accounts/{self.aid}/integration/refresh?wait=0", headers=self.h
        )
        refresh_id = asked.json()["refresh_id"]
        await EventPublisher(self.broker, self.topology).publish(
            BalanceUpdated(
                user_id=self.user_id,
                account_id=self.aid,
                payload={
                    "broker": "IB",
                    "refresh_id": refresh_id,
                    "as_of": datetime.now(UTC),
                    "currency": "USD",
                    "balance": amount,
                },
            )
        )

        async def settled() -> bool:
            r = await self.client.get(
                f"/api/accounts/{self.aid}/integration/refresh/{refresh_id}",
                headers=self.h,
            )
            return r.status_code == 200 and r.json()["status"] == "succeeded"

        await wait_until(settled, timeout_s=60, message="the balance stored")
        account = (
            await self.client.get(f"/api/accounts/{self.aid}", headers=self.h)
        ).json()
        assert Decimal(account["current_balance"]) == Decimal(amount)


@contextlib.asynccontextmanager
async def fake_connector(
    nats_url: str, topology: Topology
) -> AsyncIterator[NatsBroker]:
    broker = make_broker(nats_url, topology, "fake-connector")
    await broker.connect()
    try:
        yield broker
    finally:
        await broker.stop()


@dataclass
class SecondWorker:
    """An app serving while another worker (`holder`) holds the consumer claim."""

    holder: ConsumerClaim
    bus: NatsBroker
    balances: Balances


@contextlib.asynccontextmanager
async def second_worker(
    api_factory: Any, api_database: str, suffix: str, **overrides: object
) -> AsyncIterator[SecondWorker]:
    name = ConsumerClaim.new_name()
    holder = ConsumerClaim(name)
    assert holder.take()
    settings = api_factory.settings(
        api_database, f"{api_factory.infra.namespace}{suffix}", **overrides
    )
    topology = Topology(settings.namespace)
    try:
        async with (
            api_factory.run(settings, ConsumerClaim(name)) as api,
            httpx.AsyncClient(base_url=api.base_url, timeout=30) as client,
            fake_connector(api_factory.infra.nats_url, topology) as broker,
        ):
            bus = api.app.state.container.broker
            await wait_until(
                lambda: bus.running, timeout_s=60, message="the bus connected"
            )
            balances = Balances(client, broker, topology)
            await balances.open()
            yield SecondWorker(holder, bus, balances)
    finally:
        holder.release()


async def test_a_worker_takes_the_consumers_over_once_the_claim_is_free(
    api_factory,  # type: ignore[no-untyped-def]
    api_database: str,
) -> None:
    async with second_worker(api_factory, api_database, "to") as worker:
        assert worker.bus.subscribers == []
        worker.holder.release()
        await wait_until(
            lambda: len(worker.bus.subscribers) == 4,
            timeout_s=30,
            message="the consumers taken over",
        )
        await worker.balances.stored("300.00")
        assert all(s.running for s in worker.bus.subscribers)


async def test_a_take_over_while_the_bus_is_away_consumes_once_it_is_back(
    api_factory,  # type: ignore[no-untyped-def]
    api_database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    nats = urlsplit(api_factory.infra.nats_url)
    assert nats.hostname is not None and nats.port is not None
    link = await TcpProxy(nats.hostname, nats.port).start()
    caplog.set_level(logging.WARNING, logger="account_api.consumers.worker_claim")
    try:
        async with second_worker(
            api_factory, api_database, "ba", nats_url=f"nats://127.0.0.1:{link.port}"
        ) as worker:
            link.cut()
            worker.holder.release()
            await wait_until(
                lambda: "bus consumers not started yet" in caplog.text,
                timeout_s=120,
                message="a take-over that failed while the bus was away",
            )
            link.restore()
            await worker.balances.stored("500.00")
            assert len(worker.bus.subscribers) == 4
            assert all(s.running for s in worker.bus.subscribers)
    finally:
        await link.stop()


def _workers(supervisor: int) -> set[int]:
    """uvicorn's worker processes under `supervisor` (not multiprocessing's resource tracker)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if (
            int(stat.rsplit(")", 1)[1].split()[1]) == supervisor
            and b"spawn_main" in command
        ):
            found.add(int(entry))
    return found


def _claim_of(worker: int) -> ConsumerClaim:
    """The claim `account-api serve` named for its workers, as a worker inherited it."""
    variables = Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
    prefix = f"{CLAIM_ENV}=".encode()
    return ConsumerClaim(
        next(v for v in variables if v.startswith(prefix))[len(prefix) :].decode()
    )


def _holders(claim: ConsumerClaim, pids: set[int]) -> set[int]:
    """The processes among `pids` with the claim's socket open."""
    inodes = {
        line.split()[6]
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]
        if line.split()[-1] == "@" + claim.name
    }
    holders = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                holders.add(pid)
    return holders


async def test_consumers_survive_a_killed_holder_and_graceful_restarts(
    infra,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    database = infra.new_database("workerclaim")
    upgrade(database)
    namespace = f"{infra.namespace}wc"
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database,
        "NATS_URL": infra.nats_url,
        "BROKERLINK_NAMESPACE": namespace,
        "BROKERLINK_ENCRYPTION_KEYS": infra.encryption_keys,
        "BROKERLINK_LOG_LEVEL": "INFO",
        "ACCOUNT_API_JWT_SECRET": secrets.token_urlsafe(32),
        "API_PORT": str(port),
        "ACCOUNT_API_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "ACCOUNT_API_WORKERS": "2",
        # uvicorn may be waiting this long on a ping the killed worker never answers before it
        # replaces it (the survivor takes the consumers over meanwhile)
        "ACCOUNT_API_WORKER_HEALTHCHECK_TIMEOUT_S": "30",
        "ACCOUNT_API_SCHEDULED_REFRESH_INTERVAL_S": "0",
        "ACCOUNT_API_IB_ALLOWED_NETWORKS": "127.0.0.0/8",
    }
    topology = Topology(namespace)
    log = (tmp_path / "account-api.log").open("wb")
    server = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("account-api")),
        env=env,
        stdout=log,
        stderr=log,
    )
    try:
        async with (
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", timeout=30
            ) as client,
            fake_connector(infra.nats_url, topology) as broker,
        ):

            async def serving() -> bool:
                try:
                    return (await client.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            async def one_holder_of_two(not_among: set[int]) -> int | None:
                """The one worker holding the claim once there are two and neither is in
                `not_among`; at no time more than one."""
                workers = _workers(server.pid)
                if len(workers) != 2 or workers & not_among:
                    return None
                holders = _holders(_claim_of(min(workers)), workers)
                assert len(holders) <= 1, holders
                return next(iter(holders), None)

            await wait_until(serving, timeout_s=120, message="account-api serving")
            first = await wait_until(
                lambda: one_holder_of_two(set()),
                timeout_s=60,
                message="one consuming worker",
            )
            balances = Balances(client, broker, topology)
            await balances.open()
            await balances.stored("100.00")

            os.kill(first, signal.SIGKILL)

            async def another_holder() -> int | None:
                workers = _workers(server.pid) - {first}
                holders = (
                    _holders(_claim_of(min(workers)), workers) if workers else set()
                )
                return next(iter(holders), None)

            await wait_until(
                another_holder, timeout_s=60, message="another worker consuming"
            )
            await balances.stored("200.00")
            await wait_until(
                lambda: one_holder_of_two({first}),
                timeout_s=120,
                message="the killed worker replaced",
            )

            # A SIGHUP starts each new worker before it stops the old one: the new ones find
            # the claim held, and one of them must take it once its holder has stopped.
            for amount in ("300.00", "400.00"):
                before = _workers(server.pid)
                server.send_signal(signal.SIGHUP)
                await wait_until(
                    lambda before=before: one_holder_of_two(before),  # type: ignore[misc]
                    timeout_s=120,
                    message="a worker of the new generation consuming",
                )
                await balances.stored(amount)
    except BaseException:
        sys.stderr.write((tmp_path / "account-api.log").read_text()[-6000:])
        raise
    finally:
        workers = _workers(server.pid)
        server.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(server.wait(), timeout=30)
        except TimeoutError:
            for pid in workers | {server.pid}:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            await server.wait()
