"""API models of the pending-links routes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from account_api.inputs import InputModel

DbId = Annotated[int, Field(ge=1, le=9_223_372_036_854_775_807)]


class PendingLinkOut(BaseModel):
    id: int
    type: str
    kind: Literal["link", "conflict", "quarantine"] = Field(
        description="link: nothing said where it belongs; conflict: it disagrees with an "
        "account's own settings, which were kept; quarantine: malformed, kept so you can act"
    )
    summary: str = Field(
        description="what it is: the IB gateway host:port and client id, or the Schwab login"
    )
    config: dict[str, Any] | None
    reason: str
    suggested_account_ids: list[int] = Field(description="best first")
    verified_account_ids: list[int] = Field(
        description="suggestions the broker confirmed (the Schwab login sees them): safe to preselect"
    )
    legacy_table: str | None
    legacy_id: int | None
    created_at: datetime


class LinkIn(InputModel):
    """One account, or (a Schwab login only) several accounts of that login at once."""

    account_id: DbId | None = None
    account_ids: Annotated[list[DbId], Field(min_length=1, max_length=20)] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> LinkIn:
        if (self.account_id is None) == (self.account_ids is None):
            raise ValueError("give account_id or account_ids, not both")
        return self

    @property
    def targets(self) -> list[int]:
        ids = self.account_ids if self.account_ids is not None else [self.account_id]
        return list(dict.fromkeys(i for i in ids if i is not None))
