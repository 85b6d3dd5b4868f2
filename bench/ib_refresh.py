"""Benchmark: refresh.requested -> ib-connector -> simulated IB Gateways -> balance.updated.

Starts an embedded nats-server, the IB Gateway simulator and one ib-connector as separate OS
processes, opens one gateway session per account (N accounts over M gateways, each account with
its own client id), then measures refreshes through the whole pipeline:

1. a paced phase at `--rate` refreshes/s: latency p50/p99 from publish to balance.updated;
2. a saturation phase with `--window` refreshes in flight: the most refreshes/s it sustains.

Prints the figures, the peak RSS of every process and the core count. Not a test.

    uv run python bench/ib_refresh.py --accounts 1000 --gateways 50 --rate 500 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import orjson
import psutil  # type: ignore[import-untyped]
from brokerlink_devkit.devstack.embedded import EmbeddedNats
from brokerlink_shared.contracts.events import IntegrationConfigured, RefreshRequested
from brokerlink_shared.contracts.values import IBConnection
from brokerlink_shared.messaging import ensure_streams, make_broker
from brokerlink_shared.subjects import (
    BALANCE_UPDATED,
    INTEGRATION_STATUS,
    REFRESH_FAILED,
    Broker,
    Topology,
)


@dataclass
class Tracker:
    sent: dict[str, float] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    failed: int = 0
    done: int = 0
    last_done_at: float = 0.0
    connected: set[int] = field(default_factory=set)
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    def on_result(self, refresh_id: str, ok: bool) -> None:
        started = self.sent.pop(refresh_id, None)
        if started is None:
            return
        now = time.perf_counter()
        self.done += 1
        self.last_done_at = now
        if ok:
            self.latencies_ms.append((now - started) * 1000)
        else:
            self.failed += 1
        self.progress.set()


class RssSampler:
    """Peak resident memory per process, sampled in the background."""

    def __init__(self, processes: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in processes.items()}
        self.peak: dict[str, int] = dict.fromkeys(processes, 0)
        self.cpu_start = {name: self._cpu(p) for name, p in self.procs.items()}

    @staticmethod
    def _cpu(proc: psutil.Process) -> float:
        times = proc.cpu_times()
        return float(times.user + times.system)

    def sample(self) -> None:
        for name, proc in self.procs.items():
            with contextlib.suppress(psutil.Error):
                self.peak[name] = max(self.peak[name], proc.memory_info().rss)

    def cpu_used(self) -> dict[str, float]:
        return {
            name: self._cpu(p) - self.cpu_start[name] for name, p in self.procs.items()
        }

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.25)


def _scenario(
    accounts: int, gateways: int
) -> tuple[dict[str, Any], list[tuple[str, str, int]]]:
    """M gateways, each managing its share of the accounts; returns (scenario, [(gateway, code, client_id)])."""
    per_gateway = -(-accounts // gateways)
    specs, plan = [], []
    for g in range(gateways):
        codes = [
            f"U{7_000_000 + g * 1000 + i}"
            for i in range(per_gateway)
            if g * per_gateway + i < accounts
        ]
        if not codes:
            break
        specs.append(
            {
                "name": f"gw{g}",
                "port": 0,
                "max_clients": len(codes) + 8,
                "accounts": [
                    {
                        "code": code,
                        "cash": {"USD": str(10_000 + i), "HKD": "5000"},
                        "fx_rates": {"HKD": "0.128"},
                        "positions": [
                            {
                                "symbol": "AAPL",
                                "quantity": "10",
                                "average_cost": "150",
                                "market_price": "190",
                            },
                            {
                                "symbol": "MSFT",
                                "quantity": "5",
                                "average_cost": "300",
                                "market_price": "410",
                            },
                            {
                                "symbol": "700",
                                "currency": "HKD",
                                "quantity": "100",
                                "average_cost": "320",
                                "market_price": "380",
                            },
                        ],
                    }
                    for i, code in enumerate(codes)
                ],
            }
        )
        plan += [(f"gw{g}", code, i + 1) for i, code in enumerate(codes)]
    return {"gateways": specs}, plan


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=log.open("wb"))


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--gateways", type=int, default=50)
    parser.add_argument(
        "--rate", type=float, default=500.0, help="paced phase: refreshes per second"
    )
    parser.add_argument(
        "--duration", type=float, default=20.0, help="paced phase: seconds"
    )
    parser.add_argument(
        "--window", type=int, default=256, help="saturation phase: refreshes in flight"
    )
    parser.add_argument(
        "--saturation",
        type=int,
        default=10_000,
        help="saturation phase: refreshes in total",
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="ib-bench-"))
    embedded = EmbeddedNats(workdir / "nats")
    nats_url = embedded.start()
    topology = Topology("ibbench")
    children: list[subprocess.Popen[bytes]] = []
    try:
        scenario, plan = _scenario(args.accounts, args.gateways)
        scenario_path = workdir / "scenario.json"
        scenario_path.write_text(json.dumps(scenario))
        env = {
            **os.environ,
            "NATS_URL": nats_url,
            "BROKERLINK_NAMESPACE": topology.namespace,
            "BROKERLINK_LOG_LEVEL": "WARNING",
        }
        sim = _start(
            [
                sys.executable,
                "-m",
                "brokerlink_simulators.ib_gateway",
                "--scenario",
                str(scenario_path),
                "--admin-port",
                "0",
            ],
            env,
            workdir / "sim.log",
        )
        children.append(sim)
        assert sim.stdout is not None
        ready = json.loads(await asyncio.to_thread(sim.stdout.readline))
        ports: dict[str, int] = ready["gateways"]

        broker = make_broker(nats_url, topology, "ib-bench")
        await broker.connect()
        await ensure_streams(broker, topology)
        await broker.stop()

        connector_env = {
            **env,
            "IB_CONNECTOR_HEALTH_PORT": "0",
            "IB_CONNECTOR_IDLE_CLOSE_S": "3600",
            "IB_CONNECTOR_REPLICA_ID": "bench-connector",
            "IB_CONNECTOR_ALLOWED_NETWORKS": "127.0.0.0/8",  # the simulated gateways
        }
        profile = (
            ["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"]]
            if os.environ.get("BENCH_PROFILE")
            else []
        )
        connector = _start(
            [sys.executable, *profile, "-m", "ib_connector.main"],
            connector_env,
            workdir / "connector.log",
        )
        children.append(connector)
        assert embedded.process is not None
        sampler = RssSampler(
            {
                "ib-connector": connector.pid,
                "ib-gateway-sim": sim.pid,
                "nats-server": embedded.process.pid,
                "bench (load generator)": os.getpid(),
            }
        )
        sampling = asyncio.create_task(sampler.run())

        nc = await nats.connect(nats_url, max_reconnect_attempts=-1)
        js = nc.jetstream()
        tracker = Tracker()

        async def on_balance(msg: Any) -> None:
            tracker.on_result(orjson.loads(msg.data)["payload"]["refresh_id"], ok=True)

        async def on_failed(msg: Any) -> None:
            tracker.on_result(orjson.loads(msg.data)["payload"]["refresh_id"], ok=False)

        async def on_status(msg: Any) -> None:
            event = orjson.loads(msg.data)
            if event["payload"]["status"] == "connected":
                tracker.connected.add(event["account_id"])
            else:
                tracker.connected.discard(event["account_id"])
            tracker.progress.set()

        await nc.subscribe(topology.subject(BALANCE_UPDATED, Broker.IB), cb=on_balance)
        await nc.subscribe(topology.subject(REFRESH_FAILED, Broker.IB), cb=on_failed)
        await nc.subscribe(
            topology.subject(INTEGRATION_STATUS, Broker.IB), cb=on_status
        )
        await nc.flush()
        await _wait_for_subscription(nc, topology)

        configs = {
            account_id: IBConnection(
                host="127.0.0.1", port=ports[gw], client_id=cid, account_code=code
            )
            for account_id, (gw, code, cid) in enumerate(plan, start=1)
        }
        # 1) open every session
        started = time.perf_counter()
        for account_id, config in configs.items():
            event = IntegrationConfigured(
                user_id=1,
                account_id=account_id,
                payload={"broker": "IB", "config": config, "version": 1},
            )
            await js.publish(
                topology.subject("integration.configured", Broker.IB),
                event.model_dump_json().encode(),
                headers={"Nats-Msg-Id": str(event.event_id)},
            )
        while len(tracker.connected) < len(configs):
            tracker.progress.clear()
            try:
                await asyncio.wait_for(tracker.progress.wait(), 60)
            except TimeoutError:
                raise SystemExit(
                    f"only {len(tracker.connected)} of {len(configs)} sessions connected"
                ) from None
        open_s = time.perf_counter() - started
        sampler.sample()
        rss_open = psutil.Process(connector.pid).memory_info().rss

        bodies = {
            account_id: _refresh_template(account_id, config)
            for account_id, config in configs.items()
        }
        subject = topology.subject("refresh.requested", Broker.IB)
        account_ids = list(configs)

        async def send(i: int) -> None:
            account_id = account_ids[i % len(account_ids)]
            refresh_id = str(uuid.uuid4())
            body = bodies[account_id].replace(
                b"00000000-0000-0000-0000-000000000000", refresh_id.encode()
            )
            tracker.sent[refresh_id] = time.perf_counter()
            await js.publish(subject, body, headers={"Nats-Msg-Id": refresh_id})

        # 2) paced phase
        total = int(args.rate * args.duration)
        cpu_before = sampler.cpu_used()
        t0 = time.perf_counter()
        pending: set[asyncio.Task[None]] = set()
        for i in range(total):
            due = t0 + i / args.rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(send(i))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
        await _drain(tracker, 30)
        paced_elapsed = tracker.last_done_at - t0
        paced = (
            tracker.done,
            tracker.failed,
            sorted(tracker.latencies_ms),
            paced_elapsed,
        )
        cpu_paced = {k: v - cpu_before[k] for k, v in sampler.cpu_used().items()}

        # 3) saturation phase
        tracker.done = tracker.failed = 0
        tracker.latencies_ms = []
        window = asyncio.Semaphore(args.window)
        t1 = time.perf_counter()

        async def send_windowed(i: int) -> None:
            await window.acquire()
            await send(i)

        def release(_: Any = None) -> None:
            window.release()

        original = tracker.on_result

        def on_result(refresh_id: str, ok: bool) -> None:
            if refresh_id in tracker.sent:
                release()
            original(refresh_id, ok)

        tracker.on_result = on_result  # type: ignore[method-assign]
        for i in range(args.saturation):
            await send_windowed(i)
        await _drain(tracker, 60)
        sat_elapsed = tracker.last_done_at - t1
        sampler.sample()
        sampling.cancel()

        p = paced[2]
        print(
            f"machine: {os.cpu_count()} cores ({psutil.cpu_count(logical=False)} physical)"
        )
        print(
            f"accounts: {len(configs)} over {len(ports)} simulated gateways, one session each (client ids 1..{max(c.client_id for c in configs.values())} per gateway)"
        )
        print(
            f"open {len(configs)} sessions: {open_s:.1f} s; connector RSS with them open: {rss_open / 2**20:.0f} MiB"
        )
        print(
            f"paced phase @ {args.rate:.0f}/s for {args.duration:.0f} s: {paced[0]} refreshes, {paced[1]} failed, "
            f"{paced[0] / paced[3]:.0f} refreshes/s, latency p50 {statistics.median(p):.1f} ms, "
            f"p99 {p[int(len(p) * 0.99) - 1]:.1f} ms, max {p[-1]:.1f} ms"
        )
        s = sorted(tracker.latencies_ms)
        print(
            f"saturation phase, {args.window} in flight: {tracker.done} refreshes, {tracker.failed} failed, "
            f"{tracker.done / sat_elapsed:.0f} refreshes/s, latency p50 {statistics.median(s):.1f} ms, p99 {s[int(len(s) * 0.99) - 1]:.1f} ms"
        )
        print(
            "CPU seconds during the paced phase: "
            + ", ".join(f"{k} {v:.1f}" for k, v in cpu_paced.items())
        )
        print(
            "peak RSS: "
            + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in sampler.peak.items())
        )
        await nc.drain()
    finally:
        for child in reversed(children):
            child.terminate()
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
        embedded.stop()


def _refresh_template(account_id: int, config: IBConnection) -> bytes:
    event = RefreshRequested(
        user_id=1,
        account_id=account_id,
        payload={"broker": "IB", "refresh_id": uuid.UUID(int=0), "config": config},
    )
    return event.model_dump_json().encode()


async def _drain(tracker: Tracker, timeout_s: float) -> None:
    deadline = time.perf_counter() + timeout_s
    while tracker.sent and time.perf_counter() < deadline:
        tracker.progress.clear()
        try:
            await asyncio.wait_for(
                tracker.progress.wait(), max(0.1, deadline - time.perf_counter())
            )
        except TimeoutError:
            break
    if tracker.sent:
        print(f"warning: {len(tracker.sent)} refreshes never answered")
        tracker.sent.clear()


async def _wait_for_subscription(nc: Any, topology: Topology) -> None:
    """Wait for the connector to answer health requests (its consumers are then running)."""
    for _ in range(200):
        try:
            await nc.request(topology.health_subject("ib-connector"), b"", timeout=0.5)
            return
        except Exception:
            await asyncio.sleep(0.1)
    raise SystemExit("the connector did not come up")


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
