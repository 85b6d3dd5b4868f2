"""Commands one IB connector replica forwards to the replica that owns a gateway session
(core NATS request/reply on a per-replica subject), and the
reply. The wire form is `{"kind": ..., "data": <the original event or request>}`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from brokerlink_shared.contracts.events import (
    IntegrationConfigured,
    IntegrationRemoved,
    IntegrationTestReply,
    IntegrationTestRequest,
    RefreshRequested,
)
from brokerlink_shared.contracts.values import Strict


class ForwardedRefresh(Strict):
    kind: Literal["refresh"] = "refresh"
    data: RefreshRequested


class ForwardedConfigured(Strict):
    kind: Literal["configured"] = "configured"
    data: IntegrationConfigured


class ForwardedRemoved(Strict):
    kind: Literal["removed"] = "removed"
    data: IntegrationRemoved


class ForwardedTest(Strict):
    kind: Literal["test"] = "test"
    data: IntegrationTestRequest


ForwardedCommand = Annotated[
    ForwardedRefresh | ForwardedConfigured | ForwardedRemoved | ForwardedTest,
    Field(discriminator="kind"),
]
FORWARDED_COMMAND: TypeAdapter[ForwardedCommand] = TypeAdapter(ForwardedCommand)


class ForwardReply(Strict):
    """The owner's answer: `ok`, else why not; a forwarded test carries its result."""

    ok: bool
    error: str | None = None
    result: IntegrationTestReply | None = None
