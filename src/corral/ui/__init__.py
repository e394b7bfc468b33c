"""The dashboard: server-rendered pages at ``/ui`` (Jinja2) with a small
hand-written ES module for the live parts, every asset served from the
package (no CDN, nothing fetched at run time).

Sign-in turns an API key into a signed, expiring, HttpOnly, SameSite=Strict
cookie (``auth.issue_browser_session``). The cookie is a credential for reads
only, on the pages and on the API's GET routes (so the page's EventSource
follows the existing SSE feeds); every write from a browser is a form POST
under ``/ui`` carrying the session's CSRF token. The key's role decides what
a page offers and, again, what a POST may do."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.staticfiles import StaticFiles

from corral.ui import actions, login, pages

STATIC = Path(__file__).parent / "static"


def install(app: FastAPI) -> None:
    """Mount the dashboard on ``app``: pages, actions, sign-in, assets, and
    ``/`` leading to it."""
    from corral.api.app import include

    for module in (login, pages, actions):
        include(app, module.router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)
