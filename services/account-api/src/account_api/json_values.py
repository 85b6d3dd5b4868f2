"""Decimal as a JSON string (as pydantic writes it), for orjson, which has no Decimal."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson


def decimal_as_text(value: Any) -> Any:
    """orjson's `default`: a Decimal becomes its exact text; anything else unknown is an error."""
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=decimal_as_text)
