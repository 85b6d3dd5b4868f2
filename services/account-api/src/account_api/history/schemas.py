from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import ConfigDict, Field

from account_api.accounts.schemas import HistoryRowOut, Money
from account_api.inputs import InputModel


class HistoryIn(InputModel):
    date: dt.date
    balance: Money
    note: Annotated[str, Field(max_length=1000)] | None = None


class HistoryUpdate(InputModel):
    date: dt.date | None = None
    balance: Money | None = None
    note: Annotated[str, Field(max_length=1000)] | None = None


class HistoryOut(HistoryRowOut):
    model_config = ConfigDict(from_attributes=True)
