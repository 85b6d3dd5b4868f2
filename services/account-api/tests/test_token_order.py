"""account-api orders Schwab tokens by the connector's rule: refresh expiry, then access expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from account_api.integrations.lifecycle import token_is_newer

T0 = datetime(2026, 12, 1, tzinfo=UTC)
H = timedelta(hours=1)


def test_a_later_login_beats_a_later_access_token_of_an_older_login() -> None:
    new_consent = (T0 + 7 * 24 * H + 5 * H, T0 + 5.5 * H)
    old_login_refreshed = (T0 + 7 * 24 * H, T0 + 6 * H)  # refreshed after the consent
    assert not token_is_newer(old_login_refreshed, new_consent)
    assert token_is_newer(new_consent, old_login_refreshed)


def test_within_one_login_the_later_access_token_wins_and_unknown_is_oldest() -> None:
    refresh = T0 + 7 * 24 * H
    assert token_is_newer((refresh, T0 + 2 * H), (refresh, T0 + H))
    assert not token_is_newer((refresh, T0 + H), (refresh, T0 + H))
    assert token_is_newer((refresh, T0), (None, None))
