"""Two-factor sign-in (TOTP, RFC 6238) through the REST API: enrol, confirm, sign in with a
valid, a wrong and a replayed code, recovery codes, throttling, disable; and a user imported
from the legacy app with two-factor on signs in with a code from the authenticator they have."""

from __future__ import annotations

import re
import secrets
import time

import bcrypt
import httpx
import psycopg
import pyotp
from brokerlink_shared.crypto import SecretBox

PASSWORD = "correct horse battery"


async def _register(client: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    email = f"tf{secrets.token_hex(6)}@example.com"
    assert (
        await client.post(
            "/api/auth/register",
            json={"email": email, "password": PASSWORD, "name": "T"},
        )
    ).status_code == 201
    r = await client.post(
        "/api/auth/login", json={"email": email, "password": PASSWORD}
    )
    return email, {"Authorization": f"Bearer {r.json()['access_token']}"}


def _login(client: httpx.AsyncClient, email: str, code: str | None = None):  # type: ignore[no-untyped-def]
    body = {"email": email, "password": PASSWORD}
    if code is not None:
        body["code"] = code
    return client.post("/api/auth/login", json=body)


def _next_code(totp: pyotp.TOTP) -> str:
    """The next step's code (accepted for clock drift), so it is never the step just used."""
    return totp.at(time.time() + 30)


async def test_enrol_sign_in_and_disable(client: httpx.AsyncClient, api) -> None:  # type: ignore[no-untyped-def]
    email, headers = await _register(client)
    r = await client.post("/api/auth/2fa/setup", headers=headers)
    assert r.status_code == 200, r.text
    setup = r.json()
    assert setup["otpauth_uri"].startswith("otpauth://totp/brokerlink:")
    assert f"secret={setup['secret']}" in setup["otpauth_uri"]
    assert setup["qr_svg"].lstrip().startswith("<svg")
    totp = pyotp.TOTP(setup["secret"])
    # not in force before it is confirmed
    assert (await _login(client, email)).status_code == 200
    r = await client.post(
        "/api/auth/2fa/confirm",
        headers=headers,
        json={"code": totp.at(time.time() - 3600)},
    )
    assert r.status_code == 422 and r.json()["field"] == "code"
    r = await client.post(
        "/api/auth/2fa/confirm", headers=headers, json={"code": totp.now()}
    )
    assert r.status_code == 200, r.text
    codes = r.json()["recovery_codes"]
    assert len(codes) == 10 and all(
        re.fullmatch(r"[a-z2-9]{5}-[a-z2-9]{5}", c) for c in codes
    )
    assert (await client.get("/api/auth/me", headers=headers)).json()[
        "two_factor_enabled"
    ]

    # the secret and the recovery codes are not stored in plaintext
    async with await psycopg.AsyncConnection.connect(
        api.settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    ) as conn:
        dump = str(
            await (
                await conn.execute(
                    "SELECT u::text, (SELECT array_agg(c::text) FROM two_factor_recovery_codes c "
                    "WHERE c.user_id = u.id) FROM users u WHERE email = %s",
                    (email,),
                )
            ).fetchall()
        )
    assert setup["secret"] not in dump and codes[0] not in dump

    r = await _login(client, email)
    assert r.status_code == 401 and r.json()["code"] == "two_factor_required"
    r = await _login(client, email, totp.at(time.time() - 3600))
    assert r.status_code == 401 and r.json()["code"] == "two_factor_invalid"
    code = _next_code(totp)
    r = await _login(client, email, code)
    assert r.status_code == 200, r.text
    r = await _login(client, email, code)  # replayed
    assert r.status_code == 401 and "already used" in r.json()["detail"]
    assert code not in r.text
    r = await _login(client, email, codes[0])  # a recovery code, once
    assert r.status_code == 200, r.text
    r = await _login(client, email, codes[0])
    assert r.status_code == 401 and r.json()["code"] == "two_factor_invalid"

    r = await client.post(
        "/api/auth/2fa/disable",
        headers=headers,
        json={"password": "wrong password", "code": codes[1]},
    )
    assert r.status_code == 422 and r.json()["field"] == "password"
    r = await client.post(
        "/api/auth/2fa/disable",
        headers=headers,
        json={"password": PASSWORD, "code": codes[1]},
    )
    assert r.status_code == 204, r.text
    assert (await _login(client, email)).status_code == 200


async def test_turning_it_on_signs_out_every_other_session(
    client: httpx.AsyncClient,
) -> None:
    email, headers = await _register(client)
    other = (await _login(client, email)).json()
    other_headers = {"Authorization": f"Bearer {other['access_token']}"}
    assert (await client.get("/api/auth/me", headers=other_headers)).status_code == 200
    setup = (await client.post("/api/auth/2fa/setup", headers=headers)).json()
    r = await client.post(
        "/api/auth/2fa/confirm",
        headers=headers,
        json={"code": pyotp.TOTP(setup["secret"]).now()},
    )
    assert r.status_code == 200, r.text
    # the session signed in with the password alone ends; the one that turned it on stays
    assert (await client.get("/api/auth/me", headers=other_headers)).status_code == 401
    r = await client.post(
        "/api/auth/refresh", json={"refresh_token": other["refresh_token"]}
    )
    assert r.status_code == 401
    assert (await client.get("/api/auth/me", headers=headers)).status_code == 200


async def test_wrong_codes_are_throttled(client: httpx.AsyncClient, api) -> None:  # type: ignore[no-untyped-def]
    email, headers = await _register(client)
    secret = (await client.post("/api/auth/2fa/setup", headers=headers)).json()[
        "secret"
    ]
    totp = pyotp.TOTP(secret)
    assert (
        await client.post(
            "/api/auth/2fa/confirm", headers=headers, json={"code": totp.now()}
        )
    ).status_code == 200
    for _ in range(api.settings.login_account_max_failures):
        r = await _login(
            client, email, "000000" if totp.now() != "000000" else "111111"
        )
        assert r.status_code == 401
    r = await _login(client, email, _next_code(totp))
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0


async def test_a_legacy_user_keeps_their_authenticator(
    client: httpx.AsyncClient, api
) -> None:  # type: ignore[no-untyped-def]
    """As the migrator imports them: the legacy bcrypt hash, and the legacy base32 secret
    encrypted into users.two_factor_secret_enc with two_factor_enabled on."""
    legacy_secret = pyotp.random_base32()
    email = f"legacy{secrets.token_hex(5)}@example.com"
    box = SecretBox.from_setting(api.settings.encryption_keys.get_secret_value())
    password_hash = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    async with await psycopg.AsyncConnection.connect(
        api.settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    ) as conn:
        await conn.execute(
            "INSERT INTO users (email, name, password_hash, two_factor_secret_enc, "
            "two_factor_enabled, legacy_id) VALUES (%s, 'Legacy', %s, %s, true, %s)",
            (
                email,
                password_hash,
                box.encrypt(legacy_secret),
                secrets.randbelow(10**9) + 10**9,
            ),
        )
        await conn.commit()
    authenticator = pyotp.TOTP(legacy_secret)  # the app on the user's phone
    r = await _login(client, email)
    assert r.status_code == 401 and r.json()["code"] == "two_factor_required"
    r = await _login(client, email, authenticator.now())
    assert r.status_code == 200, r.text
