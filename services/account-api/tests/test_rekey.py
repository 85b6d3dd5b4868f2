"""`account-api rekey`: every stored secret is re-encrypted under the newest key."""

from __future__ import annotations

import psycopg
from account_api.rekey import rekey
from brokerlink_shared.crypto import SecretBox, generate_key


async def test_rekey_moves_every_secret_to_the_new_key(
    api, client, new_user, infra
) -> None:  # type: ignore[no-untyped-def]
    h = await new_user(client)
    aid = (
        await client.post(
            "/api/accounts", headers=h, json={"name": "S", "currency": "USD"}
        )
    ).json()["id"]
    body = {
        "type": "SCHWAB",
        "config": {"app_key": "rekey-app", "app_secret": "rekey-secret-1"},
    }
    assert (
        await client.put(f"/api/accounts/{aid}/integration", headers=h, json=body)
    ).status_code == 200
    new_key = generate_key()
    counts = rekey(
        api.settings.database_url, SecretBox([new_key, infra.encryption_keys])
    )
    assert counts["accounts"] >= 1
    libpq = api.settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(libpq) as conn:
        stored = conn.execute(
            "SELECT integration_config->>'app_secret_enc' FROM accounts WHERE id = %s",
            (aid,),
        ).fetchone()
    assert stored is not None
    assert SecretBox([new_key]).decrypt(stored[0]) == "rekey-secret-1"
    # Put the shared session database back under the session key for the tests that follow.
    rekey(api.settings.database_url, SecretBox([infra.encryption_keys, new_key]))
    with psycopg.connect(libpq) as conn:
        stored = conn.execute(
            "SELECT integration_config->>'app_secret_enc' FROM accounts WHERE id = %s",
            (aid,),
        ).fetchone()
    assert stored is not None
    assert SecretBox([infra.encryption_keys]).decrypt(stored[0]) == "rekey-secret-1"
