"""`IntegrationService`: the integration use cases, one object per use case, built once by the
composition root. Configure/remove/test in `configuration`, refreshes and jobs in `refreshes`,
the Schwab OAuth flow in `oauth`, read models in `reads`; state changes in `lifecycle`."""

from __future__ import annotations

from dataclasses import dataclass

from brokerlink_shared.crypto import SecretBox
from brokerlink_shared.subjects import Topology
from faststream.nats import NatsBroker

from account_api.config import Settings
from account_api.integrations.configuration import IntegrationConfiguration
from account_api.integrations.oauth import SchwabOAuthFlow
from account_api.integrations.reads import IntegrationReads
from account_api.integrations.refreshes import RefreshService
from account_api.integrations.waiter import RefreshWaiter


@dataclass(frozen=True, slots=True)
class IntegrationService:
    configuration: IntegrationConfiguration
    refreshes: RefreshService
    oauth: SchwabOAuthFlow
    reads: IntegrationReads

    @classmethod
    def build(
        cls,
        settings: Settings,
        secrets: SecretBox,
        broker: NatsBroker,
        topology: Topology,
        waiter: RefreshWaiter,
    ) -> IntegrationService:
        refreshes = RefreshService(settings, waiter)
        return cls(
            configuration=IntegrationConfiguration(
                settings, secrets, broker, topology, refreshes
            ),
            refreshes=refreshes,
            oauth=SchwabOAuthFlow(settings, secrets, broker, topology, refreshes),
            reads=IntegrationReads(),
        )
