"""`migrator.events`: outbox rows formatted from the per-batch template are byte for byte the
rows `OutboxRepository.add` / `EventPublisher.encode` builds, and a config the template does not
cover takes the validated path. No database: rows are staged in memory."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from account_api.integrations import rules
from account_api.outbox.repository import OutboxRepository
from brokerlink_shared.contracts.events import IntegrationConfigured
from brokerlink_shared.crypto import SecretBox, generate_key
from brokerlink_shared.messaging import EventPublisher
from brokerlink_shared.subjects import Topology
from faststream.nats import NatsBroker
from migrator.convert import ib_config
from migrator.events import EventBatch
from pydantic import ValidationError

NOW = datetime(2025, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
CORRELATION = "migration-42"


class CountingPublisher(EventPublisher):
    """Counts `encode` calls: only the validated path encodes."""

    encoded = 0

    def encode(self, event: Any) -> tuple[str, bytes]:
        self.encoded += 1
        return super().encode(event)


@pytest.fixture
def publisher() -> CountingPublisher:
    return CountingPublisher(NatsBroker(), Topology("bench"))


class _Session(list[Any]):
    def add(self, obj: Any) -> None:
        self.append(obj)


def reference(
    publisher: EventPublisher,
    kind: str,
    stored: dict[str, Any],
    user_id: int,
    account_id: int,
    version: int,
    event_id: uuid.UUID,
    *,
    now: datetime = NOW,
    correlation_id: str = CORRELATION,
) -> tuple[Any, ...]:
    """The outbox row account-api itself would write for this event."""
    session = _Session()
    OutboxRepository(session, publisher).add(  # type: ignore[arg-type]
        IntegrationConfigured(
            event_id=event_id,
            user_id=user_id,
            account_id=account_id,
            correlation_id=correlation_id,
            occurred_at=now,
            payload={
                "broker": kind,
                "config": rules.bus_connection(kind, stored),
                "version": version,
            },
        )
    )
    m = session[0]
    return (
        m.event_id,
        m.family,
        m.subject,
        m.partition_key,
        m.body,
        m.correlation_id,
    )


BOX = SecretBox([generate_key()])
SECRET = BOX.encrypt("app secret")
TOKEN = BOX.encrypt(
    json.dumps({"creation_timestamp": 1, "token": {"refresh_token": "r"}})
)

IB = [
    pytest.param(ib_config("127.0.0.1", 4001, 1, None), id="ib-no-account-code"),
    pytest.param(ib_config("127.0.0.1", 4001, 1, "U1234567"), id="ib-account-code"),
    pytest.param(
        ib_config("gw.example.com.", 65535, 2147483647, "du7654321"),
        id="ib-hostname-max-values",
    ),
    pytest.param(ib_config("::1", 1, 0, "DU1234"), id="ib-ipv6-min-values"),
    pytest.param(
        {**ib_config("10.0.0.1", 7497, 3, None), "read_only": False}, id="ib-rw"
    ),
]
SCHWAB = [
    pytest.param(
        {
            "app_key": "key-1",
            "app_secret_enc": SECRET,
            "token_enc": TOKEN,
            "account_number": "12345678",
            "account_hash": None,
            "unverified": True,
        },
        id="schwab-unverified-token",
    ),
    pytest.param(
        {
            "app_key": "k" * 128,
            "app_secret_enc": SECRET,
            "token_enc": None,
            "account_number": "12345678",
            "account_hash": None,
            "unverified": True,
        },
        id="schwab-unverified-no-token",
    ),
    pytest.param(
        {
            "app_key": "key-2",
            "app_secret_enc": SECRET,
            "token_enc": TOKEN,
            "account_number": "87654321",
            "account_hash": "ABCDEF0123456789",
        },
        id="schwab-verified",
    ),
    pytest.param(
        {
            "app_key": "key-3",
            "app_secret_enc": SECRET,
            "token_enc": None,
            "account_number": None,
            "account_hash": None,
        },
        id="schwab-no-number",
    ),
]


def check_template_path(
    publisher: CountingPublisher,
    kind: str,
    stored: dict[str, Any],
    *,
    now: datetime = NOW,
    correlation_id: str = CORRELATION,
) -> None:
    batch = EventBatch(publisher, correlation_id, now)
    # the first event of a kind is validated (and the template checked against it), the rest
    # are formatted from the template
    calls = [(7, 70, 1), (8, 81, 2), (123456789012, 2**40, 5), (9, 0, 1)]
    for user_id, account_id, version in calls:
        batch.add(kind, stored, user_id, account_id, version)
    assert publisher.encoded == 1
    assert len(batch.rows) == len(calls)
    for row, (user_id, account_id, version) in zip(batch.rows, calls, strict=True):
        want = reference(
            publisher,
            kind,
            stored,
            user_id,
            account_id,
            version,
            row[0],
            now=now,
            correlation_id=correlation_id,
        )
        assert row == want
        assert type(row[4]) is bytes
        assert row[0].version == 4


@pytest.mark.parametrize("stored", IB)
def test_ib_template_rows_equal_validated(publisher, stored) -> None:
    check_template_path(publisher, "IB", stored)


@pytest.mark.parametrize("stored", SCHWAB)
def test_schwab_template_rows_equal_validated(publisher, stored) -> None:
    check_template_path(publisher, "SCHWAB", stored)


@pytest.mark.parametrize(
    "now",
    [
        datetime(2025, 1, 1, tzinfo=UTC),  # no microseconds
        datetime(2025, 1, 1, 8, 0, 0, 5, tzinfo=timezone(timedelta(hours=8))),
    ],
    ids=["whole-second", "utc+8"],
)
def test_occurred_at_forms(publisher, now) -> None:
    check_template_path(publisher, "IB", ib_config("127.0.0.1", 4001, 1, None), now=now)


def test_both_brokers_in_one_batch(publisher) -> None:
    batch = EventBatch(publisher, CORRELATION, NOW)
    ib = ib_config("127.0.0.1", 4001, 1, "U1234567")
    schwab = SCHWAB[0].values[0]
    for i in range(3):
        batch.add("IB", ib, 1, 10 + i, 1)
        batch.add("SCHWAB", schwab, 1, 20 + i, 1)
    assert publisher.encoded == 2  # one validated event per broker
    for row in batch.rows:
        kind = "IB" if int(row[3]) < 20 else "SCHWAB"
        stored = ib if kind == "IB" else schwab
        assert row == reference(publisher, kind, stored, 1, int(row[3]), 1, row[0])
    assert len({row[0] for row in batch.rows}) == 6


# Configs the template does not cover: they go through `OutboxRepository.add` themselves.
VALID_OUTSIDE = [
    pytest.param(
        "IB",
        {
            **ib_config("127.0.0.1", 4001, 1, None),
            "backups": [{"host": "10.0.0.2", "port": 4002}],
        },
        id="ib-backups",
    ),
    pytest.param(
        "IB", {**ib_config("127.0.0.1", 4001, 1, None), "note": "x"}, id="ib-extra-key"
    ),
    pytest.param(
        "IB",
        {**ib_config("127.0.0.1", 4001, 1, None), "host": " 127.0.0.1 "},
        id="ib-host-spaces",
    ),
    pytest.param(
        "IB",
        {**ib_config("127.0.0.1", 4001, 1, None), "account_code": " U1234567"},
        id="ib-code-spaces",
    ),
    pytest.param(
        "IB",
        {**ib_config("127.0.0.1", 4001, 1, None), "account_code": "U1234567\n"},
        id="ib-code-newline",
    ),
    pytest.param(
        "IB",
        {**ib_config("127.0.0.1", 4001, 1, None), "host": "gw.example.com\n"},
        id="ib-host-newline",
    ),
    pytest.param(
        "IB",
        {**ib_config("127.0.0.1", 4001, 1, None), "read_only": 1},
        id="ib-read-only-int",
    ),
    pytest.param(
        "SCHWAB",
        {**SCHWAB[0].values[0], "app_key": " key "},
        id="schwab-key-spaces",
    ),
    pytest.param(
        "SCHWAB",
        {**SCHWAB[0].values[0], "account_number": "12345678 "},
        id="schwab-number-spaces",
    ),
]
INVALID = [
    pytest.param("IB", {"port": 0}, id="ib-port-0"),
    pytest.param("IB", {"port": 65536}, id="ib-port-too-big"),
    pytest.param("IB", {"port": "4001"}, id="ib-port-str"),
    pytest.param("IB", {"port": True}, id="ib-port-bool"),
    pytest.param("IB", {"client_id": -1}, id="ib-client-negative"),
    pytest.param("IB", {"client_id": 2**31}, id="ib-client-too-big"),
    pytest.param("IB", {"host": ""}, id="ib-host-empty"),
    pytest.param("IB", {"host": "http://gw"}, id="ib-host-url"),
    pytest.param("IB", {"host": "h" * 254}, id="ib-host-too-long"),
    pytest.param("IB", {"account_code": "u1234567"}, id="ib-code-lowercase"),
    pytest.param("SCHWAB", {"app_key": ""}, id="schwab-key-empty"),
    pytest.param("SCHWAB", {"app_key": "k" * 129}, id="schwab-key-too-long"),
    pytest.param("SCHWAB", {"app_secret_enc": None}, id="schwab-no-secret"),
    pytest.param("SCHWAB", {"token_enc": 5}, id="schwab-token-int"),
]


def _warm(batch: EventBatch, kind: str) -> None:
    """Make sure the template for `kind` exists, so only the config decides the path."""
    stored = (
        ib_config("127.0.0.1", 4001, 1, None) if kind == "IB" else SCHWAB[0].values[0]
    )
    batch.add(kind, stored, 1, 1, 1)


@pytest.mark.parametrize(("kind", "stored"), VALID_OUTSIDE)
def test_other_shapes_take_validated_path(publisher, kind, stored) -> None:
    batch = EventBatch(publisher, CORRELATION, NOW)
    _warm(batch, kind)
    before = publisher.encoded
    batch.add(kind, stored, 3, 30, 2)
    assert publisher.encoded == before + 1
    row = batch.rows[-1]
    assert row == reference(publisher, kind, stored, 3, 30, 2, row[0])


@pytest.mark.parametrize(("kind", "change"), INVALID)
def test_invalid_configs_are_rejected_not_formatted(publisher, kind, change) -> None:
    batch = EventBatch(publisher, CORRELATION, NOW)
    _warm(batch, kind)
    base = (
        ib_config("127.0.0.1", 4001, 1, None) if kind == "IB" else SCHWAB[0].values[0]
    )
    with pytest.raises(ValidationError):
        batch.add(kind, {**base, **change}, 3, 30, 2)
    assert len(batch.rows) == 1


@pytest.mark.parametrize(
    ("user_id", "account_id", "version", "correlation_id"),
    [
        pytest.param(True, 30, 1, CORRELATION, id="bool-user"),
        pytest.param(3, 30, 0, CORRELATION, id="version-0"),
        pytest.param(3, 30, 1, "m" * 129, id="long-correlation"),
        pytest.param(3, None, 1, CORRELATION, id="no-account"),
    ],
)
def test_other_envelopes_take_validated_path(
    publisher, user_id, account_id, version, correlation_id
) -> None:
    stored = ib_config("127.0.0.1", 4001, 1, None)
    batch = EventBatch(publisher, correlation_id, NOW)
    if correlation_id == CORRELATION:
        _warm(batch, "IB")
    before = publisher.encoded
    try:
        batch.add("IB", stored, user_id, account_id, version)
    except ValidationError:
        with pytest.raises(ValidationError):
            reference(
                publisher,
                "IB",
                stored,
                user_id,
                account_id,
                version,
                uuid.uuid4(),
                correlation_id=correlation_id,
            )
        return
    assert publisher.encoded == before + 1
    row = batch.rows[-1]
    assert row == reference(
        publisher,
        "IB",
        stored,
        user_id,
        account_id,
        version,
        row[0],
        correlation_id=correlation_id,
    )
