"""Every YAML file of the deployment parses, and every Kubernetes document names its kind."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from .conftest import DEPLOY, REPO

YAML_FILES = sorted(
    [*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml"), REPO / "docker-compose.yml"]
)


def test_there_are_yaml_files() -> None:
    names = {p.relative_to(REPO).as_posix() for p in YAML_FILES}
    assert {
        "docker-compose.yml",
        "deploy/nats/values.yaml",
        "deploy/postgres/cluster.yaml",
    } <= names
    assert "deploy/base/kustomization.yaml" in names


@pytest.mark.parametrize(
    "path", YAML_FILES, ids=lambda p: p.relative_to(REPO).as_posix()
)
def test_yaml_parses(path: Path) -> None:
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs, f"{path} is empty"
    for doc in docs:
        assert doc is None or isinstance(doc, dict), (
            f"{path}: a document is not a mapping"
        )


def test_yaml_parse_failure_is_detected() -> None:
    with pytest.raises(yaml.YAMLError):
        list(yaml.safe_load_all("a: [1, 2\nb: c\n"))
