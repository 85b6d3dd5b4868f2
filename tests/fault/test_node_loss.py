"""Issue 9's fault test: a bulk refresh of 1,000 simulated accounts survives losing one NATS node
and one replica of each connector.

Everything runs as OS processes on loopback: a 3-node NATS JetStream cluster (`sync_interval:
always`, every stream R3), PostgreSQL from the `infra` fixture, the IB Gateway and Schwab API
simulators, two account-api replicas, two ib-connectors and two schwab-connectors. The test
creates the accounts through the REST API (Schwab logins through the real OAuth redirect flow),
starts `POST /api/integrations/refresh`, and once a share of the balances has arrived SIGKILLs the
NATS node leading the command stream, the ib-connector replica owning the most gateway sessions
and one schwab-connector replica.

What is correct for the user: the job they started completes on its own — every account
refreshed, none failed (a connector crash is our failover, not their error) — each account has
exactly one balance-history row for the day and its current balance is the broker's. The report
prints how long the pipeline stalled (longest gap between consecutive refresh completions), the
total time and what was killed when.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import nats
import psycopg
import pytest
from brokerlink_devkit.devstack.embedded import free_port
from brokerlink_shared.crypto import generate_key
from brokerlink_shared.dead_letters import DeadLetterStream
from brokerlink_shared.subjects import (
    COMMANDS,
    CONNECTOR_EVENTS,
    DEAD_LETTERS,
    STREAMS,
    Topology,
)

IB_GATEWAYS = 10
IB_CLIENTS_PER_GATEWAY = (
    4  # sessions per gateway (well under the simulator's 32-client limit)
)
SCHWAB_LOGINS = 2
SCHWAB_ACCOUNTS_PER_LOGIN = 25
TOTAL = 1000
IB_ACCOUNTS = TOTAL - SCHWAB_LOGINS * SCHWAB_ACCOUNTS_PER_LOGIN
KILL_AFTER = 150  # balances recorded for the job before the faults are injected
JOB_DEADLINE_S = 150.0

# Set-up alone (a 3-node cluster, 1,000 accounts through the API, 40 gateway sessions claiming
# their accounts on R3 storage) took 1.5-2.5 minutes on a loaded 2-core machine (2026-12-02).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]


# ---- the simulated world ---------------------------------------------------------------------


def ib_world() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Gateways with their managed accounts; returns (scenario, [{gateway, code, client_id, expected}])."""
    from brokerlink_simulators.ib_gateway import AccountSpec

    per_gateway = -(-IB_ACCOUNTS // IB_GATEWAYS)
    gateways, plan = [], []
    n = 0
    for g in range(IB_GATEWAYS):
        accounts = []
        for i in range(per_gateway):
            if n == IB_ACCOUNTS:
                break
            spec = {
                "code": f"U{8_000_000 + n}",
                "cash": {
                    "USD": str(Decimal(10_000 + 7 * n) + Decimal("0.25")),
                    "EUR": "500",
                },
                "fx_rates": {"EUR": "1.10"},
                "positions": [
                    {
                        "symbol": "AAPL",
                        "quantity": str(1 + n % 9),
                        "average_cost": "150",
                        "market_price": "190",
                    }
                ],
            }
            accounts.append(spec)
            plan.append(
                {
                    "gateway": f"gw{g}",
                    "code": spec["code"],
                    "client_id": 1 + i % IB_CLIENTS_PER_GATEWAY,
                    "expected": AccountSpec.model_validate(spec).net_liq,
                }
            )
            n += 1
        gateways.append({"name": f"gw{g}", "port": 0, "accounts": accounts})
    return {"gateways": gateways}, plan


def schwab_world() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    apps, logins, plan = [], [], []
    for g in range(SCHWAB_LOGINS):
        app_key, login = f"fault-app-{g}", f"fault-login-{g}"
        apps.append(
            {
                "app_key": app_key,
                "app_secret": f"fault-secret-{g}-xyz",
                "default_login": login,
            }
        )
        accounts = []
        for i in range(SCHWAB_ACCOUNTS_PER_LOGIN):
            number = f"{60_000_000 + g * 1000 + i}"
            value = round(20_000 + 13.5 * (g * 100 + i), 2)
            accounts.append(
                {
                    "account_number": number,
                    "liquidation_value": value,
                    "cash_balance": 1000.0,
                }
            )
            plan.append(
                {
                    "app_key": app_key,
                    "app_secret": f"fault-secret-{g}-xyz",
                    "login": login,
                    "number": number,
                    "expected": Decimal(str(value)),
                }
            )
        logins.append({"login_id": login, "accounts": accounts})
    # A generous per-app budget: the test is about faults, not Schwab's rate limit.
    return {"requests_per_minute": 6000, "apps": apps, "logins": logins}, plan


# ---- small helpers ---------------------------------------------------------------------------


async def poll(what: str, check: Any, timeout_s: float, interval_s: float = 0.2) -> Any:
    """Call `check()` until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})"
            )
        await asyncio.sleep(interval_s)


async def scalar(db: str, sql: str, *args: Any) -> Any:
    async with await psycopg.AsyncConnection.connect(db) as conn:
        row = await (await conn.execute(sql, args)).fetchone()
        return row[0] if row else None


# ---- the test --------------------------------------------------------------------------------


async def test_bulk_refresh_survives_nats_node_and_connector_replica_loss(
    infra: Any, processes: Any, tmp_path: Any
) -> None:
    from account_api.migrate import upgrade
    from brokerlink_fault_support import (
        BIN_ACCOUNT_API,
        BIN_IB_CONNECTOR,
        BIN_IB_SIM,
        BIN_SCHWAB_CONNECTOR,
        BIN_SCHWAB_SIM,
        read_json_line,
        start_nats_cluster,
        wait_http_ok,
    )

    t_start = time.monotonic()
    database = infra.new_database("fault")
    await asyncio.to_thread(upgrade, database)
    libpq = database.replace("postgresql+psycopg://", "postgresql://", 1)

    cluster = await asyncio.to_thread(start_nats_cluster, processes)

    ib_scenario, ib_plan = ib_world()
    sw_scenario, sw_plan = schwab_world()
    (tmp_path / "ib.json").write_text(json.dumps(ib_scenario))
    (tmp_path / "schwab.json").write_text(json.dumps(sw_scenario))
    ib_sim = processes.start(
        "ib-gateway-sim",
        [BIN_IB_SIM, "--scenario", str(tmp_path / "ib.json"), "--admin-port", "0"],
        stdout_pipe=True,
    )
    sw_sim = processes.start(
        "schwab-api-sim",
        [BIN_SCHWAB_SIM, "--scenario", str(tmp_path / "schwab.json")],
        stdout_pipe=True,
    )
    ib_ports: dict[str, int] = (await asyncio.to_thread(read_json_line, ib_sim))[
        "gateways"
    ]
    schwab_base: str = (await asyncio.to_thread(read_json_line, sw_sim))["base_url"]

    namespace = f"fault{secrets.token_hex(4)}"
    common = {
        "NATS_URL": cluster.urls,
        "BROKERLINK_NAMESPACE": namespace,
        "BROKERLINK_ENCRYPTION_KEYS": generate_key(),
        "BROKERLINK_STREAM_REPLICAS": "3",
        "BROKERLINK_LOG_LEVEL": "WARNING",
        "IB_CONNECTOR_ALLOWED_NETWORKS": "127.0.0.0/8",  # the simulated gateways
    }
    api_ports = [free_port(), free_port()]
    jwt_secret = secrets.token_urlsafe(32)
    for i, port in enumerate(api_ports):
        processes.start(
            f"account-api-{i}",
            [BIN_ACCOUNT_API],
            {
                **common,
                "DATABASE_URL": database,
                "ACCOUNT_API_JWT_SECRET": jwt_secret,
                "API_PORT": str(port),
                "ACCOUNT_API_WORKERS": "1",
                "ACCOUNT_API_SCHEDULED_REFRESH_INTERVAL_S": "0",
                "ACCOUNT_API_PUBLIC_URL": f"http://127.0.0.1:{api_ports[0]}",
                "ACCOUNT_API_SCHWAB_AUTHORIZE_URL": f"{schwab_base}/v1/oauth/authorize",
            },
        )
    for i, port in enumerate(api_ports):
        await asyncio.to_thread(
            wait_http_ok,
            f"http://127.0.0.1:{port}/healthz",
            processes.procs[f"account-api-{i}"],
        )
    # account-api owns the streams: start the connectors once they exist, replicated x3 with a leader.
    await poll(
        "account-api to declare the R3 streams",
        lambda: _streams_ready(cluster.urls, namespace),
        # each declaration attempt may wait DECLARE_TIMEOUT_S (30 s) for a fresh cluster's
        # meta leader: leave room for a few attempts on a busy machine
        120,
        0.25,
    )
    ib_health = {}
    for name in ("ib-a", "ib-b"):
        ib_health[name] = free_port()
        processes.start(
            name,
            [BIN_IB_CONNECTOR],
            {
                **common,
                "IB_CONNECTOR_REPLICA_ID": f"fault-{name}",
                "IB_CONNECTOR_HEALTH_PORT": str(ib_health[name]),
                "IB_CONNECTOR_IDLE_CLOSE_S": "3600",
            },
        )
    sw_health = {}
    for name in ("schwab-a", "schwab-b"):
        sw_health[name] = free_port()
        processes.start(
            name,
            [BIN_SCHWAB_CONNECTOR],
            {
                **common,
                "SCHWAB_CONNECTOR_API_BASE_URL": schwab_base,
                "SCHWAB_CONNECTOR_HEALTH_HOST": "127.0.0.1",
                "SCHWAB_CONNECTOR_HEALTH_PORT": str(sw_health[name]),
            },
        )
    # The four start together (each takes seconds to import on a busy machine); then all healthy.
    for name, port in {**ib_health, **sw_health}.items():
        await asyncio.to_thread(
            wait_http_ok, f"http://127.0.0.1:{port}/healthz", processes.procs[name]
        )
    t_up = time.monotonic()

    # Idle connections are dropped before the server's 5 s keep-alive can close them under a
    # request (a ReadError while creating the accounts, on a busy machine).
    apis = [
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{p}",
            timeout=30,
            limits=httpx.Limits(keepalive_expiry=2.0),
        )
        for p in api_ports
    ]
    try:
        await apis[0].post(
            "/api/auth/register",
            json={
                "email": "fault@example.com",
                "password": "fault-password-1",
                "name": "Fault",
            },
        )
        login = await apis[0].post(
            "/api/auth/login",
            json={"email": "fault@example.com", "password": "fault-password-1"},
        )
        login.raise_for_status()
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        for api in apis:
            api.headers.update(headers)

        # ---- 1,000 accounts through the REST API, spread over both replicas ----
        expected: dict[int, Decimal] = {}
        schwab_first: dict[str, int] = {}
        limit = asyncio.Semaphore(12)

        async def create(n: int, item: dict[str, Any]) -> None:
            api = apis[n % 2]
            async with limit:
                r = await api.post(
                    "/api/accounts", json={"name": f"fault {n}", "currency": "USD"}
                )
                assert r.status_code == 201, r.text
                account_id = r.json()["id"]
                if "code" in item:
                    body = {
                        "type": "IB",
                        "config": {
                            "host": "127.0.0.1",
                            "port": ib_ports[item["gateway"]],
                            "client_id": item["client_id"],
                            "account_code": item["code"],
                        },
                    }
                else:
                    body = {
                        "type": "SCHWAB",
                        "config": {
                            "app_key": item["app_key"],
                            "app_secret": item["app_secret"],
                            "account_number": item["number"],
                        },
                    }
                    schwab_first.setdefault(item["login"], account_id)
                r = await api.put(f"/api/accounts/{account_id}/integration", json=body)
                assert r.status_code == 200, r.text
                expected[account_id] = item["expected"]

        await asyncio.gather(
            *(create(n, item) for n, item in enumerate(ib_plan + sw_plan))
        )
        assert len(expected) == TOTAL

        # ---- one OAuth consent per Schwab login: start -> simulator consent -> our callback ----
        async with httpx.AsyncClient(timeout=30) as browser:
            for login_id, account_id in schwab_first.items():
                r = await apis[0].post(
                    f"/api/accounts/{account_id}/integration/oauth/start"
                )
                assert r.status_code == 200, r.text
                authorize = urlsplit(r.json()["authorize_url"])
                q = {k: v[0] for k, v in parse_qs(authorize.query).items()}
                consent = await browser.get(
                    f"{schwab_base}/v1/oauth/authorize/consent?"
                    + urlencode(
                        {
                            "client_id": q["client_id"],
                            "redirect_uri": q["redirect_uri"],
                            "state": q["state"],
                            "login": login_id,
                        }
                    )
                )
                assert consent.status_code == 302, consent.text
                back = await browser.get(consent.headers["location"])
                assert (
                    back.status_code == 303 and "oauth=ok" in back.headers["location"]
                ), (
                    back.status_code,
                    back.headers.get("location"),
                )

        # Sessions open on `integration.configured`; wait until every account is connected and
        # every Schwab account holds its login's tokens, so the refresh measures refreshing.
        async def ready() -> bool:
            async with await psycopg.AsyncConnection.connect(libpq) as conn:
                rows = await (
                    await conn.execute(
                        "SELECT integration_type, integration_status, token_access_expires_at IS NOT NULL, count(*)"
                        " FROM accounts GROUP BY 1, 2, 3"
                    )
                ).fetchall()
            readiness["last"] = rows
            ib = sum(n for t, s, _, n in rows if t == "IB" and s == "connected")
            sw = sum(n for t, _, tok, n in rows if t == "SCHWAB" and tok)
            return ib == IB_ACCOUNTS and sw == len(sw_plan)

        readiness: dict[str, Any] = {}
        try:
            await poll("IB sessions connected and Schwab tokens stored", ready, 60)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {readiness['last']}") from None
        t_ready = time.monotonic()

        # ---- the bulk refresh, and the faults while it runs ----
        r = await apis[1].post("/api/integrations/refresh")
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["total"] == TOTAL
        job_id = job["job_id"]
        t_job = time.monotonic()
        job_started_db = await scalar(
            libpq, "SELECT created_at FROM refresh_jobs WHERE id = %s", job_id
        )

        async def succeeded() -> int:
            return int(
                await scalar(
                    libpq,
                    "SELECT count(*) FROM refreshes WHERE job_id = %s AND status = 'succeeded'",
                    job_id,
                )
            )

        await poll(
            f"{KILL_AFTER} balances before the faults",
            lambda: _at_least(succeeded, KILL_AFTER),
            60,
            0.05,
        )
        done_at_kill = await succeeded()

        # The NATS node leading the command stream (where refresh.requested lives) is the victim.
        nc = await nats.connect(
            cluster.urls.split(","), max_reconnect_attempts=-1, reconnect_time_wait=0.5
        )
        try:
            topo = Topology(namespace)
            info = await nc.jetstream().stream_info(topo.stream_name(COMMANDS))
            victim_node = info.cluster.leader
            assert victim_node, info
            owned = {}
            async with httpx.AsyncClient(timeout=5) as h:
                for name, port in ib_health.items():
                    owned[name] = (
                        await h.get(f"http://127.0.0.1:{port}/healthz")
                    ).json()["detail"]["owned_sessions"]
            victim_ib = max(owned, key=lambda k: owned[k])
            kills: list[tuple[str, float]] = []
            for name in (f"nats-{victim_node}", victim_ib, "schwab-a"):
                kills.append((name, processes.sigkill(name)))
            kill_wall = datetime.now(UTC)

            # ---- the job completes on its own ----
            async def finished() -> dict[str, Any] | None:
                try:
                    r = await apis[0].get(f"/api/integrations/refresh/{job_id}")
                except httpx.HTTPError:
                    return None
                body = r.json()
                return body if body["done"] + body["failed"] == body["total"] else None

            final = await poll(
                "the refresh job to finish", finished, JOB_DEADLINE_S, 0.25
            )
            t_done = time.monotonic()

            # ---- checks ----
            async with await psycopg.AsyncConnection.connect(libpq) as conn:
                completions = [
                    row[0]
                    for row in await (
                        await conn.execute(
                            "SELECT completed_at FROM refreshes WHERE job_id = %s AND completed_at IS NOT NULL ORDER BY completed_at",
                            (job_id,),
                        )
                    ).fetchall()
                ]
                failures = await (
                    await conn.execute(
                        "SELECT account_id, message FROM refreshes WHERE job_id = %s AND status = 'failed' LIMIT 10",
                        (job_id,),
                    )
                ).fetchall()
                balances = dict(
                    await (
                        await conn.execute(
                            "SELECT id, current_balance FROM accounts WHERE integration_type IS NOT NULL"
                        )
                    ).fetchall()
                )
                stale = await (
                    await conn.execute(
                        "SELECT count(*) FROM accounts WHERE integration_type IS NOT NULL"
                        " AND (last_success_at IS NULL OR last_success_at < %s)",
                        (job_started_db,),
                    )
                ).fetchone()
                dup = await (
                    await conn.execute(
                        "SELECT count(*) FROM (SELECT account_id, date FROM account_balance_history"
                        " GROUP BY account_id, date HAVING count(*) > 1) d"
                    )
                ).fetchone()
                per_account_today = dict(
                    await (
                        await conn.execute(
                            "SELECT a.id, count(h.id) FROM accounts a LEFT JOIN account_balance_history h"
                            " ON h.account_id = a.id AND h.date = (a.balance_as_of AT TIME ZONE 'UTC')::date"
                            " WHERE a.integration_type IS NOT NULL GROUP BY a.id"
                        )
                    ).fetchall()
                )
                history_total = (
                    await (
                        await conn.execute(
                            "SELECT count(*) FROM account_balance_history"
                        )
                    ).fetchone()
                )[0]

            # Streams must still be replicated x3 on the surviving cluster, nothing parked.
            replicas = {}
            kv = [
                f"KV_{namespace}_{b}"
                for b in (
                    "ib_replicas",
                    "ib_sessions",
                    "ib_accounts",
                    "schwab_rate",
                    "schwab_logins",
                )
            ]
            for stream in [topo.stream_name(spec) for spec in STREAMS] + kv:
                si = await nc.jetstream().stream_info(stream)
                replicas[stream] = si.config.num_replicas
            dead = (
                await nc.jetstream().stream_info(topo.stream_name(DEAD_LETTERS))
            ).state.messages
            parked = [
                f"{letter.service} {letter.original_subject} x{letter.delivered}: {letter.error[:160]}"
                async for letter in DeadLetterStream(nc.jetstream(), topo).list(limit=5)
            ]
            events_leader = (
                await nc.jetstream().stream_info(topo.stream_name(CONNECTOR_EVENTS))
            ).cluster.leader
        finally:
            await nc.close()

        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(completions)]
        stall = max(gaps) if gaps else 0.0
        stall_at = completions[gaps.index(stall)] if gaps else None
        kill_gap = min(
            ((c - kill_wall).total_seconds() for c in completions if c > kill_wall),
            default=float("nan"),
        )
        report = [
            "",
            "=== fault test report ===",
            f"accounts: {TOTAL} ({IB_ACCOUNTS} IB on {IB_GATEWAYS} gateways x {IB_CLIENTS_PER_GATEWAY} client ids,"
            f" {len(sw_plan)} Schwab under {SCHWAB_LOGINS} logins); NATS 3 nodes, streams R3, sync_interval always",
            f"start-up {t_up - t_start:.1f}s, accounts + OAuth + sessions {t_ready - t_up:.1f}s",
            f"job {job_id}: done {final['done']} failed {final['failed']} of {final['total']}",
            f"faults after {done_at_kill} balances, {t_job and kills[0][1] - t_job:.1f}s into the job:",
            *[f"  SIGKILL {name} at job+{at - t_job:.2f}s" for name, at in kills],
            f"first balance after the kills: {kill_gap:.2f}s",
            f"longest stall (gap between consecutive balance updates): {stall:.2f}s"
            + (
                f" ending {(stall_at - kill_wall).total_seconds() + stall:+.1f}s after the kills"
                if stall_at
                else ""
            ),
            f"time to complete the job: {t_done - t_job:.1f}s (last completion"
            f" {(completions[-1] - job_started_db).total_seconds():.1f}s after the job was created)",
            f"streams: {replicas}; connector-events leader now {events_leader}; dead letters {dead}",
            f"history rows {history_total}; duplicated account/day {dup[0]}; accounts not refreshed {stale[0]}",
            f"total test time {time.monotonic() - t_start:.1f}s",
        ]
        print("\n".join(report))

        assert final["failed"] == 0, f"refreshes failed after the faults: {failures}"
        assert final["done"] == TOTAL
        assert stale[0] == 0, f"{stale[0]} accounts have no balance from this job"
        assert dup[0] == 0, "balance history duplicated"
        wrong_days = {a: n for a, n in per_account_today.items() if n != 1}
        assert not wrong_days, (
            f"accounts without exactly one history row for the day: {list(wrong_days.items())[:10]}"
        )
        wrong = {
            a: (balances.get(a), v) for a, v in expected.items() if balances.get(a) != v
        }
        assert not wrong, (
            f"{len(wrong)} balances differ from the simulator: {list(wrong.items())[:10]}"
        )
        assert all(n == 3 for n in replicas.values()), (
            f"streams lost their replicas: {replicas}"
        )
        assert dead == 0, f"{dead} messages parked in dead letters, first: {parked}"
        assert not any(
            p.alive() for n, p in processes.procs.items() if n in dict(kills)
        )
    finally:
        for api in apis:
            await api.aclose()


async def _at_least(count: Any, n: int) -> int | None:
    value = await count()
    return value if value >= n else None


async def _streams_ready(urls: str, namespace: str) -> bool:
    topo = Topology(namespace)
    try:
        nc = await nats.connect(
            urls.split(","), connect_timeout=2, max_reconnect_attempts=0
        )
    except Exception:
        return False
    try:
        for spec in STREAMS:
            info = await nc.jetstream(timeout=2).stream_info(topo.stream_name(spec))
            if (
                info.config.num_replicas != 3
                or not info.cluster
                or not info.cluster.leader
            ):
                return False
        return True
    except Exception:
        return False
    finally:
        await nc.close()
