"""OpenEnv's web interface: an interactive page at ``/web/`` and a redirect to it from ``/``.

The page is one static HTML file with inline JS and CSS. It builds its action form from
``GET /schema`` and plays a session of its own over ``/ws``, exactly as any other client.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, RedirectResponse

WEB_INTERFACE_ENV_VAR = "ENABLE_WEB_INTERFACE"
PAGE = "static/web.html"


def web_interface_enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``ENABLE_WEB_INTERFACE`` asks for the page (``1``, ``true`` or ``yes``)."""
    return environ.get(WEB_INTERFACE_ENV_VAR, "").lower() in ("1", "true", "yes")


def web_router() -> APIRouter:
    """``GET /web/`` (the page) and redirects to it from ``/`` and ``/web``."""
    page = files("openenv_zmq.gateway").joinpath(PAGE).read_text(encoding="utf-8")
    router = APIRouter()

    # The page finds /schema and /ws relative to /web/, so it must be served with the slash.
    @router.get("/", include_in_schema=False)
    @router.get("/web", include_in_schema=False)
    async def to_page() -> RedirectResponse:
        return RedirectResponse("/web/")

    @router.get("/web/", response_class=HTMLResponse, include_in_schema=False)
    async def web_page() -> HTMLResponse:
        return HTMLResponse(page)

    return router
