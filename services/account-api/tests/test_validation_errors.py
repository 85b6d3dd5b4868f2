"""One validation-error handler for every route: a 422 names the field and the rule and never
echoes the input. A secret is planted in every request schema of the OpenAPI document (every
property, wrong types, unknown fields, malformed JSON, query and path parameters) and must
never come back."""

from __future__ import annotations

from typing import Any

import httpx

SECRET = "planted-Secret-7f3a9c"


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = spec["components"]["schemas"][name]
    return schema


def _properties(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    schema = _resolve(spec, schema)
    found: dict[str, Any] = dict(schema.get("properties", {}))
    for variant in schema.get("oneOf", []) + schema.get("anyOf", []):
        found.update(_properties(spec, variant))
    return found


def _bodies(spec: dict[str, Any], schema: dict[str, Any]) -> list[Any]:
    """Request bodies that must fail validation while carrying the secret."""
    props = _properties(spec, schema)
    bodies: list[Any] = [
        dict.fromkeys(props, SECRET) | {"unexpected": SECRET},
        {name: {"nested": SECRET} for name in props},
        {name: [SECRET, SECRET] for name in props},
        dict.fromkeys(props, SECRET * 300),
        [SECRET],
        SECRET,
    ]
    for name, prop in props.items():
        # the secret in one field, every other field missing, and nested one level down
        bodies.append({name: SECRET})
        inner = _properties(spec, prop)
        if inner:
            bodies.append({name: dict.fromkeys(inner, SECRET) | {"type": "IB"}})
            bodies.append({name: dict.fromkeys(inner, SECRET) | {"type": "SCHWAB"}})
    return bodies


async def test_no_422_ever_echoes_a_planted_secret(
    client: httpx.AsyncClient, new_user
) -> None:  # type: ignore[no-untyped-def]
    headers = await new_user(client)
    spec = (await client.get("/openapi.json")).json()
    checked = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            params = operation.get("parameters", [])
            url = path
            for param in params:
                if param["in"] == "path":
                    url = url.replace("{" + param["name"] + "}", "1")
            requests: list[dict[str, Any]] = []
            for param in params:
                if param["in"] == "path":
                    requests.append(
                        {"url": path.replace("{" + param["name"] + "}", SECRET)}
                    )
                if param["in"] == "query":
                    requests.append({"url": url, "params": {param["name"]: SECRET}})
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                schema = content["application/json"]["schema"]
                requests += [{"url": url, "json": b} for b in _bodies(spec, schema)]
                requests.append(
                    {"url": url, "content": b'{"x": "' + SECRET.encode() + b'",'}
                )
            for request in requests:
                extra = (
                    {"Content-Type": "application/json"} if "content" in request else {}
                )
                r = await client.request(
                    method.upper(), headers={**headers, **extra}, **request
                )
                assert SECRET not in r.text, (method, path, request, r.text)
                assert SECRET.lower() not in r.text.lower()
                if r.status_code == 422:
                    body = r.json()
                    assert body["code"] in (
                        "invalid_field",
                        "host_not_allowed",
                        "host_unresolvable",
                    ), body
                    for error in body["detail"]:
                        assert set(error) == {"loc", "msg", "type"}, error
                    checked += 1
    assert checked > 50, f"only {checked} validation errors were provoked"


async def test_a_422_names_the_field_and_the_rule(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post(
        "/api/auth/register",
        json={"email": "not-an-email", "password": SECRET, "name": "X"},
    )
    assert r.status_code == 422 and SECRET not in r.text
    assert r.json()["field"] == "email"
    [error] = r.json()["detail"]
    assert error["loc"] == ["body", "email"] and "email" in error["msg"]
    assert "not-an-email" not in r.text
    r = await client.post(
        "/api/auth/register", json={"email": "a@example.com", "password": "Qz7#k"}
    )
    assert r.status_code == 422 and "Qz7#k" not in r.text
    fields = {e["loc"][-1]: e["type"] for e in r.json()["detail"]}
    assert fields == {"password": "too_short", "name": "missing"}


async def test_legacy_routes_use_the_same_handler(
    client: httpx.AsyncClient, new_user
) -> None:  # type: ignore[no-untyped-def]
    headers = await new_user(client)
    r = await client.post(
        "/api/ib/settings",
        headers=headers,
        json={"host": SECRET, "port": SECRET, "client_id": 1, "target_account_id": 1},
    )
    assert r.status_code == 422 and SECRET not in r.text
    assert r.json()["code"] == "invalid_field" and r.headers["Deprecation"]
    r = await client.get(
        "/api/integrations/schwab/callback",
        params={"code": SECRET * 200, "state": SECRET},
        headers={"Accept": "application/json"},
    )
    assert r.status_code == 422 and SECRET not in r.text


async def test_a_nul_character_is_a_422_naming_the_field_and_changes_nothing(
    client: httpx.AsyncClient, new_user
) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL's text cannot hold a NUL: it is refused at the door (once a 500, found by
    the OpenAPI fuzzer), in every request body."""
    r = await client.post(
        "/api/auth/register",
        json={"email": "nul@example.com", "password": SECRET, "name": "a\u0000b"},
    )
    assert r.status_code == 422 and r.json()["field"] == "name", r.text
    assert SECRET not in r.text
    r = await client.post(
        "/api/auth/login", json={"email": "nul@example.com", "password": SECRET}
    )
    assert r.status_code == 401  # nobody was registered
    headers = await new_user(client)
    r = await client.post(
        "/api/accounts", headers=headers, json={"name": "\u0000", "currency": "USD"}
    )
    assert r.status_code == 422 and r.json()["field"] == "name", r.text
    assert (await client.get("/api/accounts", headers=headers)).json() == []


async def test_a_422_tells_neither_a_character_nor_the_length_of_the_input(
    client: httpx.AsyncClient, new_user: Any
) -> None:
    headers = await new_user(client)
    r = await client.get("/api/integrations/refresh/Zeb1c0de-0000", headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "job_id"
    assert "`Z`" not in r.text and "Zeb1c0de" not in r.text
    assert r.json()["detail"][0]["msg"] == "Input should be a valid UUID"
    r = await client.post(
        "/api/accounts", headers=headers, json={"name": "S", "currency": "USD"}
    )
    account = r.json()["id"]
    r = await client.put(
        f"/api/accounts/{account}/integration",
        headers=headers,
        json={
            "type": "SCHWAB",
            "config": {"app_key": "k" * 32, "app_secret": "s" * 390},
        },
    )
    assert r.status_code == 422, r.text
    assert "390" not in r.text and "s" * 20 not in r.text
