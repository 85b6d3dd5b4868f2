"""Server-rendered web UI (filled by the UI feature)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
async def index() -> str:
    return "<!doctype html><title>brokerlink</title><h1>brokerlink</h1><p>API at <a href='/docs'>/docs</a></p>"
