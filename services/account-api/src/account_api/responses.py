"""`JSONBytes`: orjson rendering for hot read paths (Decimal as string, like pydantic's JSON)."""

from __future__ import annotations

from typing import Any

from fastapi.responses import Response

from account_api.json_values import dumps


class JSONBytes(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)
