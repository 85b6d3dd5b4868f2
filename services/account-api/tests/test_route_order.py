"""The accounts router is matched first (its reads are the hot ones): no route of another router
may be a path the accounts router would take instead."""

from __future__ import annotations

import re

from account_api.accounts.routes import router as accounts_router
from account_api.config import Settings
from account_api.main import create_app
from brokerlink_shared.crypto import generate_key
from fastapi.routing import APIRoute
from starlette.routing import Match


def _example_path(route: APIRoute) -> str:
    """The route's path with every parameter filled in by a plausible value."""
    return re.sub(r"{[^}:]+(:path)?}", "7", route.path)


def _scope(method: str, path: str) -> dict[str, object]:
    return {"type": "http", "method": method, "path": path, "root_path": ""}


def test_no_other_route_is_taken_by_the_accounts_router_that_comes_first() -> None:
    settings = Settings.model_validate(
        {
            "database_url": "postgresql+psycopg://nobody@localhost/none",
            "nats_url": "nats://127.0.0.1:4222",
            "encryption_keys": generate_key(),
            "jwt_secret": "s" * 43,
        }
    )
    app = create_app(settings)
    served = [
        route
        for included in app.router.routes
        for route in getattr(getattr(included, "original_router", None), "routes", ())
        if isinstance(route, APIRoute)
    ]
    accounts = [r for r in accounts_router.routes if isinstance(r, APIRoute)]
    others = [r for r in served if r.endpoint not in {a.endpoint for a in accounts}]
    assert others
    for route in others:
        for method in route.methods or ():
            path = _example_path(route)
            taken = [
                a.path
                for a in accounts
                if a.matches(_scope(method, path))[0] is Match.FULL
            ]
            assert not taken, f"{method} {route.path} would be served by {taken}"
