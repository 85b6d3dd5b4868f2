"""The HTTP surface: IB's two Flex Web Service endpoints (GET or POST, `t`/`q`/`v` parameters)
and a small `/admin` JSON API (counters; token and query changes at run time)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict

from brokerlink_simulators.ib_flex.state import FlexState

BASE_PATH = "/AccountManagement/FlexWebService"


class TokenPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    expired: bool | None = None
    expires_in_days: int | None = None


class QueryPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sections: list[str] | None = None
    not_ready_polls: int | None = None


def _xml(body: bytes) -> Response:
    return Response(body, media_type="text/xml")


async def _params(request: Request) -> dict[str, str]:
    params = dict(request.query_params)
    if request.method == "POST":
        form = await request.form()
        params.update({k: str(v) for k, v in form.items()})
    return params


def create_app(state: FlexState) -> FastAPI:
    app = FastAPI(title="IB Flex Web Service simulator", docs_url=None, redoc_url=None)

    @app.api_route(f"{BASE_PATH}/SendRequest", methods=["GET", "POST"])
    async def send_request(request: Request) -> Response:
        p = await _params(request)
        url = str(request.url_for("get_statement"))
        return _xml(state.send_request(p.get("t", ""), p.get("q", ""), url))

    @app.api_route(
        f"{BASE_PATH}/GetStatement", methods=["GET", "POST"], name="get_statement"
    )
    async def get_statement(request: Request) -> Response:
        p = await _params(request)
        return _xml(state.get_statement(p.get("t", ""), p.get("q", "")))

    @app.get("/admin/counters")
    async def counters() -> dict[str, Any]:
        window = state.scenario.limits.window_s
        return {
            token: {
                "requests": c.requests,
                "throttled": c.throttled,
                "send_requests": c.send_requests,
                "statements": c.statements,
                "max_in_window": c.max_in_window(window),
                "min_gap_s": c.min_gap(),
            }
            for token, c in state.counters.items()
        }

    @app.patch("/admin/tokens/{token}")
    async def patch_token(token: str, patch: TokenPatch) -> dict[str, Any]:
        known = state.token(token)
        if known is None:
            raise HTTPException(404, "no such token")
        for key, value in patch.model_dump(exclude_unset=True).items():
            setattr(known, key, value)
        return known.model_dump()

    @app.patch("/admin/queries/{query_id}")
    async def patch_query(query_id: str, patch: QueryPatch) -> dict[str, Any]:
        query = state.query(query_id)
        if query is None:
            raise HTTPException(404, "no such query")
        for key, value in patch.model_dump(exclude_unset=True).items():
            setattr(query, key, value)
        return query.model_dump()

    return app
