"""schemathesis over /openapi.json against the running app: no 5xx, responses match the schema."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest

from .conftest import ib_integration


@pytest.mark.slow
async def test_schemathesis_finds_no_server_errors_or_schema_violations(
    api, client: httpx.AsyncClient, new_user, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    headers = await new_user(client)
    # Give the fuzzer something of its own to find: two accounts, one integrated.
    aid = (
        await client.post(
            "/api/accounts", headers=headers, json={"name": "Fuzz", "currency": "USD"}
        )
    ).json()["id"]
    await client.put(
        f"/api/accounts/{aid}/integration",
        headers=headers,
        json=ib_integration(),
    )
    st = Path(sys.executable).parent / "schemathesis"
    proc = await asyncio.create_subprocess_exec(
        str(st),
        "run",
        f"{api.base_url}/openapi.json",
        "--header",
        f"Authorization: {headers['Authorization']}",
        "--checks",
        "not_a_server_error,response_schema_conformance,content_type_conformance",
        "--max-examples",
        "15",
        "--phases",
        "examples,coverage,fuzzing",
        "--exclude-path-regex",
        "/refresh$|/test$",  # these wait on connectors that this test does not run
        "--suppress-health-check",
        "all",
        "--no-color",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=600)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
