"""Which account numbers each legacy Schwab login sees, asked of schwab-connector over the bus
(`schwab.account.numbers`, request/reply) with the legacy tokens.

The import never waits on Schwab for long: each request has a short deadline, the whole phase a
budget, and when nobody answers at all (no connector running) the rest is not asked. A login
that could not be asked stays unverified, and its settings become a pending link."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from typing import Any

from brokerlink_shared.contracts.events import (
    SchwabAccountNumbersReply,
    SchwabAccountNumbersRequest,
)
from brokerlink_shared.crypto import SecretBox
from brokerlink_shared.messaging import request_model
from brokerlink_shared.subjects import SCHWAB_ACCOUNT_NUMBERS, Topology

from migrator import convert as cv
from migrator.plan import SchwabAnswer

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 5.0
BUDGET_S = 60.0
CONCURRENCY = 8


def ask_all(
    rows: Iterable[tuple[Any, ...]],
    box: SecretBox,
    nats_url: str,
    namespace: str,
    *,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
    budget_s: float = BUDGET_S,
) -> tuple[dict[int, SchwabAnswer], str]:
    """schwab_settings rows (plan.SCHWAB_COLS) -> {id: answer} for the logins Schwab answered
    for, and a one-line summary for the report."""
    requests: list[tuple[int, SchwabAccountNumbersRequest]] = []
    for r in rows:
        rid, app_key, app_secret = cv.legacy_id(r[0]), cv.clean(r[2]), cv.clean(r[3])
        token = cv.schwab_token(cv.clean(r[4]), cv.clean(r[5]), r[6])
        if (
            rid is None
            or not app_key
            or not app_secret
            or token is None
            or len(app_key) > 128
        ):
            continue
        requests.append(
            (
                rid,
                SchwabAccountNumbersRequest(
                    app_key=app_key,
                    app_secret_enc=box.encrypt(app_secret),
                    token_enc=box.encrypt(json.dumps(token)),
                    timeout_s=request_timeout_s,
                ),
            )
        )
    if not requests:
        return {}, "no legacy Schwab login had tokens to ask with"
    return asyncio.run(
        _ask(requests, box, nats_url, Topology(namespace), request_timeout_s, budget_s)
    )


async def _ask(
    requests: list[tuple[int, SchwabAccountNumbersRequest]],
    box: SecretBox,
    nats_url: str,
    topology: Topology,
    request_timeout_s: float,
    budget_s: float,
) -> tuple[dict[int, SchwabAnswer], str]:
    from faststream.nats import NatsBroker

    answers: dict[int, SchwabAnswer] = {}
    failures: dict[str, int] = {}
    broker = NatsBroker(nats_url, connect_timeout=2, max_reconnect_attempts=0)
    try:
        await asyncio.wait_for(broker.connect(), 5)
    except Exception as exc:  # no bus: nobody to ask
        return (
            {},
            f"Schwab logins not verified: the bus is unreachable ({type(exc).__name__})",
        )
    subject = topology.subject(SCHWAB_ACCOUNT_NUMBERS)
    gate = asyncio.Semaphore(CONCURRENCY)
    nobody = asyncio.Event()

    async def one(rid: int, request: SchwabAccountNumbersRequest) -> None:
        async with gate:
            if nobody.is_set():
                return
            try:
                reply = await request_model(
                    broker,
                    subject,
                    request,
                    SchwabAccountNumbersReply,
                    request_timeout_s + 1,
                )
            except Exception as exc:
                name = type(exc).__name__
                failures[name] = failures.get(name, 0) + 1
                if "NoResponders" in name or (
                    not answers and failures[name] >= CONCURRENCY
                ):
                    nobody.set()  # no connector: do not wait on every login
                return
            if not reply.success:
                failures[reply.message[:60]] = failures.get(reply.message[:60], 0) + 1
                return
            token = None
            if reply.token_enc:
                try:
                    token = json.loads(box.decrypt(reply.token_enc))
                except Exception:  # an unreadable rotated token: keep the legacy one
                    token = None
            answers[rid] = SchwabAnswer(
                [(a.account_number, a.account_hash) for a in reply.accounts], token
            )

    tasks = [asyncio.create_task(one(rid, req)) for rid, req in requests]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), budget_s)
    except TimeoutError:
        failures["phase budget spent"] = sum(1 for t in tasks if not t.done())
    finally:
        for t in tasks:
            t.cancel()
        await broker.stop()
    summary = (
        f"Schwab asked for {len(requests)} legacy login(s): {len(answers)} answered"
    )
    if failures:
        summary += "; not verified: " + ", ".join(
            f"{n} x {k}" for k, n in sorted(failures.items())
        )
    return answers, summary
