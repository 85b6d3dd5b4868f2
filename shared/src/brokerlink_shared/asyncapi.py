"""Generate the AsyncAPI 3.0 document of every subject and event from the contracts.

`python -m brokerlink_shared.asyncapi > docs/asyncapi.json` (or `make asyncapi`); a test fails
when the committed document is stale."""

from __future__ import annotations

import sys
from typing import Any

import orjson
from pydantic import BaseModel

from brokerlink_shared.contracts.events import (
    EVENT_TYPES,
    HealthReply,
    IntegrationTestReply,
    IntegrationTestRequest,
    SchwabAccountNumbersReply,
    SchwabAccountNumbersRequest,
    SchwabOAuthExchangeReply,
    SchwabOAuthExchangeRequest,
)
from brokerlink_shared.subjects import (
    HEALTH,
    INTEGRATION_TEST,
    SCHWAB_ACCOUNT_NUMBERS,
    SCHWAB_OAUTH_EXCHANGE,
    STREAM_OF_FAMILY,
    Topology,
)

PRODUCERS = {
    "integration.configured": ("account-api", ["ib-connector", "schwab-connector"]),
    "integration.removed": ("account-api", ["ib-connector", "schwab-connector"]),
    "refresh.requested": ("account-api", ["ib-connector", "schwab-connector"]),
    "balance.updated": ("ib-connector, schwab-connector", ["account-api"]),
    "refresh.failed": ("ib-connector, schwab-connector", ["account-api"]),
    "integration.status": ("ib-connector, schwab-connector", ["account-api"]),
    "schwab.tokens.rotated": ("schwab-connector", ["account-api"]),
}
REQUESTS: dict[str, tuple[type[BaseModel], type[BaseModel], str]] = {
    INTEGRATION_TEST: (IntegrationTestRequest, IntegrationTestReply, "{broker}"),
    SCHWAB_OAUTH_EXCHANGE: (SchwabOAuthExchangeRequest, SchwabOAuthExchangeReply, ""),
    SCHWAB_ACCOUNT_NUMBERS: (
        SchwabAccountNumbersRequest,
        SchwabAccountNumbersReply,
        "",
    ),
    HEALTH: (BaseModel, HealthReply, "{service}"),
}


def build(namespace: str = "brokerlink") -> dict[str, Any]:
    """The AsyncAPI document as a dict (deterministic: sorted keys when dumped)."""
    topology = Topology(namespace)
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for event_type, model in sorted(EVENT_TYPES.items()):
        name = model.__name__
        schemas[name] = model.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        schemas.update(schemas[name].pop("$defs", {}))
        producer, consumers = PRODUCERS[event_type]
        channel = event_type.replace(".", "_")
        channels[channel] = {
            "address": topology.subject(model.family) + ".{broker}",
            "description": f"JetStream stream {topology.stream_name(STREAM_OF_FAMILY[model.family])}; "
            f"published by {producer}; consumed by {', '.join(consumers)}. Header Nats-Msg-Id de-duplicates.",
            "parameters": {"broker": {"enum": ["ib", "schwab"]}},
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        operations[f"publish_{channel}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": f"{producer} publishes {event_type}",
        }
    messages = {
        name: {"name": name, "payload": {"$ref": f"#/components/schemas/{name}"}}
        for name in sorted(m.__name__ for m in EVENT_TYPES.values())
    }
    for family, (request, reply, suffix) in sorted(REQUESTS.items()):
        channel = family.replace(".", "_")
        address = topology.subject(family) + (f".{suffix}" if suffix else "")
        for part in (m for m in (request, reply) if m is not BaseModel):
            schemas[part.__name__] = part.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            schemas.update(schemas[part.__name__].pop("$defs", {}))
            messages[part.__name__] = {
                "name": part.__name__,
                "payload": {"$ref": f"#/components/schemas/{part.__name__}"},
            }
        channels[channel] = {
            "address": address,
            "description": "core NATS request/reply (not persisted)",
            "messages": {
                m.__name__: {"$ref": f"#/components/messages/{m.__name__}"}
                for m in (request, reply)
                if m is not BaseModel
            },
        }
        operations[f"request_{channel}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel}"},
            "reply": {"channel": {"$ref": f"#/channels/{channel}"}},
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "brokerlink bus",
            "version": "1",
            "description": "Subjects are <namespace>.<family>.<broker>; the default namespace is `brokerlink`.",
        },
        "defaultContentType": "application/json",
        "servers": {"nats": {"host": "localhost:4222", "protocol": "nats"}},
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def render() -> bytes:
    return (
        orjson.dumps(build(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    )


if __name__ == "__main__":
    sys.stdout.buffer.write(render())
