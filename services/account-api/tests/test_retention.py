"""The retention job purges what is past its time and keeps the rest; audit entries stay
unless a retention is configured."""

from __future__ import annotations

import uuid

import httpx
import psycopg
from account_api.db import UnitOfWork
from account_api.scheduling.retention import RetentionJob
from brokerlink_shared.messaging import EventPublisher

from .conftest import register_user


async def test_old_rows_go_and_recent_ones_stay(api, client: httpx.AsyncClient) -> None:  # type: ignore[no-untyped-def]
    h = await register_user(client)
    user_id = (await client.get("/api/auth/me", headers=h)).json()["id"]
    account = (
        await client.post(
            "/api/accounts", headers=h, json={"name": "R", "currency": "USD"}
        )
    ).json()["id"]
    old_event, new_event, old_job = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    old_refresh, pending_refresh, new_refresh = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    old_session, live_session = uuid.uuid4(), uuid.uuid4()
    marker = f"retention-{uuid.uuid4().hex[:8]}"
    url = api.settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    async with await psycopg.AsyncConnection.connect(url) as conn:
        for statement, params in (
            (
                "INSERT INTO processed_events (event_id, consumer, processed_at) VALUES "
                "(%s, 'x', now() - interval '40 days'), (%s, 'x', now())",
                (old_event, new_event),
            ),
            (
                "INSERT INTO refresh_jobs (id, user_id, total, created_at) "
                "VALUES (%s, %s, 1, now() - interval '100 days')",
                (old_job, user_id),
            ),
            (
                "INSERT INTO refreshes (id, account_id, status, requested_at) VALUES "
                "(%s, %s, 'succeeded', now() - interval '100 days'), "
                "(%s, %s, 'pending', now() - interval '100 days'), "
                "(%s, %s, 'succeeded', now())",
                (old_refresh, account, pending_refresh, account, new_refresh, account),
            ),
            (
                "INSERT INTO oauth_states (nonce, user_id, account_id, expires_at) VALUES "
                "(%s, %s, %s, now() - interval '3 days'), (%s, %s, %s, now() + interval '5 minutes')",
                (f"{marker}-old", user_id, account, f"{marker}-new", user_id, account),
            ),
            (
                "INSERT INTO auth_sessions (id, user_id, token_hash, expires_at, revoked_at) VALUES "
                "(%s, %s, '\\x00', now(), now() - interval '40 days'), "
                "(%s, %s, '\\x00', now() + interval '7 days', NULL)",
                (old_session, user_id, live_session, user_id),
            ),
            (
                "INSERT INTO auth_throttle (key, window_start, count) VALUES "
                "(%s, now() - interval '2 days', 3)",
                (f"{marker}-throttle",),
            ),
            (
                "INSERT INTO audit_log (actor, user_id, action, at) "
                "VALUES ('t', %s, %s, now() - interval '400 days')",
                (user_id, marker),
            ),
        ):
            await conn.execute(statement, params)
        await conn.commit()

    container = api.app.state.container

    def new_uow() -> UnitOfWork:
        return UnitOfWork(
            container.sessionmaker, EventPublisher(container.broker, container.topology)
        )

    removed = await RetentionJob(new_uow, api.settings).purge()
    assert "audit_log" not in removed

    async def present(table: str, column: str, value: object) -> bool:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            row = await (
                await conn.execute(
                    f"SELECT 1 FROM {table} WHERE {column} = %s", (value,)
                )
            ).fetchone()
        return row is not None

    assert not await present("processed_events", "event_id", old_event)
    assert await present("processed_events", "event_id", new_event)
    assert not await present("refresh_jobs", "id", old_job)
    assert not await present("refreshes", "id", old_refresh)
    assert await present("refreshes", "id", pending_refresh)  # never drop an open one
    assert await present("refreshes", "id", new_refresh)
    assert not await present("oauth_states", "nonce", f"{marker}-old")
    assert await present("oauth_states", "nonce", f"{marker}-new")
    assert not await present("auth_sessions", "id", old_session)
    assert await present("auth_sessions", "id", live_session)
    assert not await present("auth_throttle", "key", f"{marker}-throttle")
    assert await present("audit_log", "action", marker)  # audit kept by default

    audit_kept_a_year = api.settings.model_copy(update={"retention_audit_days": 365})
    await RetentionJob(new_uow, audit_kept_a_year).purge()
    assert not await present("audit_log", "action", marker)
