"""Account claims while their NATS goes away and comes back (a node lost, its KV bucket's leader
elsewhere): a connect or refresh waits it out up to its deadline instead of failing, and without
a deadline fails at once with the claims-unavailable reason. Real nats-server and KV bucket."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import nats
import pytest
from brokerlink_devkit.devstack.embedded import EmbeddedNats, free_port
from brokerlink_devkit.testing import wait_until
from ib_connector.adapters.account_claims import AccountClaims
from ib_connector.adapters.ib_gateway import GatewayError
from ib_connector.pool import CLAIMS_UNAVAILABLE, hold_accounts


async def test_a_claim_waits_out_the_bus_until_its_deadline(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ib_connector.pool")
    server = EmbeddedNats(tmp_path / "nats", port=free_port())
    server.start()
    nc = await nats.connect(
        server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2
    )
    try:
        claims = AccountClaims(nc, "claimsfailover")
        await claims.start()
        server.stop()

        # no deadline: one try, and the refresh hears why
        with pytest.raises(GatewayError) as once:
            await hold_accounts(
                lambda: claims.claim(7, ["U7000001"], ["h1"]), "u7 (no deadline)"
            )
        assert once.value.code == CLAIMS_UNAVAILABLE

        loop = asyncio.get_running_loop()
        waiting = asyncio.create_task(
            hold_accounts(
                lambda: claims.claim(7, ["U7000001"], ["h1"]),
                "u7",
                loop.time() + 60,
            )
        )
        await wait_until(
            lambda: any(
                "retrying" in r.getMessage() and r.__dict__.get("session") == "u7"
                for r in caplog.records
            ),
            timeout_s=30,
            message="a failed claim waiting to retry",
        )
        assert not waiting.done()
        server.start()  # the bucket is back (file-backed: its hash key survived)
        await asyncio.wait_for(waiting, 45)

        # the claim was really taken: another user is refused the same account
        assert await claims.claim(8, ["U7000001"], ["h2"]) is False
    finally:
        await nc.close()
        server.stop()
