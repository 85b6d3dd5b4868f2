"""`make run`: start the whole system as supervised child processes with prefixed logs.

Order: NATS and PostgreSQL (given by NATS_URL / DATABASE_URL, else embedded under `.data/`),
migrations, simulators (demo mode), account-api, connectors, demo data. Ctrl-C or SIGTERM stops
every child; a second run reuses `.data/`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import orjson
from brokerlink_shared.crypto import generate_key

from brokerlink_devkit.devstack.embedded import (
    EmbeddedNats,
    EmbeddedPostgres,
    port_is_free,
    sqlalchemy_url,
)

COLOURS = ["36", "33", "35", "32", "34", "31", "96", "93"]
_print_lock = threading.Lock()


def say(message: str) -> None:
    with _print_lock:
        print(f"\033[1m[run]\033[0m {message}", flush=True)  # noqa: T201


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    colour: str
    process: subprocess.Popen[bytes] | None = None
    first_line: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # own process group: we signal the whole group
        )
        assert self.process.stdout is not None
        threading.Thread(
            target=self._pump, args=(self.process.stdout,), daemon=True
        ).start()

    def _pump(self, stream: IO[bytes]) -> None:
        prefix = f"\033[{self.colour}m{self.name:>16} |\033[0m "
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            if not self.first_line and line.startswith("{"):
                self.first_line.append(line)
                self.ready.set()
            with _print_lock:
                sys.stdout.write(prefix + line + "\n")
                sys.stdout.flush()
        self.ready.set()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        if not self.process or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


class Stop(Exception):
    pass


def _read_or_create(path: Path, factory: str) -> str:
    if path.exists():
        return path.read_text().strip()
    # Created 0600 from the start: never readable by others, not even for a moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(factory)
    return factory


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def wait_for_healthy(url: str, children: list[Child], timeout_s: float) -> None:
    """Poll account-api's /healthz until it answers 200 (database and bus up)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in children:
            if not child.alive():
                raise RuntimeError(f"{child.name} exited during start-up")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not become healthy in {timeout_s:.0f}s")


