"""Pure logic, no network: account selection, backoff, session status, failover order, snapshots."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from brokerlink_shared.backoff import Backoff
from brokerlink_shared.contracts.values import IntegrationStatus
from ib_connector.domain.account_claims import (
    TRANSIENT_HOLD_S,
    AccountClaim,
    GatewayHold,
    HoldState,
    claim_key,
    claimed,
    hold_key,
    integration_holder,
    left,
    refused,
    released,
    transient_holder,
)
from ib_connector.domain.accounts import AccountSelectionError, select_account
from ib_connector.domain.endpoints import failover_order
from ib_connector.domain.session_state import (
    Endpoint,
    SessionState,
    StatusView,
    status_for,
)
from ib_connector.domain.snapshot import (
    AccountValueRow,
    Holding,
    IncompleteAccountData,
    build_snapshot,
)

pytestmark = pytest.mark.fast

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


class TestAccountClaims:
    T = 1_800_000_000.0
    A1, A2 = integration_holder(1), integration_holder(2)

    def test_keys_are_keyed_hashes_that_never_show_the_code(self) -> None:
        key = claim_key(b"k" * 32, "U1234567")
        assert key.startswith("a") and len(key) == 41 and "1234567" not in key
        assert claim_key(b"k" * 32, " u1234567 ") == key
        assert claim_key(b"j" * 32, "U1234567") != key  # without the key, no dictionary

    def test_the_last_integration_leaving_keeps_the_hold_unless_its_user_goes(
        self,
    ) -> None:
        hold = GatewayHold(7, "g1", HoldState.HELD, ("a1",), frozenset({self.A1}))
        assert left(hold, self.A1) == GatewayHold(
            7, "g1", HoldState.HELD, ("a1",), frozenset()
        )
        assert left(hold, self.A1, owner_deleted=True).state is HoldState.RELEASING
        both = GatewayHold(
            7, "g1", HoldState.HELD, ("a1",), frozenset({self.A1, self.A2})
        )
        assert left(both, self.A1, owner_deleted=True).state is HoldState.HELD

    def test_a_refused_round_releases_only_the_hold_it_was_claiming(self) -> None:
        claiming = GatewayHold(
            7, "g1", HoldState.CLAIMING, ("a1",), frozenset({self.A1})
        )
        assert (
            refused(claiming, frozenset({self.A1}), "g1").state is HoldState.RELEASING
        )
        both = GatewayHold(
            7, "g1", HoldState.CLAIMING, ("a1",), frozenset({self.A1, self.A2})
        )
        assert refused(both, frozenset({self.A1}), "g1").state is HoldState.CLAIMING
        # proven by another round since, or claimed again by a newer one: left as it is
        held = GatewayHold(7, "g1", HoldState.HELD, ("a1",), frozenset({self.A1}))
        assert refused(held, frozenset({self.A1}), "g1") == held
        assert refused(claiming, frozenset({self.A1}), "g2") == claiming

    def test_a_gateway_hold_is_per_user_and_account_set_and_never_shows_a_code(
        self,
    ) -> None:
        key = hold_key(b"k" * 32, 7, ["U1234567", "U7654321"])
        assert key == hold_key(b"k" * 32, 7, [" u7654321", "U1234567 "])
        assert "1234567" not in key and "7654321" not in key
        assert key != hold_key(b"k" * 32, 8, ["U1234567", "U7654321"])
        assert key != hold_key(b"k" * 32, 7, ["U1234567"])

    def test_the_first_user_claims_and_adds_holders(self) -> None:
        first = claimed(None, 7, frozenset({self.A1}), self.T)
        assert first == AccountClaim(7, frozenset({self.A1}))
        both = claimed(first, 7, frozenset({self.A2}), self.T)
        assert both == AccountClaim(7, frozenset({self.A1, self.A2}))

    def test_another_user_is_refused_while_anything_holds_the_claim(self) -> None:
        held = AccountClaim(7, frozenset({self.A1}))
        assert claimed(held, 8, frozenset({self.A2}), self.T) is None

    def test_released_by_the_last_holder_only(self) -> None:
        both = AccountClaim(7, frozenset({self.A1, self.A2}))
        one = released(both, self.A1, self.T)
        assert one == AccountClaim(7, frozenset({self.A2}))
        assert one is not None and released(one, self.A2, self.T) is None

    def test_a_transient_holder_lets_go_by_itself(self) -> None:
        test = transient_holder(self.T, "n1")
        held = AccountClaim(7, frozenset({test}))
        assert claimed(held, 8, frozenset({self.A2}), self.T + 1) is None
        later = self.T + TRANSIENT_HOLD_S + 1
        assert claimed(held, 8, frozenset({self.A2}), later) == AccountClaim(
            8, frozenset({self.A2})
        )
        # an integration's hold never expires
        kept = AccountClaim(7, frozenset({self.A1, test}))
        assert claimed(kept, 8, frozenset({self.A2}), later) is None
        assert kept.live_holders(later) == {self.A1}


class TestSelectAccount:
    def test_configured_code_wins(self) -> None:
        assert select_account(["U1", "U2"], "U2") == "U2"

    def test_single_managed_account_without_code(self) -> None:
        assert select_account(["U1"], None) == "U1"

    def test_several_accounts_without_code(self) -> None:
        with pytest.raises(
            AccountSelectionError,
            match=r"^gateway manages 2 accounts: set account_code$",
        ):
            select_account(["U1", "U2"], None)

    def test_unknown_code(self) -> None:
        with pytest.raises(AccountSelectionError, match="does not manage U9"):
            select_account(["U1"], "U9")


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    backoff = Backoff(initial_s=1, cap_s=8, uniform=lambda low, high: high)
    assert [backoff.next_delay() for _ in range(6)] == [1, 2, 4, 8, 8, 8]
    backoff.reset()
    assert backoff.next_delay() == 1
    jittered = Backoff(initial_s=1, cap_s=8)
    assert all(0.5 <= jittered.next_delay() <= 8 for _ in range(20))


class TestSessionStatus:
    primary = Endpoint("gw", 4001)

    def connected(self, managed: tuple[str, ...] = ("U1",)) -> SessionState:
        return (
            SessionState()
            .connecting(self.primary)
            .connected(self.primary, managed, NOW)
        )

    def test_nothing_before_the_first_outcome(self) -> None:
        assert status_for(SessionState().connecting(self.primary), None) is None

    def test_connected_and_account_errors_are_per_account(self) -> None:
        state = self.connected(("U1", "U2"))
        ok = status_for(state, "U1")
        assert (
            ok is not None
            and ok.status is IntegrationStatus.CONNECTED
            and ok.last_connected == NOW
        )
        bad = status_for(state, None)
        assert bad is not None and (bad.status, bad.message) == (
            IntegrationStatus.ERROR,
            "gateway manages 2 accounts: set account_code",
        )

    def test_first_connect_failure_is_an_error_with_ib_code(self) -> None:
        view = status_for(SessionState().failed("326", "client id in use"), None)
        assert view == StatusView(IntegrationStatus.ERROR, "326", "client id in use")

    def test_a_dropped_session_stays_disconnected_while_it_retries(self) -> None:
        lost = self.connected().lost("connection closed")
        retrying = lost.connecting(self.primary).failed("502", "refused")
        first, second = status_for(lost, None), status_for(retrying, None)
        assert first is not None and first.status is IntegrationStatus.DISCONNECTED
        assert first.same_as(second)  # no new event per failed retry
        back = status_for(retrying.connected(self.primary, ("U1",), NOW), None)
        assert back is not None and back.status is IntegrationStatus.CONNECTED

    def test_gateway_notices_1100_and_1102(self) -> None:
        down = self.connected().notice(
            1100, "Connectivity between IB and TWS has been lost."
        )
        view = status_for(down, None)
        assert view is not None and (view.status, view.code) == (
            IntegrationStatus.DISCONNECTED,
            "1100",
        )
        assert not down.usable
        up = down.notice(1102, "Connectivity restored - data maintained.")
        view = status_for(up, None)
        assert view is not None and (view.status, view.code) == (
            IntegrationStatus.CONNECTED,
            "1102",
        )
        assert up.usable

    def test_backup_is_named_in_the_message(self) -> None:
        backup = Endpoint("gw2", 4002, backup=True)
        view = status_for(SessionState().connected(backup, ("U1",), NOW), None)
        assert (
            view is not None and view.message == "connected to backup gateway gw2:4002"
        )


def test_failover_order_skips_duplicates_of_the_primary() -> None:
    primary = Endpoint("a", 1)
    order = failover_order(
        primary,
        [Endpoint("a", 1), Endpoint("b", 2), Endpoint("c", 3), Endpoint("b", 2)],
    )
    assert order == [
        primary,
        Endpoint("b", 2, backup=True),
        Endpoint("c", 3, backup=True),
    ]


class TestSnapshot:
    rows = [
        AccountValueRow("NetLiquidation", "1000.50", "BASE"),
        AccountValueRow("NetLiquidation", "1234.56", "EUR"),
        AccountValueRow("TotalCashValue", "200.00", "EUR"),
        AccountValueRow("CashBalance", "200.00", "BASE"),
        AccountValueRow("CashBalance", "150.00", "EUR"),
        AccountValueRow("CashBalance", "60.00", "USD"),
    ]

    def test_balance_in_base_currency_with_cash_per_currency(self) -> None:
        holding = Holding(
            "SAP",
            "STK",
            "EUR",
            Decimal(3),
            Decimal(100),
            Decimal(120),
            Decimal(360),
            Decimal(60),
        )
        closed = Holding("OLD", "STK", "EUR", Decimal(0), None, None, None, None)
        snap = build_snapshot("U1", self.rows, [holding, closed])
        assert (snap.currency, snap.net_liquidation, snap.total_cash) == (
            "EUR",
            Decimal("1234.56"),
            Decimal("200.00"),
        )
        assert [(c.currency, c.amount) for c in snap.cash] == [
            ("EUR", Decimal(150)),
            ("USD", Decimal(60)),
        ]
        assert [p.symbol for p in snap.positions] == ["SAP"]

    def test_missing_net_liquidation(self) -> None:
        with pytest.raises(IncompleteAccountData):
            build_snapshot("U1", [AccountValueRow("CashBalance", "1", "USD")], [])
