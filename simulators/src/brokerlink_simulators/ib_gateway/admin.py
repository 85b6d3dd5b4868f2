"""The simulator's JSON-over-HTTP admin API (documented in simulators/README.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, status
from pydantic import BaseModel, Field

from brokerlink_simulators.ib_gateway.scenario import (
    AccountSpec,
    AccountValuesPatch,
    FaultPatch,
    GatewaySpec,
    PositionSpec,
)
from brokerlink_simulators.ib_gateway.server import GatewayCounters, SimulatedGateway

if TYPE_CHECKING:
    from brokerlink_simulators.ib_gateway.simulator import IBGatewaySimulator


class RestartRequest(BaseModel):
    down_for_s: float = Field(default=0.0, ge=0, le=3600)


class ErrorBroadcast(BaseModel):
    code: int = Field(description="e.g. 1100 connectivity lost, 1102 restored")
    text: str = ""


def create_admin_app(sim: IBGatewaySimulator) -> FastAPI:
    """Build the admin app over a running simulator."""
    app = FastAPI(title="IB Gateway simulator admin", version="1")

    def gateway(name: str) -> SimulatedGateway:
        try:
            return sim.gateway(name)
        except KeyError:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, f"no gateway {name!r}"
            ) from None

    def account(gw: SimulatedGateway, code: str) -> AccountSpec:
        try:
            return gw.accounts[code]
        except KeyError:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                f"gateway {gw.name!r} has no account {code!r}",
            ) from None

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "gateways": sim.ports()}

    @app.get("/gateways")
    async def list_gateways() -> dict[str, Any]:
        return {name: gw.describe() for name, gw in sim.gateways.items()}

    @app.post("/gateways", status_code=status.HTTP_201_CREATED)
    async def add_gateway(spec: GatewaySpec) -> dict[str, Any]:
        if spec.name in sim.gateways:
            raise HTTPException(
                status.HTTP_409_CONFLICT, f"gateway {spec.name!r} exists"
            )
        try:
            gw = await sim.add_gateway(spec)
        except OSError as exc:
            raise HTTPException(
                status.HTTP_409_CONFLICT, f"cannot listen on port {spec.port}: {exc}"
            ) from None
        return {"name": gw.name, "port": gw.port}

    @app.get("/gateways/{name}")
    async def get_gateway(name: str) -> dict[str, Any]:
        return gateway(name).describe()

    @app.delete("/gateways/{name}", status_code=status.HTTP_204_NO_CONTENT)
    async def remove_gateway(name: str) -> None:
        gateway(name)
        await sim.remove_gateway(name)

    @app.put("/gateways/{name}/accounts")
    async def set_accounts(name: str, accounts: list[AccountSpec]) -> dict[str, Any]:
        if not accounts:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_ENTITY,
                "a gateway must manage at least one account",
            )
        gw = gateway(name)
        gw.set_accounts(accounts)
        return gw.describe()

    @app.put("/gateways/{name}/accounts/{code}")
    async def put_account(name: str, code: str, spec: AccountSpec) -> dict[str, Any]:
        if spec.code != code:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_ENTITY,
                "code in the path and the body differ",
            )
        gateway(name).put_account(spec)
        return spec.model_dump(mode="json")

    @app.patch("/gateways/{name}/accounts/{code}")
    async def patch_account(
        name: str, code: str, patch: AccountValuesPatch
    ) -> dict[str, Any]:
        gw = gateway(name)
        account(gw, code)
        return gw.patch_account(code, patch).model_dump(mode="json")

    @app.put("/gateways/{name}/accounts/{code}/positions")
    async def put_positions(
        name: str, code: str, positions: list[PositionSpec]
    ) -> dict[str, Any]:
        gw = gateway(name)
        account(gw, code)
        return gw.patch_account(
            code, AccountValuesPatch(positions=positions)
        ).model_dump(mode="json")

    @app.delete(
        "/gateways/{name}/accounts/{code}", status_code=status.HTTP_204_NO_CONTENT
    )
    async def remove_account(name: str, code: str) -> None:
        gw = gateway(name)
        account(gw, code)
        try:
            gw.remove_account(code)
        except ValueError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None

    @app.patch("/gateways/{name}/faults")
    async def set_faults(name: str, patch: FaultPatch) -> dict[str, Any]:
        gw = gateway(name)
        await gw.apply_faults(patch)
        return gw.describe()

    @app.post("/gateways/{name}/restart")
    async def restart(name: str, body: RestartRequest | None = None) -> dict[str, Any]:
        dropped = await gateway(name).restart((body or RestartRequest()).down_for_s)
        return {"dropped": dropped}

    @app.post("/gateways/{name}/errors")
    async def broadcast_error(name: str, body: ErrorBroadcast) -> dict[str, Any]:
        return {"sent": gateway(name).broadcast_error(body.code, body.text)}

    @app.get("/gateways/{name}/counters")
    async def gateway_counters(name: str) -> dict[str, Any]:
        return gateway(name).counters_dict()

    @app.get("/counters")
    async def counters() -> dict[str, Any]:
        return sim.counters()

    @app.post("/counters/reset", status_code=status.HTTP_204_NO_CONTENT)
    async def reset_counters() -> None:
        for gw in sim.gateways.values():
            gw.counters = GatewayCounters()

    return app
