"""The web UI: server-rendered page shells plus one JavaScript module and one stylesheet.

Every behaviour goes through the JSON API (the script calls it with the user's bearer token), so
this edge holds no business logic: each route renders a template with static page data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
_static = StaticFiles(directory=HERE / "static")

router = APIRouter(include_in_schema=False)

NAV = (
    ("accounts", "/", "Accounts"),
    ("health", "/health-dashboard", "Integration health"),
    ("security", "/security", "Security"),
)
# Content-Security-Policy: the pages load only their own script and stylesheet; the Schwab
# consent page opens in a popup (a separate document), so nothing else needs allowing.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)


def _page(request: Request, template: str, page: str, title: str) -> HTMLResponse:
    context: dict[str, Any] = {
        "page": page,
        "title": title,
        "nav": [
            {"href": href, "label": label, "current": key == page}
            for key, href, label in NAV
        ],
        "signed_in": page not in ("login", "register"),
    }
    response = templates.TemplateResponse(request, template, context)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/", response_class=HTMLResponse)
async def accounts_page(request: Request) -> HTMLResponse:
    return _page(request, "accounts.html", "accounts", "Accounts")


@router.get("/health-dashboard", response_class=HTMLResponse)
async def health_page(request: Request) -> HTMLResponse:
    return _page(request, "health.html", "health", "Integration health")


@router.get("/security", response_class=HTMLResponse)
async def security_page(request: Request) -> HTMLResponse:
    return _page(request, "security.html", "security", "Security")


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request) -> HTMLResponse:
    return _page(request, "login.html", "login", "Sign in")


@router.get("/register", response_class=HTMLResponse)
async def register_page(request: Request) -> HTMLResponse:
    return _page(request, "register.html", "register", "Create an account")


@router.get("/static/{path:path}")
async def static(path: str, request: Request) -> Response:
    """The UI's own script and stylesheet (served here because the router cannot mount)."""
    return await _static.get_response(path, request.scope)
