from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class AuditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    actor: str
    account_id: int | None
    action: str
    changed_fields: list[str]
    request_id: str | None
    detail: dict[str, Any] | None
