"""One worker of a replica runs the bus consumers (`ConsumerClaim`); when it dies, the worker
uvicorn starts in its place takes over, and balances are stored again."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from account_api.consumers.worker_claim import ConsumerClaim
from account_api.migrate import upgrade
from brokerlink_devkit.devstack.embedded import free_port
from brokerlink_devkit.testing import wait_until
from brokerlink_shared.contracts.events import BalanceUpdated
from brokerlink_shared.messaging import EventPublisher, make_broker
from brokerlink_shared.subjects import Topology

from .conftest import ib_integration, register_user

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="abstract socket names are Linux's"
)


def test_one_holder_per_claim_until_it_lets_go() -> None:
    name = f"brokerlink-test-{uuid.uuid4().hex}"
    first, second = ConsumerClaim(name), ConsumerClaim(name)
    assert first.take()
    assert not second.take()
    first.release()
    assert second.take()
    second.release()


def test_a_killed_holder_leaves_the_claim_free() -> None:
    name = f"brokerlink-test-{uuid.uuid4().hex}"
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


async def test_a_worker_without_the_claim_runs_no_consumers(
    api_factory,  # type: ignore[no-untyped-def]
    api_database: str,
) -> None:
    name = f"brokerlink-test-{uuid.uuid4().hex}"
    other_worker = ConsumerClaim(name)
    assert other_worker.take()
    settings = api_factory.settings(api_database, f"{api_factory.infra.namespace}nc")
    async with api_factory.run(settings, ConsumerClaim(name)) as api:
        assert api.app.state.container.broker.subscribers == []
    other_worker.release()
    settings = api_factory.settings(api_database, f"{api_factory.infra.namespace}nc")
    async with api_factory.run(settings, ConsumerClaim(name)) as api:
        assert len(api.app.state.container.broker.subscribers) == 4


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


async def test_the_worker_that_replaces_a_killed_consumer_stores_balances(
    infra,  # type: ignore[no-untyped-def]
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
        "BROKERLINK_LOG_LEVEL": "WARNING",
        "ACCOUNT_API_JWT_SECRET": secrets.token_urlsafe(32),
        "API_PORT": str(port),
        "ACCOUNT_API_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "ACCOUNT_API_WORKERS": "2",
        "ACCOUNT_API_SCHEDULED_REFRESH_INTERVAL_S": "0",
        "ACCOUNT_API_IB_ALLOWED_NETWORKS": "127.0.0.0/8",
    }
    server = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("account-api")),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    claim = ConsumerClaim.of_supervisor(server.pid, namespace)
    topology = Topology(namespace)
    broker = make_broker(infra.nats_url, topology, "fake-connector")
    await broker.connect()
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=30
        ) as client:

            async def serving() -> bool:
                try:
                    return (await client.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            async def one_holder_of_two() -> int | None:
                workers = _workers(server.pid)
                holders = _holders(claim, workers)
                assert len(holders) <= 1, holders
                return next(iter(holders)) if len(workers) == 2 and holders else None

            await wait_until(serving, timeout_s=120, message="account-api serving")
            first = await wait_until(
                one_holder_of_two, timeout_s=60, message="one consuming worker"
            )
            h = await register_user(client)
            user_id = (await client.get("/api/auth/me", headers=h)).json()["id"]
            aid = (
                await client.post(
                    "/api/accounts", headers=h, json={"name": "A", "currency": "USD"}
                )
            ).json()["id"]
            put = await client.put(
                f"/api/accounts/{aid}/integration", headers=h, json=ib_integration()
            )
            assert put.status_code == 200, put.text

            async def balance_stored(amount: str) -> None:
                refresh_id = (
                    await client.post(
                        f"/api/accounts/{aid}/integration/refresh?wait=0", headers=h
                    )
                ).json()["refresh_id"]
                await EventPublisher(broker, topology).publish(
                    BalanceUpdated(
                        user_id=user_id,
                        account_id=aid,
                        payload={
                            "broker": "IB",
                            "refresh_id": refresh_id,
                            "as_of": datetime.now(UTC),
                            "currency": "USD",
                            "balance": amount,
                        },
                    )
                )

                async def stored() -> bool:
                    r = await client.get(
                        f"/api/accounts/{aid}/integration/refresh/{refresh_id}",
                        headers=h,
                    )
                    return r.status_code == 200 and r.json()["status"] == "succeeded"

                await wait_until(stored, timeout_s=60, message="the balance stored")

            await balance_stored("100.00")
            os.kill(first, signal.SIGKILL)

            async def replaced() -> int | None:
                holder = await one_holder_of_two()
                return holder if holder not in (None, first) else None

            await wait_until(replaced, timeout_s=120, message="a new consuming worker")
            await balance_stored("200.00")
            account = (await client.get(f"/api/accounts/{aid}", headers=h)).json()
            assert float(account["current_balance"]) == 200.0
    finally:
        await broker.stop()
        server.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(server.wait(), timeout=30)
        except TimeoutError:
            server.kill()
            await server.wait()
