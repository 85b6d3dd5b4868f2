"""A minimal kustomize renderer: the fallback when no `kustomize`/`kubectl kustomize` is on the machine.

It implements only the subset deploy/ uses, and refuses anything else (so a new feature in a
kustomization fails loudly instead of being silently ignored):

- `resources`: YAML files and directories holding a kustomization.yaml (rendered recursively);
- `namespace`: set on every namespaced object (not on Namespace or other cluster-scoped kinds);
- `labels` with `pairs` only (metadata labels; no selectors, no templates);
- `images` with `name` and `newName` / `newTag` (containers and initContainers of pod templates);
- `patches` with `path` to a strategic-merge patch (one or more documents, matched by kind and name;
  lists of maps merge by `name`, `null` deletes a key, `$patch: delete` removes the object).

Strategic merge here is the usual approximation (merge key `name` for every list of named maps),
which is exactly right for the fields deploy/ patches. When kubectl is available,
tests/deploy/test_kubernetes.py compares this renderer's output with `kubectl kustomize`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SUPPORTED_KEYS = {
    "apiVersion",
    "kind",
    "namespace",
    "labels",
    "resources",
    "images",
    "patches",
}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "IngressClass",
}


class UnsupportedKustomization(ValueError):
    """The kustomization uses a feature this renderer does not implement."""


def _load_docs(path: Path) -> list[dict[str, Any]]:
    with path.open() as fh:
        return [d for d in yaml.safe_load_all(fh) if d]


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def strategic_merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = strategic_merge(out[k], v)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(i, dict) and "name" in i for i in base + patch)
    ):
        out_list = [copy.deepcopy(i) for i in base]
        index = {i["name"]: n for n, i in enumerate(out_list)}
        for item in patch:
            if item["name"] in index:
                out_list[index[item["name"]]] = strategic_merge(
                    out_list[index[item["name"]]], item
                )
            else:
                out_list.append(copy.deepcopy(item))
        return out_list
    return copy.deepcopy(patch)


def _pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec") or {}
    if obj["kind"] == "Pod":
        return [spec]
    if obj["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    template = spec.get("template")
    if isinstance(template, dict) and "spec" in template:
        return [template["spec"]]
    return []


def _split_image(image: str) -> tuple[str, str | None]:
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return image, None
    return name, tag


def render(directory: Path) -> list[dict[str, Any]]:
    """Render the kustomization in `directory` into a list of objects."""
    kfile = directory / "kustomization.yaml"
    kust = yaml.safe_load(kfile.read_text())
    unknown = set(kust) - SUPPORTED_KEYS
    if unknown:
        raise UnsupportedKustomization(f"{kfile}: unsupported fields {sorted(unknown)}")

    objects: list[dict[str, Any]] = []
    for res in kust.get("resources", []):
        path = (directory / res).resolve()
        objects.extend(render(path) if path.is_dir() else _load_docs(path))

    for patch_ref in kust.get("patches", []):
        if set(patch_ref) != {"path"}:
            raise UnsupportedKustomization(
                f"{kfile}: only `patches: - path:` is supported"
            )
        for patch in _load_docs(directory / patch_ref["path"]):
            matches = [n for n, o in enumerate(objects) if _key(o) == _key(patch)]
            if len(matches) != 1:
                raise UnsupportedKustomization(
                    f"{kfile}: patch target {_key(patch)} not found once"
                )
            if patch.get("$patch") == "delete":
                del objects[matches[0]]
            else:
                objects[matches[0]] = strategic_merge(objects[matches[0]], patch)

    for label_set in kust.get("labels", []):
        if set(label_set) != {"pairs"}:
            raise UnsupportedKustomization(
                f"{kfile}: only `labels: - pairs:` is supported"
            )
        for obj in objects:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(
                label_set["pairs"]
            )

    for image in kust.get("images", []):
        for obj in objects:
            for pod in _pod_specs(obj):
                for container in pod.get("containers", []) + pod.get(
                    "initContainers", []
                ):
                    name, tag = _split_image(container["image"])
                    if name != image["name"]:
                        continue
                    new_name = image.get("newName", name)
                    new_tag = image.get("newTag", tag)
                    container["image"] = (
                        f"{new_name}:{new_tag}" if new_tag else new_name
                    )

    if "namespace" in kust:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = kust["namespace"]
    return objects
