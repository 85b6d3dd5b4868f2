"""The OpenAPI document declares the bearer scheme `current_actor` reads (`document_bearer_auth`)
on every operation that needs a signed-in user, and on no other."""

from __future__ import annotations

import httpx

PUBLIC = {
    ("/api/auth/login", "post"),
    ("/api/auth/refresh", "post"),
    ("/api/auth/register", "post"),
    ("/healthz", "get"),
    ("/livez", "get"),
    ("/readyz", "get"),
}


async def test_signed_in_operations_and_only_they_declare_the_bearer_scheme(
    client: httpx.AsyncClient,
) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
    }
    operations = {
        (path, method): operation
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
    }
    assert set(operations) >= PUBLIC
    for key, operation in operations.items():
        expected = None if key in PUBLIC else [{"HTTPBearer": []}]
        assert operation.get("security") == expected, key


async def test_a_signed_in_route_refuses_a_request_without_a_bearer_token(
    client: httpx.AsyncClient, new_user
) -> None:  # type: ignore[no-untyped-def]
    headers = await new_user(client)
    token = headers["Authorization"].removeprefix("Bearer ")
    assert (await client.get("/api/auth/me", headers=headers)).status_code == 200
    for authorization in (None, token, f"Basic {token}", "Bearer", "Bearer x"):
        r = await client.get(
            "/api/auth/me",
            headers={} if authorization is None else {"Authorization": authorization},
        )
        assert r.status_code == 401, authorization
    assert (
        await client.get("/api/auth/me", headers={"Authorization": f"bearer {token}"})
    ).status_code == 200
