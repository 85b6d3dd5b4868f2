"""The deploy smoke run: the shipped deployments started as local processes, exactly as they say.

`run_compose()` renders docker-compose.yml (its defaults and the `demo` profile, the secrets a
user puts in .env) and `run_kubernetes()` renders the production overlay (`kubectl kustomize`,
else kustomize_lite), NATS from deploy/nats/values.yaml (three nodes, as the chart builds them)
and PostgreSQL as deploy/postgres/cluster.yaml bootstraps it. Every container becomes a process:
its command and arguments from the manifest over the image's (the one Dockerfile, with the build
arguments docker-compose.yml gives each image), its environment from the image, the manifest,
config maps and secrets. What stands in for the container runtime, and nothing else:

- each pod (compose service) gets its own loopback address; host names (compose service names,
  Kubernetes services, api.schwabapi.com) resolve to those addresses, a bind to all interfaces
  binds the pod's address (see netshim/sitecustomize.py), so a service that binds 127.0.0.1 is
  as unreachable for the kubelet as it would be;
- volumes are directories under the run's temporary directory;
- the IB gateway's host name resolves to a private (10.x) address in front of its loopback one,
  as on a pod or compose network, so IB_CONNECTOR_ALLOWED_NETWORKS stays as the manifest says;
- the image contains only its package's runtime dependencies: imports of anything else fail;
- the Schwab simulator serves TLS for api.schwabapi.com with a CA the pods trust.

Then, through the REST API as a user would: register, an IB account against the IB simulator and
a Schwab account against the Schwab simulator (OAuth included), test, refresh, balances; the
schema job and the legacy-migrator job as defined; every probe on the pod's address. Each NATS
user runs with exactly its permissions: a violation in the server log fails the run. A defect
is reported as `<manifest>: <key>: <what is wrong>` (ManifestDefect).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import importlib.metadata
import ipaddress
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import yaml

REPO = Path(__file__).resolve().parents[2]
SHIM = Path(__file__).with_name("netshim")
VENV_BIN = Path(sys.executable).parent
IB_SIM_HOST = (
    "ib-gateway.brokerlink.test"  # where the Kubernetes run's user says the gateway is
)


class Unsupported(Exception):
    """This machine cannot host the run (reported as a skip with the reason)."""


class ManifestDefect(AssertionError):
    """A deployment manifest that does not work as written."""

    def __init__(self, manifest: str, key: str, problem: str) -> None:
        super().__init__(f"{manifest}: {key}: {problem}")


_STARTED = time.monotonic()


def log(message: str) -> None:
    sys.stderr.write(f"[deploy-smoke {time.monotonic() - _STARTED:6.1f}s] {message}\n")
    sys.stderr.flush()


# --- addresses ------------------------------------------------------------------------------------


class Addresses:
    """Loopback addresses, one per pod, in a /16 of 127/8 picked at random per run."""

    def __init__(self) -> None:
        # spreads concurrent runs over 127/8, nothing secret
        self._octets = f"{random.randint(64, 250)}.{random.randint(0, 255)}"  # noqa: S311
        self._base = f"127.{self._octets}"
        self._next = 2
        self.hosts: dict[str, list[str]] = {}
        self.virtual: dict[str, str] = {}

    def shim(self) -> dict[str, Any]:
        return {"hosts": self.hosts, "virtual": self.virtual}

    def private(self, host: str, ip: str) -> None:
        """Let `host` resolve to a private address (10.x, as on a pod network) in front of `ip`:
        for what an application checks to be in a private network (the IB gateway)."""
        virtual = "10." + self._octets + "." + ip.rsplit(".", 1)[1]
        self.virtual[virtual] = ip
        self.hosts[host] = [virtual]

    def new(self) -> str:
        ip = f"{self._base}.{self._next}"
        self._next += 1
        return ip

    def name(self, host: str, *ips: str) -> None:
        self.hosts.setdefault(host, [])
        self.hosts[host] += [ip for ip in ips if ip not in self.hosts[host]]


# --- images ---------------------------------------------------------------------------------------


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _subst(text: str, values: dict[str, str]) -> str:
    return re.sub(
        r"\$\{(\w+)\}|\$(\w+)",
        lambda m: values.get(m.group(1) or m.group(2), m.group(0)),
        text,
    )


@dataclass
class Image:
    """What the smoke run needs of a built image: defaults and contents."""

    name: str
    env: dict[str, str]
    entrypoint: list[str]
    cmd: list[str]
    workdir: Path
    links: dict[str, str]  # absolute path in the image -> local path
    blocked_modules: list[str]
    package: str


def _exec_form(rest: str) -> list[str]:
    return list(json.loads(rest)) if rest.startswith("[") else ["/bin/sh", "-c", rest]


@functools.cache
def _runtime_closure(package: str) -> frozenset[str]:
    """Distributions `uv sync --frozen --no-dev --package <package>` installs (the image's)."""
    uv = os.environ.get("UV") or shutil.which("uv") or str(REPO / ".tools/bin/uv")
    out = subprocess.run(
        [uv, "export", "--frozen", "--no-dev", "--no-hashes", "--package", package],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
        timeout=60,
    ).stdout
    names = set()
    for line in out.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-e "):
            path = REPO / line[3:].strip()
            text = (path / "pyproject.toml").read_text()
            names.add(re.search(r'^name = "([^"]+)"', text, re.M).group(1))  # type: ignore[union-attr]
        else:
            names.add(re.split(r"[=<>;\[ ]", line, maxsplit=1)[0])
    return frozenset(_normalise(n) for n in names)


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _blocked_modules(closure: frozenset[str]) -> list[str]:
    by_module = importlib.metadata.packages_distributions()
    return sorted(
        module
        for module, dists in by_module.items()
        if not module.startswith("_")
        and not any(_normalise(d) in closure for d in dists)
        and module not in sys.stdlib_module_names
    )


def build_image(
    name: str, dockerfile: Path, args: dict[str, str], target: str | None, root: Path
) -> Image:
    """Read the Dockerfile's final (or target) stage for these build arguments."""
    stages: list[tuple[str, list[tuple[str, str]]]] = []
    global_args: dict[str, str] = {}
    for kind, rest in _instructions(dockerfile.read_text()):
        if kind == "FROM":
            m = re.search(r"\bAS\s+(\S+)", rest, re.I)
            base = rest.split()[0]
            stages.append((m.group(1) if m else base, [("FROM", base)]))
        elif not stages and kind == "ARG":
            k, _, v = rest.partition("=")
            global_args[k] = v
        elif stages:
            stages[-1][1].append((kind, rest))
    by_name = dict(stages)
    chain: list[list[tuple[str, str]]] = []
    current = target or stages[-1][0]
    while current in by_name:
        chain.insert(0, by_name[current])
        current = by_name[current][0][1]
    values = {**global_args}
    env: dict[str, str] = {}
    entrypoint: list[str] = []
    cmd: list[str] = []
    image_root = root / "images" / name
    workdir = "/"
    links: dict[str, str] = {"/app/.venv/bin": str(VENV_BIN)}
    package = ""
    for stage in chain:
        for kind, rest in stage[1:]:
            if kind == "ARG":
                k, _, v = rest.partition("=")
                values[k] = args.get(k, v.strip('"'))
                if k == "PACKAGE":
                    package = values[k]
            elif kind == "ENV":
                for k, v in re.findall(r'(\w+)=("[^"]*"|\S*)', rest):
                    v = _subst(v.strip('"'), {**values, **env})
                    env[k] = v
            elif kind == "WORKDIR":
                workdir = _subst(rest, values)
            elif kind == "CMD":
                cmd = _exec_form(rest)
            elif kind == "ENTRYPOINT":
                entrypoint = _exec_form(rest)
            elif kind == "RUN" and (m := re.search(r'ln -s "?([^"\s]+)"? (\S+)', rest)):
                links[_subst(m.group(2), values)] = _subst(m.group(1), values)
            elif kind == "COPY" and "--from=" not in rest:
                parts = [p for p in rest.split() if not p.startswith("--")]
                for src in parts[:-1]:
                    dest = image_root / parts[-1].lstrip("/")
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    if not dest.exists():
                        dest.symlink_to(REPO / src)
    if not package:
        raise ManifestDefect(
            str(dockerfile.relative_to(REPO)), "ARG PACKAGE", "missing"
        )
    env["PATH"] = env.get("PATH", "").replace("/app/.venv/bin", str(VENV_BIN))
    env["PATH"] = env["PATH"].replace("$PATH", os.environ.get("PATH", ""))
    local_workdir = image_root / workdir.lstrip("/")
    local_workdir.mkdir(parents=True, exist_ok=True)
    # a link into the venv resolves to the venv's console script
    resolved = {}
    for dest, src in links.items():
        resolved[dest] = src.replace("/app/.venv/bin", str(VENV_BIN))
    return Image(
        name,
        env,
        entrypoint,
        cmd,
        local_workdir,
        resolved,
        _blocked_modules(_runtime_closure(package)),
        package,
    )


def check_console_scripts(image: Image, manifest: str) -> None:
    """Every console script of our packages in the image must import with the image's contents
    (a script that needs a dev-only dependency would fail in production)."""
    problems = _script_problems(image.package, tuple(image.blocked_modules))
    if problems:
        raise ManifestDefect(
            manifest,
            f"image {image.name} ({image.package})",
            "console scripts that cannot run in the image: " + problems,
        )


@functools.cache
def _script_problems(package: str, blocked_modules: tuple[str, ...]) -> str:
    """Import the module of every console script of ours in `package`'s image (once a session)."""
    closure = _runtime_closure(package)
    targets = []
    for dist in importlib.metadata.distributions():
        name = _normalise(dist.metadata["Name"])
        if name.startswith("brokerlink") and name in closure:
            for ep in dist.entry_points:
                if ep.group == "console_scripts":
                    targets.append((ep.name, ep.module))
    code = (
        "import importlib, sys\nfailed = []\n"
        f"for name, module in {targets!r}:\n"
        "    try:\n        importlib.import_module(module)\n"
        "    except ImportError as exc:\n        failed.append(f'{name}: {exc}')\n"
        "print('\\n'.join(failed)); sys.exit(1 if failed else 0)\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(SHIM),
        "BROKERLINK_SMOKE_NET": json.dumps({"blocked_modules": list(blocked_modules)}),
    }
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return "" if proc.returncode == 0 else (proc.stdout.strip() or proc.stderr[-500:])


# --- processes ------------------------------------------------------------------------------------


@dataclass
class Container:
    """One container of a pod, resolved to a local command."""

    manifest: str  # "docker-compose.yml: services.account-api" / "...: Deployment/account-api"
    name: str
    argv: list[str]
    env: dict[str, str]
    ip: str
    cwd: Path
    log: Path
    blocked_modules: list[str] = field(default_factory=list)
    restart: bool = False  # restartPolicy Always / restart: unless-stopped
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    network: dict[str, Any] = field(default_factory=dict)

    def revive(self) -> bool:
        """Restart a crashed container as the kubelet / docker would (a few times at most)."""
        if not self.restart or self.restarts >= 3:
            return False
        self.restarts += 1
        code = self.process.returncode if self.process else "?"
        pid = self.process.pid if self.process else "?"
        log(f"{self.manifest}: pid {pid} exited with {code}; restart {self.restarts}")
        time.sleep(
            2.0 * self.restarts
        )  # the kubelet backs off too (10 s, 20 s, … there)
        self.start(self.network)
        return True

    def start(self, network: dict[str, Any]) -> None:
        self.network = network
        net = {
            **network,
            "pod_ip": self.ip,
            "blocked_modules": self.blocked_modules,
        }
        env = {
            **self.env,
            "PYTHONPATH": str(SHIM),
            "BROKERLINK_SMOKE_NET": json.dumps(net),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            try:
                self.process = subprocess.Popen(
                    self.argv,
                    env=env,
                    cwd=self.cwd,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ManifestDefect(
                    self.manifest,
                    "command",
                    f"{self.argv[0]!r} cannot run: {exc.strerror}",
                ) from None

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait(self, timeout_s: float) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.manifest}: still running after {timeout_s:.0f} s:\n{self.tail()}"
            ) from None

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        self.stop_wait(15)

    def stop_wait(self, timeout_s: float) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def stop_all(
    containers: list[Container], kill: bool = False, timeout_s: float = 15
) -> None:
    """Signal every container at once (SIGTERM, or SIGKILL for a crash), then wait for all."""
    running = [c for c in containers if c.alive()]
    for c in running:
        assert c.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(c.process.pid, signal.SIGKILL if kill else signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for c in running:
        c.restart = False
        c.stop_wait(max(0.1, deadline - time.monotonic()))


def resolve_command(
    manifest: str, image: Image, entrypoint: list[str] | None, command: list[str] | None
) -> list[str]:
    """Docker's rule: entrypoint (override or image's) + command (override or image's CMD).
    Kubernetes' `command` is an entrypoint override and `args` a CMD override."""
    argv = (entrypoint if entrypoint is not None else image.entrypoint) + (
        command if command is not None else image.cmd
    )
    if not argv:
        raise ManifestDefect(
            manifest, "command", "neither the manifest nor the image gives one"
        )
    first = image.links.get(argv[0], argv[0])
    if "/" not in first:
        found = shutil.which(first, path=image.env.get("PATH"))
        if found is None or not found.startswith(str(VENV_BIN)):
            raise ManifestDefect(
                manifest,
                "command",
                f"{argv[0]!r} is not a command of image {image.name}",
            )
        first = found
    return [first, *argv[1:]]


def http_ok(url: str, timeout_s: float = 3.0) -> tuple[bool, str]:
    try:
        response = httpx.get(url, timeout=timeout_s)
    except httpx.HTTPError as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return response.status_code == 200, f"{response.status_code} {response.text[:200]}"


def wait_until(
    check: Callable[[], tuple[bool, str]],
    what: str,
    timeout_s: float,
    alive: list[Container] = (),  # type: ignore[assignment]
) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        for c in alive:
            if not c.alive() and not c.revive():
                raise AssertionError(
                    f"{c.manifest}: exited with {c.process.returncode if c.process else '?'} "
                    f"while waiting for {what}:\n{c.tail()}"
                )
        ok, last = check()
        if ok:
            return
        time.sleep(0.25)
    details = "\n".join(f"--- {c.manifest}\n{c.tail(10)}" for c in alive)
    raise AssertionError(
        f"{what}: not within {timeout_s:.0f} s (last: {last})\n{details}"
    )


# --- NATS and PostgreSQL ----------------------------------------------------------------------------


def nats_violations(logs: list[Path]) -> list[str]:
    found = []
    for path in logs:
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                if "Violation" in line:
                    found.append(line.split("] ", 1)[-1])
    return found


class Postgres:
    """PostgreSQL 16 (pgserver's binaries) on `ip`:5432 with password authentication, bootstrapped
    with one database owned by one user, as the CloudNativePG Cluster / postgres image does."""

    def __init__(self, ip: str) -> None:
        # PostgreSQL refuses to run as root; pgserver's user must reach the directory, so it
        # lives outside the (private) test directory.
        import tempfile

        self.directory = Path(tempfile.mkdtemp(prefix="brokerlink-smoke-pg-"))
        self.directory.chmod(0o755)
        self.ip = ip
        self.user: str | None = "pgserver" if os.geteuid() == 0 else None

    def start(self, database: str, owner: str, password: str) -> None:
        from pgserver import _commands  # the binaries pgserver ships
        from pgserver.utils import ensure_user_exists

        data = self.directory / "pgdata"
        data.mkdir(parents=True)
        if self.user:
            ensure_user_exists(self.user)
            shutil.chown(self.directory, self.user, self.user)
            shutil.chown(data, self.user, self.user)
        _commands.initdb(  # type: ignore[attr-defined]
            [
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-U",
                "postgres",
                "-E",
                "utf8",
            ],
            pgdata=data,
            user=self.user,
        )
        _commands.pg_ctl(  # type: ignore[attr-defined]
            [
                "-w",
                "-o",
                f"-h {self.ip} -p 5432 -k {data}",
                "-l",
                str(self.directory / "postgres.log"),
                "start",
            ],
            pgdata=data,
            user=self.user,
            timeout=60,
        )
        import psycopg

        with psycopg.connect(
            host=str(data), user="postgres", dbname="postgres", autocommit=True
        ) as c:
            c.execute(f"CREATE ROLE \"{owner}\" LOGIN PASSWORD '{password}'")
            c.execute(f'CREATE DATABASE "{database}" OWNER "{owner}"')

    def stop(self) -> None:
        from pgserver import _commands

        with contextlib.suppress(Exception):
            _commands.pg_ctl(  # type: ignore[attr-defined]
                ["-w", "-m", "fast", "stop"],
                pgdata=self.directory / "pgdata",
                user=self.user,
            )
        shutil.rmtree(self.directory, ignore_errors=True)


def tls_for(directory: Path, host: str, ip: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for `host` (and `ip`): (ca, cert, key) files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "deploy-smoke CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(host), x509.IPAddress(ipaddress.ip_address(ip))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


# --- the walk through the REST API ----------------------------------------------------------------


@dataclass
class Browser:
    """The user's HTTP client: follows public URLs to where the host names point."""

    route: Callable[[str], str]
    verify: Any = True

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.route(url), timeout=30, verify=self.verify, **kwargs)


def walkthrough(
    api: str,
    browser: Browser,
    ib_host: str,
    ib_port: int,
    manifest: str,
) -> dict[str, str]:
    """Register, IB and Schwab accounts (OAuth included), test, refresh, balances."""
    with httpx.Client(base_url=api, timeout=60) as client:
        email = f"smoke-{secrets.token_hex(4)}@example.com"
        password = "smoke-password-2026"
        r = client.post(
            "/api/auth/register",
            json={"email": email, "password": password, "name": "Smoke"},
        )
        assert r.status_code == 201, f"{manifest}: register: {r.status_code} {r.text}"
        token = client.post(
            "/api/auth/login", json={"email": email, "password": password}
        ).json()["access_token"]
        client.headers["Authorization"] = f"Bearer {token}"

        def account(name: str, number: str) -> int:
            r = client.post(
                "/api/accounts",
                json={"name": name, "currency": "USD", "account_number": number},
            )
            assert r.status_code == 201, f"{manifest}: create account: {r.text}"
            return int(r.json()["id"])

        ib = account("IB smoke", "U1234567")
        r = client.put(
            f"/api/accounts/{ib}/integration",
            json={
                "type": "IB",
                "config": {
                    "host": ib_host,
                    "port": ib_port,
                    "client_id": 7,
                    "account_code": "U1234567",
                },
            },
        )
        assert r.status_code == 200, f"{manifest}: configure IB: {r.text}"
        refresh = client.post(f"/api/accounts/{ib}/integration/refresh?wait=30").json()
        assert refresh.get("status") == "succeeded", (
            f"{manifest}: IB refresh: {refresh}"
        )
        test = client.post(f"/api/accounts/{ib}/integration/test").json()
        assert test.get("success") is True, f"{manifest}: IB test: {test}"

        schwab = account("Schwab smoke", "12345678")
        r = client.put(
            f"/api/accounts/{schwab}/integration",
            json={
                "type": "SCHWAB",
                "config": {
                    "app_key": "demo-schwab-app",
                    "app_secret": "demo-schwab-secret",
                    "account_number": "12345678",
                },
            },
        )
        assert r.status_code == 200, f"{manifest}: configure Schwab: {r.text}"
        start = client.post(f"/api/accounts/{schwab}/integration/oauth/start")
        assert start.status_code == 200, f"{manifest}: OAuth start: {start.text}"
        authorize = start.json()["authorize_url"]
        page = browser.get(authorize)
        assert page.status_code == 200, (
            f"{manifest}: consent page {authorize}: {page.text}"
        )
        allow = re.search(r'id="allow-default" href="([^"]+)"', page.text)
        assert allow, f"{manifest}: consent page without an Allow link"
        from html import unescape
        from urllib.parse import urljoin

        redirect = browser.get(urljoin(authorize, unescape(allow.group(1))))
        callback = redirect.headers.get("location", "")
        assert callback, f"{manifest}: the simulator did not redirect: {redirect.text}"
        done = browser.get(callback)
        if done.status_code != 303 or "oauth=ok" not in done.headers.get(
            "location", ""
        ):
            state = client.get(f"/api/accounts/{schwab}/integration").json()
            raise AssertionError(
                f"{manifest}: OAuth callback: {done.status_code} "
                f"{done.headers.get('location')}: {state.get('last_error')}"
            )
        test = client.post(f"/api/accounts/{schwab}/integration/test").json()
        assert test.get("success") is True, f"{manifest}: Schwab test: {test}"
        refresh = client.post(
            f"/api/accounts/{schwab}/integration/refresh?wait=30"
        ).json()
        assert refresh.get("status") == "succeeded", (
            f"{manifest}: Schwab refresh: {refresh}"
        )

        accounts = {a["name"]: a for a in client.get("/api/accounts").json()}
        balances = {
            name: str(accounts[name]["current_balance"])
            for name in ("IB smoke", "Schwab smoke")
        }
        for name, balance in balances.items():
            assert balance not in ("0", "0.0000", "None"), (
                f"{manifest}: {name}: {balance}"
            )
        return {**balances, "token": token, "ib_account": str(ib)}


# --- shared start-up helpers ------------------------------------------------------------------------


@dataclass
class Run:
    """Everything started by one smoke run (stopped in reverse order)."""

    root: Path
    net: Addresses = field(default_factory=Addresses)
    containers: list[Container] = field(default_factory=list)
    postgres: list[Postgres] = field(default_factory=list)
    nats_logs: list[Path] = field(default_factory=list)

    def start(self, container: Container) -> Container:
        container.start(self.net.shim())
        self.containers.append(container)
        return container

    def stop(self) -> None:
        stop_all(self.containers)
        for pg in self.postgres:
            pg.stop()

    def assert_no_violations(self, manifest: str) -> None:
        found = nats_violations(self.nats_logs)
        if found:
            raise ManifestDefect(
                manifest,
                "permissions",
                "NATS refused what a service needs:\n  "
                + "\n  ".join(sorted(set(found))[:20]),
            )


@contextlib.contextmanager
def running(root: Path) -> Iterator[Run]:
    run = Run(root)
    try:
        yield run
    finally:
        run.stop()


def start_simulators(
    run: Run,
    ib_ip: str,
    schwab_ip: str,
    schwab_port: int,
    tls: tuple[Path, Path] | None,
) -> None:
    """Simulators for the Kubernetes run (the manifests have none): the IB gateway behind
    IB_SIM_HOST:4002 and the Schwab API as https://api.schwabapi.com."""
    scenarios = REPO / "simulators" / "scenarios"
    ib = run.start(
        Container(
            "simulator ib-gateway-sim",
            "ib-gateway-sim",
            [
                str(VENV_BIN / "ib-gateway-sim"),
                "--scenario",
                str(scenarios / "ib_demo.json"),
                "--host",
                ib_ip,
                "--gateway-port",
                "demo=4002",
                "--admin-port",
                "0",
            ],
            dict(os.environ),
            ib_ip,
            REPO,
            run.root / "logs" / "ib-gateway-sim.log",
        )
    )
    argv = [
        str(VENV_BIN / "schwab-api-sim"),
        "--scenario",
        str(scenarios / "schwab_demo.json"),
        "--host",
        schwab_ip,
        "--port",
        str(schwab_port),
    ]
    if tls:
        argv += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    sim = run.start(
        Container(
            "simulator schwab-api-sim",
            "schwab-api-sim",
            argv,
            dict(os.environ),
            schwab_ip,
            REPO,
            run.root / "logs" / "schwab-api-sim.log",
        )
    )

    def listening(ip: str, port: int) -> Callable[[], tuple[bool, str]]:
        def check() -> tuple[bool, str]:
            try:
                socket.create_connection((ip, port), timeout=1).close()
            except OSError as exc:
                return False, str(exc)
            return True, ""

        return check

    wait_until(listening(ib_ip, 4002), "IB gateway simulator", 60, [ib])
    wait_until(listening(schwab_ip, schwab_port), "Schwab simulator", 60, [sim])


def legacy_database(directory: Path) -> Path:
    """The old app's SQLite file, built by the migrator tests' builder (every case it handles)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "brokerlink_smoke_legacy", REPO / "services/migrator/tests/conftest.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    directory.mkdir(parents=True, exist_ok=True)
    return Path(module.build_legacy(directory / "database.sqlite", newer=True))


# --- docker compose ---------------------------------------------------------------------------------

COMPOSE = "docker-compose.yml"
_VAR = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


def interpolate(value: Any, env: dict[str, str], key: str = "") -> Any:
    """Compose's variable substitution (${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err},
    ${VAR?err}, $VAR, $$), applied to every string of the parsed file."""
    if isinstance(value, dict):
        return {
            k: interpolate(v, env, f"{key}.{k}" if key else str(k))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [interpolate(v, env, f"{key}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3) or ""
        present = name in env
        val = env.get(name, "")
        if op in (":-", "-"):
            return val if (present and (val or op == "-")) else arg
        if op in (":?", "?"):
            if not present or (op == ":?" and not val):
                raise ManifestDefect(COMPOSE, key, f"${{{name}}} is required: {arg}")
            return val
        return val

    return _VAR.sub(one, value)


def compose_env(root: Path) -> dict[str, str]:
    """What a user puts in .env for the demo profile: every secret .env.example leaves empty,
    and its documented demo settings."""
    from cryptography.fernet import Fernet

    env: dict[str, str] = {}
    text = (REPO / ".env.example").read_text()
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep or line.startswith("#"):
            continue
        if value == "":  # generated as the comments of .env.example say
            if key == "BROKERLINK_ENCRYPTION_KEYS":
                env[key] = Fernet.generate_key().decode()
            elif _is_nats_password(key):
                env[key] = "n" + secrets.token_hex(24)
            else:
                env[key] = secrets.token_urlsafe(32)
    # the demo lines of .env.example, as commented there
    for m in re.finditer(
        r"^#\s+((?:SCHWAB_CONNECTOR|ACCOUNT_API)_\w+)=(\S+)$", text, re.M
    ):
        env[m.group(1)] = m.group(2)
    legacy = root / "legacy"
    legacy_database(legacy)
    env["LEGACY_SQLITE_DIR"] = str(legacy)
    return env


def _is_nats_password(key: str) -> bool:
    """A NATS user's password (`NATS_SYSTEM_PASSWORD` too), generated as .env.example says for
    them: a random token may start with a digit or '-', which nats-server reads as a number and
    refuses to start (the compose smoke failed that way about one run in six)."""
    return "NATS" in key and key.endswith("PASSWORD")


def _mounts(manifest: str, volumes: list[str], root: Path) -> dict[str, Path]:
    out = {}
    for spec in volumes:
        parts = spec.split(":")
        if len(parts) < 2:
            raise ManifestDefect(manifest, "volumes", f"{spec!r} is not source:target")
        source, target = parts[0], parts[1]
        if source.startswith((".", "/")):
            path = (REPO / source).resolve() if source.startswith(".") else Path(source)
            if not path.exists():
                raise ManifestDefect(manifest, "volumes", f"{source} does not exist")
        else:
            path = root / "volumes" / source
            path.mkdir(parents=True, exist_ok=True)
        out[target] = path
    return out


def _map_paths(args: list[str], mounts: dict[str, Path]) -> list[str]:
    out = []
    for arg in args:
        for target, source in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
            if arg == target or arg.startswith(target.rstrip("/") + "/"):
                arg = str(source) + arg[len(target.rstrip("/")) :]
                break
        out.append(arg)
    return out


def _as_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    return (
        [str(v) for v in value]
        if isinstance(value, list)
        else ["/bin/sh", "-c", str(value)]
    )


def _environment(value: Any) -> dict[str, str]:
    if isinstance(value, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in value)
    return {str(k): "" if v is None else str(v) for k, v in (value or {}).items()}


def _healthcheck(
    manifest: str, svc: dict[str, Any], container: Container, image: Image | None
) -> Callable[[], tuple[bool, str]] | None:
    check = svc.get("healthcheck") or {}
    if check.get("disable") or not check.get("test"):
        return None
    test = check["test"]
    kind, argv = test[0], test[1:]
    if kind == "CMD-SHELL":
        argv = ["/bin/sh", "-c", " ".join(argv)]
    elif kind != "CMD":
        raise ManifestDefect(
            manifest, "healthcheck.test", f"{kind!r} is not CMD or CMD-SHELL"
        )
    joined = " ".join(argv)
    if (
        image is None
    ):  # third-party images: do what their tool does, on the pod's address
        if "wget" in joined and (url := re.search(r"http://\S+", joined)):
            target = url.group(0).replace("127.0.0.1", container.ip)
            return lambda: http_ok(target)
        if "pg_isready" in joined:
            from pgserver._commands import POSTGRES_BIN_PATH  # type: ignore[attr-defined]

            def ready() -> tuple[bool, str]:
                proc = subprocess.run(
                    [
                        str(POSTGRES_BIN_PATH / "pg_isready"),
                        "-h",
                        container.ip,
                        "-p",
                        "5432",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=10,
                )
                return proc.returncode == 0, proc.stdout

            return ready
        raise ManifestDefect(manifest, "healthcheck.test", f"cannot emulate {joined!r}")
    argv = resolve_command(manifest + " healthcheck", image, [], argv)

    def run_check() -> tuple[bool, str]:
        net = {"hosts": {}, "pod_ip": container.ip, "loopback_to_pod": True}
        env = {
            **container.env,
            "PYTHONPATH": str(SHIM),
            "BROKERLINK_SMOKE_NET": json.dumps(net),
        }
        try:
            proc = subprocess.run(
                argv, env=env, capture_output=True, text=True, timeout=30
            )
        except subprocess.TimeoutExpired:
            return False, "healthcheck timed out"
        return proc.returncode == 0, (proc.stdout + proc.stderr)[-300:]

    return run_check


def run_compose(root: Path, timeout_s: float = 240) -> dict[str, str]:
    """Start docker-compose.yml (demo profile) as local processes and walk through it."""
    env = compose_env(root)
    raw = yaml.safe_load((REPO / COMPOSE).read_text())
    doc = interpolate(raw, env)
    services: dict[str, dict[str, Any]] = doc["services"]
    images: dict[str, Image] = {}
    with running(root) as run:
        pod_ip = {name: run.net.new() for name in services}
        for name, ip in pod_ip.items():
            run.net.name(name, ip)
        # on a compose network the IB gateway has a private address (the connector checks)
        run.net.private("ib-gateway-sim", pod_ip["ib-gateway-sim"])
        containers: dict[str, Container] = {}
        checks: dict[str, Callable[[], tuple[bool, str]] | None] = {}
        published: dict[tuple[str, int], tuple[str, int]] = {}
        for name, svc in services.items():
            manifest = f"{COMPOSE}: services.{name}"
            for port in svc.get("ports", []):
                parts = str(port).split(":")
                host_port, container_port = int(parts[-2]), int(parts[-1])
                published[("localhost", host_port)] = (pod_ip[name], container_port)
                published[("127.0.0.1", host_port)] = (pod_ip[name], container_port)
            mounts = _mounts(manifest, svc.get("volumes", []), root)
            image_ref = svc["image"]
            repo = image_ref.rsplit(":", 1)[0]
            environment = _environment(svc.get("environment"))
            image: Image | None = None
            if repo == "postgres":
                continue  # started below, embedded
            if repo == "nats":
                conf_args = _map_paths(_as_list(svc.get("command")) or [], mounts)
                conf = Path(conf_args[conf_args.index("--config") + 1])
                store = re.search(r"store_dir:\s*(\S+)", conf.read_text())
                if not store:
                    raise ManifestDefect(str(conf), "jetstream.store_dir", "missing")
                # nats-server sees the volume's directory where the container sees /data
                store_dir = _map_paths([store.group(1).strip('"')], mounts)[0]
                local_conf = root / "volumes" / f"{name}.conf"
                local_conf.write_text(
                    conf.read_text().replace(
                        store.group(0), f'store_dir: "{store_dir}"'
                    )
                )
                conf_args[conf_args.index("--config") + 1] = str(local_conf)
                argv = [
                    str(VENV_BIN / "nats-server"),
                    *conf_args,
                    "--addr",
                    pod_ip[name],
                ]
                c = Container(
                    manifest,
                    name,
                    argv,
                    environment,
                    pod_ip[name],
                    root,
                    root / "logs" / f"{name}.log",
                )
                run.nats_logs.append(c.log)
            else:
                build = svc.get("build")
                if not build:
                    raise ManifestDefect(
                        manifest, "build", f"no way to build {image_ref}"
                    )
                if repo not in images:
                    images[repo] = build_image(
                        repo.rsplit("/", 1)[-1]
                        + "-"
                        + str(build.get("target", "service")),
                        REPO
                        / build.get("context", ".")
                        / build.get("dockerfile", "Dockerfile"),
                        {str(k): str(v) for k, v in (build.get("args") or {}).items()},
                        build.get("target"),
                        root,
                    )
                image = images[repo]
                argv = resolve_command(
                    manifest,
                    image,
                    _as_list(svc.get("entrypoint")),
                    _as_list(svc.get("command")),
                )
                argv = _map_paths(argv, mounts)
                c = Container(
                    manifest,
                    name,
                    argv,
                    {**image.env, **environment},
                    pod_ip[name],
                    image.workdir,
                    root / "logs" / f"{name}.log",
                    image.blocked_modules,
                    restart=svc.get("restart", "no") in ("always", "unless-stopped"),
                )
            containers[name] = c
            checks[name] = _healthcheck(manifest, svc, c, image)
        pg = services["postgres"]["environment"]
        postgres = Postgres(pod_ip["postgres"])
        postgres.start(pg["POSTGRES_DB"], pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"])
        run.postgres.append(postgres)
        log("compose: postgres started")
        pg_check = _healthcheck(
            f"{COMPOSE}: services.postgres",
            services["postgres"],
            Container("", "", [], {}, pod_ip["postgres"], root, root),
            None,
        )
        done: set[str] = {"postgres"}
        started: set[str] = set()
        deadline = time.monotonic() + timeout_s
        active = [
            n
            for n, s in services.items()
            if "profiles" not in s or "demo" in s["profiles"]
        ]
        assert pg_check is not None
        wait_until(pg_check, "postgres healthcheck", 60)
        while set(active) - done:
            assert time.monotonic() < deadline, f"compose: not up: {set(active) - done}"
            progressed = False
            for name in active:
                if name in started or name in done:
                    continue
                deps = services[name].get("depends_on") or {}
                if isinstance(deps, list):
                    deps = {d: {"condition": "service_started"} for d in deps}
                if all(d in done for d in deps):
                    run.start(containers[name])
                    started.add(name)
                    progressed = True
            for name in list(started - done):
                c = containers[name]
                if services[name].get("restart") == "no":
                    if not c.alive():
                        code = c.wait(1)
                        if code != 0:
                            raise AssertionError(
                                f"{c.manifest}: exited with {code}:\n{c.tail()}"
                            )
                        done.add(name)
                        progressed = True
                    continue
                check = checks[name]
                if check is None:
                    done.add(name)
                    continue
                wait_until(
                    check,
                    f"{c.manifest}: healthcheck",
                    max(5, deadline - time.monotonic()),
                    [c],
                )
                done.add(name)
                progressed = True
            if not progressed:
                time.sleep(0.2)
        log("compose: every service is up and healthy; walking through the API")

        def route(url: str) -> str:
            parts = urlsplit(url)
            host, port = (
                parts.hostname or "",
                parts.port or (443 if parts.scheme == "https" else 80),
            )
            if (host, port) in published:
                ip, cport = published[(host, port)]
                return urlunsplit(
                    (parts.scheme, f"{ip}:{cport}", parts.path, parts.query, "")
                )
            if host in run.net.hosts:
                return urlunsplit(
                    (
                        parts.scheme,
                        f"{run.net.hosts[host][0]}:{port}",
                        parts.path,
                        parts.query,
                        "",
                    )
                )
            return url

        api_env = containers["account-api"].env
        balances = walkthrough(
            route(api_env["ACCOUNT_API_PUBLIC_URL"]),
            Browser(route),
            "ib-gateway-sim",
            4002,
            COMPOSE,
        )
        for name, check in checks.items():
            if (
                check is not None
                and name in done
                and containers.get(name)
                and containers[name].alive()
            ):
                ok, detail = check()
                assert ok, (
                    f"{COMPOSE}: services.{name}.healthcheck fails after the walk: {detail}"
                )
        log("compose: walk-through done; legacy import")
        # the legacy import, as `docker compose --profile migrate run --rm legacy-migrator`
        migrator = run.start(containers["legacy-migrator"])
        code = migrator.wait(180)
        assert code == 0, f"{migrator.manifest}: exited with {code}:\n{migrator.tail()}"
        run.assert_no_violations("deploy/compose/nats.conf")
        for image in images.values():
            check_console_scripts(image, COMPOSE)
        return balances


# --- Kubernetes -------------------------------------------------------------------------------------

OVERLAY = "deploy/overlays/prod"
# Replicas started per workload: enough to exercise what replicas do (forwarding between
# ib-connector replicas) while staying inside a 2-core CI budget.
MAX_REPLICAS = {"Deployment": 1, "StatefulSet": 2}


def render_overlay() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl and not os.environ.get("BROKERLINK_NO_KUBECTL"):
        proc = subprocess.run(
            [kubectl, "kustomize", str(REPO / OVERLAY)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode != 0:
            raise ManifestDefect(OVERLAY, "kustomization.yaml", proc.stderr.strip())
        return [d for d in yaml.safe_load_all(proc.stdout) if d]
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "brokerlink_smoke_kustomize_lite", Path(__file__).with_name("kustomize_lite.py")
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.render(REPO / OVERLAY))


def helm_nats_conf(
    values: dict[str, Any], node: int, ips: list[str], store: Path
) -> str:
    """The nats.conf the official chart builds for pod `nats-<node>` from these values."""
    config = values["config"]
    js = {"store_dir": str(store), **(config["jetstream"].get("merge") or {})}
    merge = json.dumps(config.get("merge") or {}, indent=2)
    merge = re.sub(r'"<< (\$\w+) >>"', r"\1", merge)
    routes = ", ".join(f'"nats://{ip}:6222"' for ip in ips)
    cluster = ""
    if config.get("cluster", {}).get("enabled"):
        cluster = f'cluster {{ name: "nats", listen: "{ips[node]}:6222", routes: [{routes}] }}\n'
    return (
        f'server_name: "nats-{node}"\nlisten: "{ips[node]}:4222"\n'
        f'http: "{ips[node]}:{config.get("monitor", {}).get("port", 8222)}"\n'
        f"lame_duck_duration: 30s\n"
        f"jetstream {json.dumps(js)}\n{cluster}" + merge.strip()[1:-1] + "\n"
    )


def _env_value(
    manifest: str,
    key: str,
    item: dict[str, Any],
    objects: dict[tuple[str, str], dict[str, Any]],
    pod: str,
    ip: str,
    env: dict[str, str],
) -> str:
    if "value" in item:
        return re.sub(
            r"\$\((\w+)\)",
            lambda m: env.get(m.group(1), m.group(0)),
            str(item["value"]),
        )
    source = item.get("valueFrom") or {}
    for kind, ref in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
        if ref in source:
            name, k = source[ref]["name"], source[ref]["key"]
            obj = objects.get((kind, name))
            data = (
                {}
                if obj is None
                else {**(obj.get("data") or {}), **(obj.get("stringData") or {})}
            )
            if k not in data:
                raise ManifestDefect(manifest, key, f"{kind} {name} has no key {k!r}")
            return str(data[k])
    if "fieldRef" in source:
        path = source["fieldRef"]["fieldPath"]
        fields = {
            "metadata.name": pod,
            "metadata.namespace": "brokerlink",
            "status.podIP": ip,
        }
        if path not in fields:
            raise ManifestDefect(manifest, key, f"fieldRef {path} not emulated")
        return fields[path]
    raise ManifestDefect(manifest, key, "no value and no valueFrom")


def pod_containers(
    obj: dict[str, Any],
    pod: str,
    ip: str,
    objects: dict[tuple[str, str], dict[str, Any]],
    images: dict[str, Image],
    root: Path,
    extra_env: dict[str, str],
    mounts: dict[str, Path],
) -> list[tuple[Container, dict[str, Any]]]:
    out = []
    spec = obj["spec"]["template"]["spec"]
    for i, c in enumerate(spec["containers"]):
        manifest = f"{OVERLAY}: {obj['kind']}/{obj['metadata']['name']} containers[{c['name']}]"
        repo = c["image"].rsplit(":", 1)[0].rsplit("/", 1)[-1]
        if repo not in images:
            raise ManifestDefect(manifest, "image", f"{c['image']} is built nowhere")
        image = images[repo]
        env: dict[str, str] = dict(image.env)
        for source in c.get("envFrom", []):
            for kind, ref in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if ref in source:
                    o = objects.get((kind, source[ref]["name"]))
                    if o is None:
                        raise ManifestDefect(
                            manifest,
                            f"envFrom.{ref}",
                            f"no {kind} {source[ref]['name']}",
                        )
                    env.update(
                        {
                            k: str(v)
                            for k, v in {
                                **(o.get("data") or {}),
                                **(o.get("stringData") or {}),
                            }.items()
                        }
                    )
        for j, item in enumerate(c.get("env", [])):
            env[item["name"]] = _env_value(
                manifest, f"env[{j}] {item['name']}", item, objects, pod, ip, env
            )
        env.update(extra_env)
        argv = resolve_command(manifest, image, c.get("command"), c.get("args"))
        pod_mounts = {
            m["mountPath"]: mounts.get(m["name"], root / "volumes" / pod / m["name"])
            for m in c.get("volumeMounts", [])
        }
        for path in pod_mounts.values():
            path.mkdir(parents=True, exist_ok=True)
        argv = _map_paths(argv, pod_mounts)
        container = Container(
            manifest,
            f"{pod}/{c['name']}",
            argv,
            env,
            ip,
            image.workdir,
            root / "logs" / f"{pod}-{i}.log",
            image.blocked_modules,
            restart=spec.get("restartPolicy", "Always") == "Always",
        )
        out.append((container, c))
    return out


def probe_url(
    manifest: str, container: dict[str, Any], kind: str, ip: str
) -> str | None:
    probe = container.get(kind)
    if not probe:
        return None
    get = probe.get("httpGet")
    if not get:
        raise ManifestDefect(manifest, kind, "only httpGet probes are emulated")
    port = get["port"]
    if isinstance(port, str):
        named = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        if port not in named:
            raise ManifestDefect(
                manifest, f"{kind}.httpGet.port", f"no container port named {port!r}"
            )
        port = named[port]
    return f"http://{ip}:{port}{get.get('path', '/')}"


def run_kubernetes(root: Path, timeout_s: float = 240) -> dict[str, str]:
    """Start the production overlay as local processes and walk through it."""
    from cryptography.fernet import Fernet

    objects_list = render_overlay()
    objects = {(o["kind"], o["metadata"]["name"]): o for o in objects_list}
    with (
        socket.socket() as probe
    ):  # the Schwab simulator stands in for https://api.schwabapi.com
        try:
            probe.bind(("127.0.0.1", 443))
        except PermissionError:
            raise Unsupported(
                "serving the Schwab simulator on port 443 needs root"
            ) from None
        except OSError:
            pass  # taken on 127.0.0.1 only: the run uses its own addresses
    settings = objects[("ConfigMap", "brokerlink-config")]["data"]
    for key in (
        "SCHWAB_CONNECTOR_API_BASE_URL",
        "ACCOUNT_API_SCHWAB_AUTHORIZE_URL",
        "ACCOUNT_API_PUBLIC_URL",
    ):
        url = urlsplit(str(settings.get(key, "")))
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ManifestDefect(
                f"{OVERLAY}: ConfigMap/brokerlink-config",
                f"data.{key}",
                f"{settings.get(key)!r} is not an absolute http(s) URL",
            )
    values = yaml.safe_load((REPO / "deploy/nats/values.yaml").read_text())
    cluster = yaml.safe_load((REPO / "deploy/postgres/cluster.yaml").read_text())
    template = yaml.safe_load((REPO / "deploy/base/secret.yaml").read_text())
    # Created out of band, as docs/deploying.md says: the app secret (keys of the template) and
    # the NATS users' secret; CloudNativePG creates brokerlink-pg-app.
    secret = {  # as docs/deploying.md creates them
        k: "n" + secrets.token_hex(24)
        if _is_nats_password(k)
        else secrets.token_urlsafe(32)
        for k in template["stringData"]
    }
    secret["BROKERLINK_ENCRYPTION_KEYS"] = Fernet.generate_key().decode()
    objects[("Secret", "brokerlink-secrets")] = {"stringData": secret}
    owner = cluster["spec"]["bootstrap"]["initdb"]["owner"]
    pg_password = secrets.token_urlsafe(24)
    objects[("Secret", "brokerlink-pg-app")] = {
        "stringData": {"username": owner, "password": pg_password}
    }
    nats_env = {
        k: secret.get(k, "n" + secrets.token_hex(24))
        for k in values["container"]["env"]
    }
    # images: as docker-compose.yml builds them
    raw = yaml.safe_load((REPO / COMPOSE).read_text())
    images: dict[str, Image] = {}
    for name, svc in raw["services"].items():
        build = svc.get("build")
        if (
            build and "target" not in build
        ):  # production images (the simulators' are not)
            ref = interpolate(svc["image"], {}, f"services.{name}.image")
            repo = ref.rsplit(":", 1)[0].rsplit("/", 1)[-1]
            images[repo] = build_image(
                repo,
                REPO / build["context"] / build["dockerfile"],
                {k: str(v) for k, v in build["args"].items()},
                None,
                root,
            )
    with running(root) as run:
        net = run.net
        # PostgreSQL as the Cluster bootstraps it
        pg_ip = net.new()
        for name in (
            "brokerlink-pg-rw",
            "brokerlink-pg-rw.brokerlink",
            "brokerlink-pg-rw.brokerlink.svc",
            "brokerlink-pg-rw.brokerlink.svc.cluster.local",
        ):
            net.name(name, pg_ip)
        postgres = Postgres(pg_ip)
        run.postgres.append(postgres)
        postgres.start(
            cluster["spec"]["bootstrap"]["initdb"]["database"], owner, pg_password
        )
        # NATS: the chart's StatefulSet, 3 nodes
        replicas = int(values["config"].get("cluster", {}).get("replicas", 1))
        nats_ips = [net.new() for _ in range(replicas)]
        configmap = objects[("ConfigMap", "brokerlink-config")]["data"]
        net.name(configmap["NATS_HOST"], *nats_ips)
        nodes = []
        for i, ip in enumerate(nats_ips):
            conf = root / "nats" / f"nats-{i}.conf"
            conf.parent.mkdir(parents=True, exist_ok=True)
            conf.write_text(
                helm_nats_conf(values, i, nats_ips, root / "nats" / f"data-{i}")
            )
            c = run.start(
                Container(
                    "deploy/nats/values.yaml",
                    f"nats-{i}",
                    [str(VENV_BIN / "nats-server"), "-c", str(conf)],
                    nats_env,
                    ip,
                    root,
                    root / "logs" / f"nats-{i}.log",
                )
            )
            run.nats_logs.append(c.log)
            nodes.append(c)
        for c in nodes:
            wait_until(
                lambda c=c: http_ok(f"http://{c.ip}:8222/healthz?js-enabled-only=true"),
                f"{c.name} JetStream",
                60,
                nodes,
            )
        # simulators behind the names a user would configure
        ib_ip, schwab_ip = net.new(), net.new()
        net.private(
            IB_SIM_HOST, ib_ip
        )  # gateways are on private networks (the connector checks)
        schwab_host = (
            urlsplit(configmap["SCHWAB_CONNECTOR_API_BASE_URL"]).hostname or ""
        )
        net.name(schwab_host, schwab_ip)
        net.name(
            urlsplit(configmap["ACCOUNT_API_SCHWAB_AUTHORIZE_URL"]).hostname or "",
            schwab_ip,
        )
        ca, cert, key = tls_for(root, schwab_host, schwab_ip)
        start_simulators(run, ib_ip, schwab_ip, 443, (cert, key))
        trust = {
            "SSL_CERT_FILE": str(ca)
        }  # the pods trust the CA the simulator's certificate is from

        workloads = [
            o for o in objects_list if o["kind"] in ("Deployment", "StatefulSet", "Job")
        ]
        pods: list[tuple[Container, dict[str, Any], dict[str, Any]]] = []
        legacy = {"legacy": legacy_database(root / "legacy-pvc").parent}

        def make_pods(
            obj: dict[str, Any],
        ) -> list[tuple[Container, dict[str, Any], dict[str, Any]]]:
            name = obj["metadata"]["name"]
            count = (
                1
                if obj["kind"] == "Job"
                else min(int(obj["spec"].get("replicas", 1)), MAX_REPLICAS[obj["kind"]])
            )
            made = []
            for n in range(count):
                pod = f"{name}-{n}"
                ip = net.new()
                labels = obj["spec"]["template"]["metadata"].get("labels", {})
                for service in (o for o in objects_list if o["kind"] == "Service"):
                    selector = service["spec"].get("selector") or {}
                    if selector and all(
                        labels.get(k) == v for k, v in selector.items()
                    ):
                        net.name(service["metadata"]["name"], ip)
                        if service["spec"].get("clusterIP") == "None":
                            net.name(f"{pod}.{service['metadata']['name']}", ip)
                for container, spec in pod_containers(
                    obj, pod, ip, objects, images, root, trust, legacy
                ):
                    made.append((container, spec, obj))
            return made

        log("kubernetes: NATS, PostgreSQL and simulators up; schema job")
        # the schema job first (docs/deploying.md), then the workloads
        migrate_job = objects[("Job", "schema-migrate")]
        for container, _spec, _obj in make_pods(migrate_job):
            run.start(container)
            code = container.wait(180)
            assert code == 0, (
                f"{container.manifest}: exited with {code}:\n{container.tail()}"
            )
        for obj in workloads:
            if obj["kind"] == "Job":
                continue
            for container, spec, o in make_pods(obj):
                run.start(container)
                pods.append((container, spec, o))
        started = [c for c, _, _ in pods]
        for container, spec, _obj in pods:
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                url = probe_url(container.manifest, spec, kind, container.ip)
                if url:
                    wait_until(
                        lambda url=url: http_ok(url),
                        f"{container.manifest}: {kind} {url}",
                        timeout_s,
                        started,
                    )
        log("kubernetes: every pod is started, ready and live; walking through the API")

        # the public URL through the Ingress to the Service's target port on a pod
        ingress = objects[("Ingress", "account-api")]
        rule = ingress["spec"]["rules"][0]
        backend = rule["http"]["paths"][0]["backend"]["service"]
        service = objects[("Service", backend["name"])]
        sport = next(
            p
            for p in service["spec"]["ports"]
            if p.get("name") == backend["port"].get("name")
            or p.get("port") == backend["port"].get("number")
        )
        api_pod, api_spec, _ = next(
            p for p in pods if p[2]["metadata"]["name"] == backend["name"]
        )
        named = {p.get("name"): p["containerPort"] for p in api_spec.get("ports", [])}
        target = sport["targetPort"]
        if isinstance(target, str):
            if target not in named:
                raise ManifestDefect(
                    f"{OVERLAY}: Service/{backend['name']}",
                    "targetPort",
                    f"no container port {target!r}",
                )
            target = named[target]
        public = urlsplit(configmap["ACCOUNT_API_PUBLIC_URL"])
        if public.hostname != rule["host"]:
            raise ManifestDefect(
                f"{OVERLAY}: ConfigMap/brokerlink-config",
                "ACCOUNT_API_PUBLIC_URL",
                f"{public.hostname} is not the Ingress host {rule['host']}",
            )

        def route(url: str) -> str:
            parts = urlsplit(url)
            if parts.hostname == rule["host"]:  # TLS ends at the ingress controller
                return urlunsplit(
                    ("http", f"{api_pod.ip}:{target}", parts.path, parts.query, "")
                )
            if parts.hostname in net.hosts:
                port = parts.port or (443 if parts.scheme == "https" else 80)
                return urlunsplit(
                    (
                        parts.scheme,
                        f"{net.hosts[parts.hostname][0]}:{port}",
                        parts.path,
                        parts.query,
                        "",
                    )
                )
            return url

        browser = Browser(route, verify=_verify(ca))
        balances = walkthrough(
            route(configmap["ACCOUNT_API_PUBLIC_URL"]),
            browser,
            IB_SIM_HOST,
            4002,
            OVERLAY,
        )

        log("kubernetes: walk-through done; legacy import")
        # the legacy import: resume the suspended Job
        job = objects[("Job", "legacy-migrator")]
        for container, _spec, _obj in make_pods(job):
            run.start(container)
            code = container.wait(180)
            assert code == 0, (
                f"{container.manifest}: exited with {code}:\n{container.tail()}"
            )
        run.assert_no_violations("deploy/nats/values.yaml")

        log("kubernetes: NATS outage")
        # A NATS outage: every pod stays live, account-api stays ready and keeps accepting writes.
        stop_all(nodes, kill=True)  # a crash of every node
        for container, spec, _obj in pods:
            url = probe_url(container.manifest, spec, "livenessProbe", container.ip)
            if url:
                ok, detail = http_ok(url, timeout_s=3)
                assert ok, (
                    f"{container.manifest}: livenessProbe fails while NATS is down: {detail}"
                )
        ready = probe_url(api_pod.manifest, api_spec, "readinessProbe", api_pod.ip)
        assert ready and http_ok(ready)[0], (
            f"{api_pod.manifest}: not ready while NATS is down"
        )
        with httpx.Client(
            base_url=route(configmap["ACCOUNT_API_PUBLIC_URL"]), timeout=30
        ) as client:
            # a change that goes out through the outbox: taken now, relayed when NATS is back
            client.headers["Authorization"] = f"Bearer {balances['token']}"
            r = client.put(
                f"/api/accounts/{balances['ib_account']}/integration",
                json={
                    "type": "IB",
                    "config": {
                        "host": IB_SIM_HOST,
                        "port": 4002,
                        "client_id": 8,
                        "account_code": "U1234567",
                    },
                },
            )
            assert r.status_code == 200, (
                f"{OVERLAY}: a write while NATS is down: {r.text}"
            )
            health = client.get("/healthz").json()
            assert health["bus"] == "disconnected" and health["outbox_pending"] >= 1, (
                health
            )
        for image in images.values():
            check_console_scripts(image, OVERLAY)
        return balances


def _verify(ca: Path) -> Any:
    import ssl

    return ssl.create_default_context(cafile=str(ca))