def main() -> None:
    root = Path(os.environ.get("BROKERLINK_ROOT", Path.cwd()))
    data = Path(os.environ.get("BROKERLINK_DATA_DIR", root / ".data"))
    data.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    children: list[Child] = []
    embedded_nats: EmbeddedNats | None = None
    embedded_pg: EmbeddedPostgres | None = None

    def handle_signal(signum: int, _frame: object) -> None:
        raise Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, handle_signal)
    signal.signal(signal.SIGTERM, handle_signal)

    api_host = env.get("API_HOST", "127.0.0.1")
    api_port = int(env.get("API_PORT", "8000"))
    if not port_is_free(api_port, api_host):
        say(
            f"port {api_host}:{api_port} is already in use: stop what uses it or set API_PORT; exiting"
        )
        sys.exit(1)

    exit_code = 0
    try:
        env.setdefault(
            "BROKERLINK_ENCRYPTION_KEYS",
            _read_or_create(data / "encryption.key", generate_key()),
        )
        env.setdefault(
            "ACCOUNT_API_JWT_SECRET",
            _read_or_create(data / "jwt.secret", generate_key()),
        )
        if "NATS_URL" not in env:
            port_file = data / "nats.port"
            port = int(port_file.read_text()) if port_file.exists() else 4222
            if not port_is_free(port):
                port = 0
            embedded_nats = EmbeddedNats(data / "nats", port=port or None)
            env["NATS_URL"] = embedded_nats.start()
            port_file.write_text(str(embedded_nats.port))
            say(
                f"embedded NATS (JetStream) at {env['NATS_URL']}, data in {data / 'nats'}"
            )
        else:
            say(f"using NATS at {env['NATS_URL']}")
        if "DATABASE_URL" not in env:
            embedded_pg = EmbeddedPostgres(data / "pg")
            embedded_pg.start()
            env["DATABASE_URL"] = sqlalchemy_url(
                embedded_pg.ensure_database("brokerlink")
            )
            say(f"embedded PostgreSQL 16 (pgserver), data in {data / 'pg'}")
        else:
            say("using PostgreSQL from DATABASE_URL")
        env["API_HOST"], env["API_PORT"] = api_host, str(api_port)
        public_url = env.setdefault(
            "ACCOUNT_API_PUBLIC_URL", f"http://{api_host}:{api_port}"
        )

        say("applying database migrations")
        subprocess.run([_bin("account-api"), "migrate"], env=env, check=True)

        demo_default = "0" if env.get("SCHWAB_CONNECTOR_API_BASE_URL") else "1"
        demo = env.get("BROKERLINK_DEMO", demo_default).lower() in (
            "1",
            "true",
            "yes",
            "on",
        )
        colour = iter(COLOURS)
        demo_gateways: dict[str, int] = {}
        if demo:
            sims = [
                Child(
                    "ib-gateway-sim",
                    [
                        _bin("ib-gateway-sim"),
                        "--scenario",
                        str(root / "simulators/scenarios/ib_demo.json"),
                        "--admin-port",
                        "0",
                    ],
                    env,
                    next(colour),
                ),
                Child(
                    "schwab-api-sim",
                    [
                        _bin("schwab-api-sim"),
                        "--scenario",
                        str(root / "simulators/scenarios/schwab_demo.json"),
                        "--port",
                        "0",
                    ],
                    env,
                    next(colour),
                ),
            ]
            for sim in sims:
                sim.start()
                children.append(sim)
            for sim in sims:
                if not sim.ready.wait(30) or not sim.first_line:
                    raise RuntimeError(f"{sim.name} did not report ready")
            ib_info = orjson.loads(sims[0].first_line[0])
            schwab_info = orjson.loads(sims[1].first_line[0])
            demo_gateways = ib_info["gateways"]
            env["SCHWAB_CONNECTOR_API_BASE_URL"] = schwab_info["base_url"]
            env["ACCOUNT_API_SCHWAB_AUTHORIZE_URL"] = (
                schwab_info["base_url"] + "/v1/oauth/authorize"
            )
            env["IB_GATEWAY_SIM_ADMIN_URL"] = ib_info["admin_url"]
            env["SCHWAB_API_SIM_ADMIN_URL"] = schwab_info["base_url"] + "/admin"
            say(
                f"demo mode: simulated IB gateways {demo_gateways}, Schwab API at {schwab_info['base_url']}"
            )

        for name in ("account-api", "ib-connector", "schwab-connector"):
            child = Child(name, [_bin(name)], env, next(colour))
            child.start()
            children.append(child)
        wait_for_healthy(f"{public_url}/healthz", children, timeout_s=90)
        if demo:
            from brokerlink_devkit.devstack.demo import seed_demo

            login = seed_demo(public_url, demo_gateways)
            say(f"demo login: {login[0]} / {login[1]}")
        say(f"brokerlink is up: open {public_url}  (Ctrl-C stops everything)")
        parent = os.getppid()
        while True:
            if (
                os.getppid() != parent
            ):  # `make` (or the terminal) went away without signalling us
                raise Stop("parent process exited")
            for child in children:
                if not child.alive():
                    code = child.process.returncode if child.process else "?"
                    raise RuntimeError(f"{child.name} exited with code {code}")
            time.sleep(0.5)
    except Stop as stop:
        say(f"{stop}: stopping")
    except (
        RuntimeError,
        subprocess.CalledProcessError,
        TimeoutError,
        OSError,
        httpx.HTTPError,
    ) as exc:
        say(f"error: {exc}; stopping")
        exit_code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for child in reversed(children):
            child.stop()
        if embedded_nats:
            embedded_nats.stop()
        if embedded_pg:
            embedded_pg.stop()
        say("all processes stopped")
    sys.exit(exit_code)


if __name__ == "__main__":
    main()
