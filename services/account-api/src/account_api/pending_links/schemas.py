"""API models of the pending-links routes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class PendingLinkOut(BaseModel):
    id: int
    type: str
    config: dict[str, Any] | None
    reason: str
    suggested_account_ids: list[int]
    legacy_table: str | None
    legacy_id: int | None
    created_at: datetime


class LinkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    account_id: int = Field(ge=1, le=9_223_372_036_854_775_807)
