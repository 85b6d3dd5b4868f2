"""The web UI's pages and static files, served by the real app (no browser needed)."""

from __future__ import annotations

import re

import httpx
import pytest

PAGES = {
    "/": "accounts",
    "/login": "login",
    "/register": "register",
    "/health-dashboard": "health",
    "/security": "security",
}


@pytest.mark.parametrize(("path", "page"), PAGES.items())
async def test_page_shell_renders(
    client: httpx.AsyncClient, path: str, page: str
) -> None:
    r = await client.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert f'data-page="{page}"' in r.text
    assert '<script type="module" src="/static/app.js">' in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["cache-control"] == "no-store"


async def test_every_input_has_a_bound_label(client: httpx.AsyncClient) -> None:
    for path in ("/", "/login", "/register", "/security"):
        html = (await client.get(path)).text
        ids = re.findall(r"<(?:input|select)[^>]*\bid=\"([^\"]+)\"", html)
        labelled = set(re.findall(r'<label for="([^"]+)"', html))
        assert ids, path
        assert set(ids) <= labelled, (path, set(ids) - labelled)


async def test_dialog_has_aria_tabs(client: httpx.AsyncClient) -> None:
    html = (await client.get("/")).text
    assert '<dialog id="account-dialog"' in html
    assert 'role="tablist"' in html
    for name in ("details", "integration", "history", "audit"):
        assert f'id="tab-{name}" aria-controls="panel-{name}"' in html
        assert f'role="tabpanel" id="panel-{name}" aria-labelledby="tab-{name}"' in html
    assert 'id="ib-read-only" name="read_only" type="checkbox" checked disabled' in html
    assert 'id="schwab-app-secret" name="app_secret" type="password"' in html


async def test_nav_marks_the_current_page(client: httpx.AsyncClient) -> None:
    html = (await client.get("/health-dashboard")).text
    assert '<a href="/health-dashboard" aria-current="page">' in html
    assert '<a href="/" aria-current' not in html
    assert "Sign out" not in (await client.get("/login")).text


@pytest.mark.parametrize(
    ("path", "kind", "marker"),
    [
        ("/static/app.js", "javascript", "export function lineChart"),
        ("/static/words.js", "javascript", "export function syncSummary"),
        ("/static/app.css", "text/css", ":focus-visible"),
    ],
)
async def test_static_files_served(
    client: httpx.AsyncClient, path: str, kind: str, marker: str
) -> None:
    r = await client.get(path)
    assert r.status_code == 200
    assert kind in r.headers["content-type"]
    assert marker in r.text
    again = await client.get(path, headers={"if-none-match": r.headers["etag"]})
    assert again.status_code == 304


@pytest.mark.parametrize(
    "path", ["/static/nope.js", "/static/../routes.py", "/static/%2e%2e/routes.py"]
)
async def test_static_never_leaves_its_folder(
    client: httpx.AsyncClient, path: str
) -> None:
    r = await client.get(path)
    assert r.status_code == 404


async def test_pages_are_not_in_the_openapi_schema(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert not {"/", "/login", "/register", "/health-dashboard"} & set(paths)
    assert not any(p.startswith("/static") for p in paths)
