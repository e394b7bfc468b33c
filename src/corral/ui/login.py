"""Signing in to the dashboard and out of it.

- ``GET /ui/login`` shows the form (paste an API key once); ``POST`` checks the
  key and answers with the session cookie. The form itself is CSRF-protected
  by a random value in a short cookie that only this page's form repeats.
- ``POST /ui/login-links`` (an API key in the header, as the CLI sends it)
  makes a one-time link valid for ``LINK_SECONDS``; ``GET /ui/login/{token}``
  spends it. ``corral ui`` opens the browser on it.
- ``POST /ui/logout`` ends the browser session."""

from __future__ import annotations

import secrets
import time
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from corral import auth
from corral.api.deps import Svc, principal
from corral.auth import permits
from corral.errors import Forbidden, Unauthorized
from corral.ui import web

router = APIRouter(include_in_schema=False)

LOGIN_COOKIE = "corral_login"
LINK_SECONDS = 60
# Links spent on this replica, until they expire anyway (`corral ui` talks to
# the server on this machine, so one replica's memory is the right place).
_spent: dict[str, float] = {}


def _next(raw: str | None) -> str:
    return raw if raw and raw.startswith("/ui/") and not raw.startswith("//") else "/ui/jobs"


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _signed_in(request: Request, response: Response, svc: Svc, key_id: str) -> Response:
    ttl = svc.settings.ui_session_ttl
    response.set_cookie(
        auth.SESSION_COOKIE,
        auth.issue_browser_session(key_id, svc.browser_secret, ttl),
        max_age=int(ttl),
        path="/",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    response.delete_cookie(LOGIN_COOKIE, path="/ui/login")
    return response


@router.get("/ui/login", response_model=None)
async def login_form(request: Request, next: str | None = None) -> Response:
    if await web.viewer(request) is not None:
        return RedirectResponse(_next(next), status_code=303)
    svc = web.services(request)
    nonce = secrets.token_urlsafe(16)
    page = await web.render(
        request,
        "login.html",
        None,
        next=_next(next),
        csrf=auth.seal(svc.browser_secret, "login", {"n": nonce, "exp": int(time.time()) + 3600}),
    )
    page.set_cookie(
        LOGIN_COOKIE,
        nonce,
        max_age=3600,
        path="/ui/login",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    return page


@router.post("/ui/login", response_model=None)
async def login(request: Request, svc: Svc) -> Response:
    fields = await web.form(request)
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    try:
        claims = auth.unseal(svc.browser_secret, "login", fields.get("csrf", ""))
    except Unauthorized:
        claims = {}
    if not nonce or not secrets.compare_digest(str(claims.get("n", "")), nonce):
        raise Forbidden("missing or wrong CSRF token: reload the sign-in page")
    nxt = _next(fields.get("next"))
    try:
        who = await svc.authenticate(fields.get("key", "").strip())
        if not permits(who.role, "read"):
            raise Forbidden(f"a {who.role.value} key cannot sign in to the dashboard")
    except (Unauthorized, Forbidden) as exc:
        return RedirectResponse(
            f"/ui/login?next={quote(nxt)}&error={quote(exc.message)}", status_code=303
        )
    return _signed_in(request, RedirectResponse(nxt, status_code=303), svc, who.key_id)


@router.post("/ui/login-links")
async def login_link(request: Request, svc: Svc) -> dict[str, Any]:
    """A one-time sign-in link for the key in the Authorization header."""
    who = await principal(request)  # a POST: the key in the header, never a cookie
    who.require("read")
    token = auth.seal(
        svc.browser_secret,
        "login-link",
        {"k": who.key_id, "n": secrets.token_urlsafe(12), "exp": int(time.time()) + LINK_SECONDS},
    )
    return {"path": f"/ui/login/{token}", "expires_in": LINK_SECONDS}


@router.get("/ui/login/{token}", response_model=None)
async def spend_link(token: str, request: Request, svc: Svc) -> Response:
    try:
        claims = auth.unseal(svc.browser_secret, "login-link", token)
        now = time.time()
        for n, until in list(_spent.items()):
            if until < now:
                del _spent[n]
        nonce = str(claims.get("n", ""))
        if not nonce or nonce in _spent:
            raise Unauthorized("this sign-in link was used already: run `corral ui` again")
        _spent[nonce] = float(claims["exp"])
        who = await svc.store.keys.principal(str(claims.get("k", "")))
    except Unauthorized as exc:
        return RedirectResponse(f"/ui/login?error={quote(exc.message)}", status_code=303)
    # An HTML hop, not a redirect: the SameSite=Strict cookie is then sent by
    # a navigation this site starts, whoever opened the link.
    page = HTMLResponse(
        '<!doctype html><meta http-equiv="refresh" content="0;url=/ui/jobs">'
        '<title>corral</title><a href="/ui/jobs">Continue to the dashboard</a>',
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )
    return _signed_in(request, page, svc, who.key_id)


@router.post("/ui/logout", response_model=None)
async def logout(request: Request) -> Response:
    who = await web.viewer(request)
    if who is not None:
        await web.writer(request, "read")
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(auth.SESSION_COOKIE, path="/")
    return response
