from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from account_api.accounts.schemas import HistoryRowOut, Money


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class HistoryIn(_In):
    date: dt.date
    balance: Money
    note: Annotated[str, Field(max_length=1000)] | None = None


class HistoryUpdate(_In):
    date: dt.date | None = None
    balance: Money | None = None
    note: Annotated[str, Field(max_length=1000)] | None = None


class HistoryOut(HistoryRowOut):
    model_config = ConfigDict(from_attributes=True)
