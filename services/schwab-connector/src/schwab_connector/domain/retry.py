"""Retry rules for Schwab calls: what is worth retrying and how long to wait."""

from __future__ import annotations

from email.utils import parsedate_to_datetime

from brokerlink_shared.backoff import backoff_delay

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


def is_retryable(status: int) -> bool:
    return status in RETRYABLE_STATUSES or status >= 500


def parse_retry_after(value: str | None, now_epoch: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now_epoch)
    except (TypeError, ValueError):
        return None


def retry_delay(
    attempt: int, retry_after_s: float | None, base_s: float, cap_s: float
) -> float:
    """Honour Retry-After when the server sent one, else capped exponential backoff with jitter."""
    if retry_after_s is not None:
        return retry_after_s
    return backoff_delay(attempt, base=base_s, cap=cap_s) if base_s else 0.0
