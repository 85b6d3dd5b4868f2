"""docker-compose.yml validates against the Compose Specification schema and wires the stack as
issue 9 asks (one-shot migrate before account-api, healthchecks, profiles, volumes)."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import pytest
import yaml

from .conftest import REPO

SCHEMA = REPO / "tests" / "deploy" / "schemas" / "compose-spec.json"
# sha256 recorded by check-jsonschema 0.39.0 (PyPI) for its vendored copy, which is where this file
# comes from: check_jsonschema/builtin_schemas/vendor/compose-spec.json (compose-spec project, Apache-2.0)
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_vendored_schema_is_the_published_one() -> None:
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256


def test_compose_validates_against_the_compose_spec(compose: dict[str, Any]) -> None:
    errors = sorted(_validator().iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_schema_rejects_a_broken_compose_file(compose: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["account-api"]["depends_on"]["migrate"]["condition"] = (
        "service_finished"
    )
    broken["services"]["nats"]["helthcheck"] = {}
    assert len(list(_validator().iter_errors(broken))) >= 2


def test_services_and_profiles(compose: dict[str, Any]) -> None:
    services = compose["services"]
    always = {
        "nats",
        "postgres",
        "migrate",
        "account-api",
        "ib-connector",
        "schwab-connector",
    }
    assert always <= set(services)
    for name in always:
        assert "profiles" not in services[name], name
    assert services["legacy-migrator"]["profiles"] == ["migrate"]
    assert services["ib-gateway-sim"]["profiles"] == ["demo"]
    assert services["schwab-api-sim"]["profiles"] == ["demo"]


def test_startup_order_and_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    migrate = services["migrate"]
    assert (
        migrate["command"] == ["account-api", "migrate"] and migrate["restart"] == "no"
    )
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    api = services["account-api"]["depends_on"]
    assert api["migrate"]["condition"] == "service_completed_successfully"
    assert api["nats"]["condition"] == "service_healthy"
    assert api["postgres"]["condition"] == "service_healthy"
    for name in ("ib-connector", "schwab-connector"):
        assert services[name]["depends_on"]["nats"]["condition"] == "service_healthy"
    for name, svc in services.items():
        if svc.get("restart") == "no":
            continue
        test = svc["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), name
    ports = {"account-api": 8000, "ib-connector": 8081, "schwab-connector": 8082}
    for name, port in ports.items():
        assert f"http://127.0.0.1:{port}/readyz" in " ".join(
            services[name]["healthcheck"]["test"]
        )


def test_state_lives_on_volumes_and_nats_fsyncs(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "nats-data:/data" in services["nats"]["volumes"]
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert {"nats-data", "postgres-data"} <= set(compose["volumes"])
    mount = next(
        v for v in services["nats"]["volumes"] if v.endswith("/etc/nats/nats.conf:ro")
    )
    conf = (REPO / mount.split(":")[0]).read_text()
    assert re.search(r"^\s*sync_interval:\s*always\s*$", conf, re.M)
    assert re.search(r"store_dir:\s*/data", conf)
    assert services["postgres"]["image"].startswith("postgres:16")


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        image = svc["image"]
        assert ":" in image and not image.endswith(":latest"), (name, image)


def test_every_required_variable_is_in_env_example() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    example = {
        line.split("=", 1)[0]
        for line in (REPO / ".env.example").read_text().splitlines()
        if line and not line.startswith("#") and "=" in line
    }
    assert used <= example, f"missing from .env.example: {sorted(used - example)}"
    secrets = {
        "BROKERLINK_ENCRYPTION_KEYS",
        "ACCOUNT_API_JWT_SECRET",
        "POSTGRES_PASSWORD",
    }
    for line in (REPO / ".env.example").read_text().splitlines():
        key, _, value = line.partition("=")
        if key in secrets or key.endswith("_PASSWORD"):
            assert value == "", f".env.example must not carry a value for {key}"
