"""`corral ui`: open the dashboard in a browser, already signed in."""

from __future__ import annotations

import webbrowser
from typing import Annotated

import typer

from corral.cli.common import ServerOpt, TokenOpt, console, err


def ui(
    server: ServerOpt = None,
    token: TokenOpt = None,
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="Print the link; open no browser.")
    ] = False,
) -> None:
    """Open the dashboard signed in with your key (the local admin key by
    default): a one-time link, valid for a minute."""
    import httpx

    from corral.client.base import Unreachable, raise_for, resolve

    url, key = resolve(server, token)
    try:
        resp = httpx.post(
            f"{url}/ui/login-links", headers={"Authorization": f"Bearer {key}"}, timeout=10
        )
    except httpx.HTTPError as exc:
        raise Unreachable(url, exc) from exc
    raise_for(resp)
    link = url + resp.json()["path"]
    if no_browser or not webbrowser.open(link):
        if not no_browser:
            err.print("no browser to open here; open this link (valid for a minute, once):")
        console.print(link, markup=False)
        return
    console.print(f"Opened the dashboard: {url}/ui/", markup=False)
