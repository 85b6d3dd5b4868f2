"""The HTTP surface: Schwab's OAuth and Trader endpoints, plus the `/admin` JSON API."""

from __future__ import annotations

import asyncio
import base64
import html
import math
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from brokerlink_simulators.schwab_api.scenario import (
    Scenario,
    SimAccount,
    SimApp,
    SimLogin,
    SimPosition,
)
from brokerlink_simulators.schwab_api.state import AccessGrant, Fault, SimulatorState


def _err(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def _trader_error(status: int, title: str, detail: str) -> dict[str, Any]:
    return {
        "errors": [
            {"id": "sim", "status": str(status), "title": title, "detail": detail}
        ]
    }


def _position_json(pos: SimPosition) -> dict[str, Any]:
    value = pos.value()
    long_qty = max(pos.quantity, 0.0)
    short_qty = max(-pos.quantity, 0.0)
    instrument: dict[str, Any] = {
        "assetType": pos.asset_type,
        "symbol": pos.symbol,
        "netChange": 0.0,
    }
    if pos.cusip:
        instrument["cusip"] = pos.cusip
    return {
        "shortQuantity": short_qty,
        "averagePrice": pos.average_price,
        "currentDayProfitLoss": 0.0,
        "currentDayProfitLossPercentage": 0.0,
        "longQuantity": long_qty,
        "settledLongQuantity": long_qty,
        "settledShortQuantity": short_qty,
        "instrument": instrument,
        "marketValue": value,
        "maintenanceRequirement": round(value * 0.25, 2),
        "averageLongPrice": pos.average_price if long_qty else 0.0,
        "averageShortPrice": pos.average_price if short_qty else 0.0,
        "longOpenProfitLoss": round(value - pos.average_price * long_qty, 2)
        if long_qty
        else 0.0,
        "shortOpenProfitLoss": 0.0,
        "previousSessionLongQuantity": long_qty,
        "currentDayCost": 0.0,
    }


def _balances(acc: SimAccount) -> dict[str, Any]:
    long_value = sum(p.value() for p in acc.positions if p.quantity > 0)
    return {
        "accruedInterest": 0.0,
        "cashBalance": acc.cash_balance,
        "cashReceipts": 0.0,
        "longOptionMarketValue": 0.0,
        "liquidationValue": acc.liquidation_value,
        "longMarketValue": long_value,
        "moneyMarketFund": 0.0,
        "savings": 0.0,
        "shortMarketValue": 0.0,
        "pendingDeposits": 0.0,
        "mutualFundValue": 0.0,
        "availableFunds": acc.cash_balance,
        "buyingPower": acc.cash_balance * 2,
        "equity": acc.liquidation_value,
        "equityPercentage": 100.0,
        "longMarginValue": long_value,
        "maintenanceRequirement": 0.0,
        "marginBalance": 0.0,
        "shortBalance": 0.0,
    }


def account_json(acc: SimAccount, with_positions: bool) -> dict[str, Any]:
    """One element of `GET /trader/v1/accounts` as Schwab shapes it."""
    balances = _balances(acc)
    securities: dict[str, Any] = {
        "type": acc.type,
        "accountNumber": acc.account_number,
        "roundTrips": 0,
        "isDayTrader": False,
        "isClosingOnlyRestricted": False,
        "pfcbFlag": False,
    }
    if with_positions:
        securities["positions"] = [_position_json(p) for p in acc.positions]
    securities["initialBalances"] = {**balances, "accountValue": acc.liquidation_value}
    securities["currentBalances"] = balances
    securities["projectedBalances"] = {
        "availableFunds": acc.cash_balance,
        "buyingPower": acc.cash_balance * 2,
    }
    return {
        "securitiesAccount": securities,
        "aggregatedBalance": {
            "currentLiquidationValue": acc.liquidation_value,
            "liquidationValue": acc.liquidation_value,
        },
    }


def _basic_auth(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(value).decode().partition(":")
    except ValueError:
        return None
    return user, password


# ---- admin request bodies -----------------------------------------------------------------


class ClockChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    offset_s: float | None = None
    advance_s: float | None = None


class AccountChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str | None = None
    liquidation_value: float | None = None
    cash_balance: float | None = None
    positions: list[SimPosition] | None = None


class RateLimitChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests_per_minute: int = Field(ge=1)


class Revocation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    app_key: str | None = None
    login_id: str | None = None


class ConsentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    app_key: str
    redirect_uri: str
    state: str | None = None
    login_id: str | None = None


def create_app(state: SimulatorState) -> FastAPI:
    """Build the simulator's FastAPI app around one `SimulatorState`."""
    app = FastAPI(
        title="Schwab API simulator",
        docs_url="/admin/docs",
        openapi_url="/admin/openapi.json",
    )

    async def apply_fault(endpoint: str, app_key: str | None) -> Response | None:
        fault = state.take_fault(endpoint, app_key)
        if fault is None:
            return None
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if fault.status is None:
            return None
        headers = (
            {"Retry-After": str(fault.retry_after_s)}
            if fault.retry_after_s is not None
            else None
        )
        if endpoint == "token":
            body: dict[str, Any] = {
                "error": "server_error"
                if fault.status >= 500
                else "temporarily_unavailable"
            }
        else:
            body = _trader_error(
                fault.status, "Injected fault", "fault injected by the simulator"
            )
        return _err(fault.status, body, headers)

    # ---- OAuth ----------------------------------------------------------------------------

    @app.get("/v1/oauth/authorize", response_class=HTMLResponse)
    async def authorize_page(request: Request) -> Response:
        q = request.query_params
        client_id = q.get("client_id", "")
        fault = await apply_fault("authorize", client_id)
        if fault is not None:
            state.count("authorize", client_id, fault.status_code)
            return fault
        sim_app = state.apps.get(client_id)
        redirect_uri = q.get("redirect_uri")
        if (
            sim_app is None
            or not redirect_uri
            or q.get("response_type", "code") != "code"
        ):
            state.count("authorize", client_id, 400)
            return HTMLResponse(
                "<h1>Invalid request</h1><p>Unknown app key or missing redirect_uri.</p>",
                400,
            )
        state.count("authorize", client_id, 200)
        return HTMLResponse(_consent_page(state, sim_app, redirect_uri, q.get("state")))

    @app.get("/v1/oauth/authorize/consent")
    async def consent(request: Request) -> Response:
        q = request.query_params
        client_id = q.get("client_id", "")
        sim_app = state.apps.get(client_id)
        login_id = q.get("login") or (sim_app.default_login if sim_app else None)
        redirect_uri = q.get("redirect_uri")
        if sim_app is None or not redirect_uri or login_id not in state.logins:
            return HTMLResponse("<h1>Invalid request</h1>", 400)
        return RedirectResponse(
            _redirect_with_code(
                state, client_id, login_id, redirect_uri, q.get("state")
            ),
            302,
        )

    @app.post("/v1/oauth/token")
    async def token(request: Request) -> Response:
        creds = _basic_auth(request)
        app_key = creds[0] if creds else None
        fault = await apply_fault("token", app_key)
        if fault is not None:
            state.count("token", app_key, fault.status_code)
            return fault
        form = dict(parse_qsl((await request.body()).decode()))
        sim_app = state.apps.get(app_key or "")
        if creds is None or sim_app is None or sim_app.app_secret != creds[1]:
            state.count("token", app_key, 401)
            return _err(
                401,
                {"error": "invalid_client", "error_description": "Unauthorized client"},
            )
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            pending = state.redeem_code(
                form.get("code", ""), sim_app.app_key, form.get("redirect_uri")
            )
            if pending is None:
                state.count("token", app_key, 400)
                return _err(
                    400,
                    {
                        "error": "invalid_grant",
                        "error_description": "code unknown, used or expired",
                    },
                )
            body = state.issue_tokens(sim_app.app_key, pending.login_id)
        elif grant_type == "refresh_token":
            refresh = form.get("refresh_token", "")
            grant = state.refresh_tokens.get(refresh)
            if (
                grant is None
                or grant.app_key != sim_app.app_key
                or grant.expires_at <= state.now()
            ):
                state.count("token", app_key, 400)
                return _err(
                    400,
                    {
                        "error": "invalid_grant",
                        "error_description": "refresh token invalid or expired",
                    },
                )
            body = state.issue_tokens(
                sim_app.app_key, grant.login_id, refresh_token=refresh
            )
        else:
            state.count("token", app_key, 400)
            return _err(400, {"error": "unsupported_grant_type"})
        state.count("token", app_key, 200)
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    # ---- Trader API -----------------------------------------------------------------------

    async def trader_gate(
        request: Request, endpoint: str
    ) -> tuple[AccessGrant | None, Response | None]:
        header = request.headers.get("authorization", "")
        scheme, _, token_value = header.partition(" ")
        grant = (
            state.access_tokens.get(token_value) if scheme.lower() == "bearer" else None
        )
        app_key = grant.app_key if grant else None
        fault = await apply_fault(endpoint, app_key)
        if fault is not None:
            state.count(endpoint, app_key, fault.status_code)
            return None, fault
        if grant is not None:
            wait = state.take_rate_slot(grant.app_key)
            if wait is not None:
                state.count(endpoint, app_key, 429)
                body = _trader_error(429, "Too Many Requests", "rate limit exceeded")
                return None, _err(
                    429, body, {"Retry-After": str(max(1, math.ceil(wait)))}
                )
        if grant is None or grant.expires_at <= state.now():
            state.count(endpoint, app_key, 401)
            return None, _err(
                401,
                _trader_error(401, "Unauthorized", "access token invalid or expired"),
            )
        return grant, None  # the endpoint counts its own outcome

    def login_accounts(grant: AccessGrant) -> list[SimAccount]:
        login = state.logins.get(grant.login_id)
        return list(login.accounts) if login else []

    def wants_positions(request: Request) -> bool:
        return "positions" in request.query_params.get("fields", "").split(",")

    @app.get("/trader/v1/accounts/accountNumbers")
    async def account_numbers(request: Request) -> Response:
        grant, denied = await trader_gate(request, "accountNumbers")
        if denied is not None or grant is None:
            return denied or _err(401, {})
        state.count("accountNumbers", grant.app_key, 200)
        return JSONResponse(
            [
                {"accountNumber": a.account_number, "hashValue": a.account_hash()}
                for a in login_accounts(grant)
            ]
        )

    @app.get("/trader/v1/accounts")
    async def accounts(request: Request) -> Response:
        grant, denied = await trader_gate(request, "accounts")
        if denied is not None or grant is None:
            return denied or _err(401, {})
        positions = wants_positions(request)
        state.count("accounts", grant.app_key, 200)
        return JSONResponse([account_json(a, positions) for a in login_accounts(grant)])

    @app.get("/trader/v1/accounts/{account_hash}")
    async def account(account_hash: str, request: Request) -> Response:
        grant, denied = await trader_gate(request, "account")
        if denied is not None or grant is None:
            return denied or _err(401, {})
        for acc in login_accounts(grant):
            if acc.account_hash() == account_hash:
                state.count("account", grant.app_key, 200)
                return JSONResponse(account_json(acc, wants_positions(request)))
        state.count("account", grant.app_key, 404)
        return _err(
            404, _trader_error(404, "Not Found", "no such account for this token")
        )

    app.include_router(_admin_router(state))
    return app


def _redirect_with_code(
    state: SimulatorState,
    app_key: str,
    login_id: str,
    redirect_uri: str,
    oauth_state: str | None,
) -> str:
    code = state.issue_code(app_key, login_id, redirect_uri)
    params = {"code": code, "session": "sim"}
    if oauth_state is not None:
        params["state"] = oauth_state
    sep = "&" if "?" in redirect_uri else "?"
    return f"{redirect_uri}{sep}{urlencode(params)}"


def _consent_page(
    state: SimulatorState, sim_app: SimApp, redirect_uri: str, oauth_state: str | None
) -> str:
    esc = html.escape
    options = "".join(
        f'<option value="{esc(lid)}"{" selected" if lid == sim_app.default_login else ""}>{esc(lid)}</option>'
        for lid in state.logins
    )
    default = sim_app.default_login or next(iter(state.logins), "")
    allow = "/v1/oauth/authorize/consent?" + urlencode(
        {
            "client_id": sim_app.app_key,
            "redirect_uri": redirect_uri,
            "state": oauth_state or "",
            "login": default,
        }
    )
    hidden = "".join(
        f'<input type="hidden" name="{k}" value="{esc(v)}">'
        for k, v in (
            ("client_id", sim_app.app_key),
            ("redirect_uri", redirect_uri),
            ("state", oauth_state or ""),
        )
    )
    return (
        "<!doctype html><html><head><title>Schwab simulator: consent</title></head><body>"
        f"<h1>Allow {esc(sim_app.app_key)} to access your accounts?</h1>"
        f'<form method="get" action="/v1/oauth/authorize/consent">{hidden}'
        f'<label>Schwab login <select name="login">{options}</select></label> '
        '<button type="submit" id="allow">Allow</button></form>'
        f'<p><a id="allow-default" href="{esc(allow)}">Allow as {esc(default)}</a></p>'
        "</body></html>"
    )


def _admin_router(state: SimulatorState) -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"])

    @router.get("/state")
    async def get_state() -> dict[str, Any]:
        return {
            "now": state.now(),
            "clock_offset_s": state.clock_offset_s,
            "requests_per_minute": state.requests_per_minute,
            "apps": [
                {"app_key": a.app_key, "default_login": a.default_login}
                for a in state.apps.values()
            ],
            "logins": [lg.model_dump() for lg in state.logins.values()],
            "faults": [f.model_dump() for f in state.faults],
        }

    @router.post("/reset")
    async def reset(scenario: Scenario | None = None) -> dict[str, Any]:
        state.reset(scenario)
        return {"ok": True}

    @router.get("/clock")
    async def get_clock() -> dict[str, float]:
        return {"now": state.now(), "offset_s": state.clock_offset_s}

    @router.post("/clock")
    async def set_clock(change: ClockChange) -> dict[str, float]:
        if change.offset_s is not None:
            state.clock_offset_s = change.offset_s
        if change.advance_s is not None:
            state.clock_offset_s += change.advance_s
        return {"now": state.now(), "offset_s": state.clock_offset_s}

    @router.post("/apps")
    async def add_app(app: SimApp) -> dict[str, str]:
        state.add_app(app)
        return {"app_key": app.app_key}

    @router.post("/logins")
    async def add_login(login: SimLogin) -> dict[str, Any]:
        state.add_login(login)
        return {
            "login_id": login.login_id,
            "accounts": [a.account_hash() for a in login.accounts],
        }

    @router.post("/logins/{login_id}/accounts")
    async def add_account(login_id: str, account: SimAccount) -> dict[str, str]:
        login = state.logins.get(login_id)
        if login is None:
            raise HTTPException(404, "unknown login")
        login.accounts = [
            a for a in login.accounts if a.account_number != account.account_number
        ] + [account]
        return {
            "account_number": account.account_number,
            "hash_value": account.account_hash(),
        }

    @router.patch("/accounts/{account_number}")
    async def change_account(
        account_number: str, change: AccountChange
    ) -> dict[str, Any]:
        acc = state.find_account(account_number)
        if acc is None:
            raise HTTPException(404, "unknown account")
        for name, value in change.model_dump(exclude_none=True).items():
            setattr(acc, name, getattr(change, name) if name == "positions" else value)
        return acc.model_dump()

    @router.post("/faults")
    async def add_fault(fault: Fault) -> dict[str, int]:
        state.faults.append(fault)
        return {"pending": len(state.faults)}

    @router.delete("/faults")
    async def clear_faults() -> dict[str, int]:
        state.faults.clear()
        return {"pending": 0}

    @router.post("/rate-limit")
    async def set_rate_limit(change: RateLimitChange) -> dict[str, int]:
        state.requests_per_minute = change.requests_per_minute
        return {"requests_per_minute": state.requests_per_minute}

    @router.post("/tokens/revoke")
    async def revoke(revocation: Revocation) -> dict[str, int]:
        return {"revoked": state.revoke(revocation.app_key, revocation.login_id)}

    @router.post("/consent")
    async def consent(request: ConsentRequest) -> dict[str, str]:
        """Skip the HTML page: consent as a login and get the redirect URL with the code."""
        sim_app = state.apps.get(request.app_key)
        login_id = request.login_id or (sim_app.default_login if sim_app else None)
        if sim_app is None or login_id not in state.logins or login_id is None:
            raise HTTPException(404, "unknown app key or login")
        url = _redirect_with_code(
            state, request.app_key, login_id, request.redirect_uri, request.state
        )
        code = dict(parse_qsl(url.split("?", 1)[1]))["code"]
        return {"redirect_url": url, "code": code}

    @router.get("/counters")
    async def counters() -> dict[str, object]:
        return state.counters()

    @router.post("/counters/reset")
    async def reset_counters() -> dict[str, bool]:
        state.reset_counters()
        return {"ok": True}

    return router
