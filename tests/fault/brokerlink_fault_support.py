"""Process plumbing for the fault test: a 3-node NATS JetStream cluster and the services as OS
processes on loopback, each in its own process group so it can be SIGKILLed alone and every
one of them is reaped at the end, whatever happened."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from brokerlink_devkit.devstack.embedded import free_port, nats_server_binary

BIN = Path(sys.executable).parent


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    killed_at: float | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


@dataclass
class Processes:
    """Every child the test starts; `close()` kills them all (process groups), in reverse."""

    workdir: Path
    procs: dict[str, Proc] = field(default_factory=dict)

    def start(
        self,
        name: str,
        cmd: list[str],
        env: dict[str, str] | None = None,
        *,
        stdout_pipe: bool = False,
    ) -> Proc:
        log = self.workdir / f"{name}.log"
        out = log.open("ab")
        popen = subprocess.Popen(
            cmd,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE if stdout_pipe else out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # own process group: killpg hits it and its children only
            cwd=self.workdir,
        )
        out.close()
        proc = Proc(name, popen, log)
        self.procs[name] = proc
        return proc

    def sigkill(self, name: str) -> float:
        """SIGKILL the whole process group of `name`; returns the monotonic time of the kill."""
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.popen.wait(10)
        proc.killed_at = time.monotonic()
        return proc.killed_at

    def close(self) -> None:
        # One at a time, the last started first: a service stops in a moment while NATS and
        # the simulators it talks to are still up, but all signalled at once, a connector spent
        # its whole grace period retrying status events into a bus that was going away.
        deadline = time.monotonic() + 10
        for proc in reversed(list(self.procs.values())):
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            # the group may still hold children even when the leader is gone
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(5)
            if proc.popen.stdout is not None:
                proc.popen.stdout.close()

    def dump_logs(self) -> str:
        return "\n".join(
            f"----- {p.name} (rc={p.popen.poll()}) {p.log}\n{p.tail()}"
            for p in self.procs.values()
        )


@dataclass
class NatsNode:
    name: str
    client_port: int
    cluster_port: int
    monitor_port: int

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"


@dataclass
class NatsCluster:
    nodes: list[NatsNode]

    @property
    def urls(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def node(self, server_name: str) -> NatsNode:
        return next(n for n in self.nodes if n.name == server_name)


def start_nats_cluster(
    procs: Processes, size: int = 3, timeout_s: float = 30, attempts: int = 3
) -> NatsCluster:
    """`size` nats-server processes routed to each other, JetStream with fsync on every write.

    The ports are picked free and handed to the servers a moment later; another process on the
    machine (any outgoing connection takes an ephemeral port) can bind one in between. A node
    that exits with "address already in use" is that race, not a defect: the cluster is
    started again on fresh ports."""
    for attempt in range(1, attempts + 1):
        nodes = [
            NatsNode(f"n{i + 1}", free_port(), free_port(), free_port())
            for i in range(size)
        ]
        _launch(procs, nodes, attempt)
        failure = _wait_healthy(procs, nodes, timeout_s)
        if failure is None:
            return NatsCluster(nodes)
        if attempt < attempts and _port_taken(procs, nodes):
            for node in nodes:
                procs.sigkill(f"nats-{node.name}")
            continue
        raise AssertionError(f"{failure}\n{procs.dump_logs()}")
    raise AssertionError("unreachable")


def _launch(procs: Processes, nodes: list[NatsNode], attempt: int) -> None:
    routes = ", ".join(f'"nats-route://127.0.0.1:{n.cluster_port}"' for n in nodes)
    for node in nodes:
        store = procs.workdir / f"{node.name}-{attempt}"
        store.mkdir(parents=True, exist_ok=True)
        conf = store / "nats.conf"
        conf.write_text(
            f'server_name: "{node.name}"\n'
            f'listen: "127.0.0.1:{node.client_port}"\n'
            f'http: "127.0.0.1:{node.monitor_port}"\n'
            "max_payload: 4MB\n"
            f'jetstream {{\n  store_dir: "{store / "js"}"\n  sync_interval: always\n}}\n'
            f'cluster {{\n  name: "brokerlink-fault"\n  listen: "127.0.0.1:{node.cluster_port}"\n'
            f"  routes: [{routes}]\n}}\n"
        )
        procs.start(f"nats-{node.name}", [nats_server_binary(), "-c", str(conf)])


def _wait_healthy(
    procs: Processes, nodes: list[NatsNode], timeout_s: float
) -> str | None:
    """None once every node reports healthy (the meta group has a leader), else what failed."""
    deadline = time.monotonic() + timeout_s
    pending = list(nodes)
    while pending:
        node = pending[0]
        if not procs.procs[f"nats-{node.name}"].alive():
            return f"NATS node {node.name} exited"
        with contextlib.suppress(httpx.HTTPError):
            r = httpx.get(f"http://127.0.0.1:{node.monitor_port}/healthz", timeout=1)
            if r.status_code == 200:
                pending.pop(0)
                continue
        if any(not procs.procs[f"nats-{n.name}"].alive() for n in nodes):
            return "a NATS node exited"
        if time.monotonic() > deadline:
            return f"NATS node {node.name} not healthy"
        time.sleep(0.1)
    return None


def _port_taken(procs: Processes, nodes: list[NatsNode]) -> bool:
    return any(
        "address already in use" in procs.procs[f"nats-{n.name}"].tail(50)
        for n in nodes
    )


def read_json_line(proc: Proc, timeout_s: float = 30) -> dict:
    """The first stdout line of a simulator (it prints its ports as JSON when ready)."""
    import selectors

    assert proc.popen.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.popen.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    buf = b""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not proc.alive():
            raise AssertionError(f"{proc.name} did not report ready:\n{proc.tail()}")
        if sel.select(min(remaining, 0.5)):
            chunk = os.read(proc.popen.stdout.fileno(), 65536)
            if not chunk:
                continue
            buf += chunk
    sel.close()
    return json.loads(buf.split(b"\n", 1)[0])


def wait_http_ok(url: str, proc: Proc, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise AssertionError(f"{proc.name} exited:\n{proc.tail()}")
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise AssertionError(f"{proc.name} not healthy at {url}: {last}\n{proc.tail()}")


BIN_ACCOUNT_API = str(BIN / "account-api")
BIN_IB_CONNECTOR = str(BIN / "ib-connector")
BIN_SCHWAB_CONNECTOR = str(BIN / "schwab-connector")
BIN_IB_SIM = str(BIN / "ib-gateway-sim")
BIN_SCHWAB_SIM = str(BIN / "schwab-api-sim")
