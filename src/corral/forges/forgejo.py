"""Forgejo and Gitea ``/api/v1`` (``base_url`` is the instance, e.g.
``https://codeberg.org``).

Wire format as documented (the instance's ``/api/swagger``): ``Authorization:
token <token>``; ``GET /repos/{o}/{r}/issues?state=all&labels=&since=
&type=issues&limit=50&page=`` (pages through ``Link``, ``X-Total-Count``);
``GET /repos/{o}/{r}/issues/comments?since=`` (``issue_url`` is the issue's
page, ending in its number); labels are added by id — ``POST
.../issues/{n}/labels`` ``{"labels": [ids]}``, ``DELETE
.../issues/{n}/labels/{id}`` — so names are looked up (``GET
/repos/{o}/{r}/labels``) and created when missing (``POST /repos/{o}/{r}/labels``
``{name, color}``); ``GET /repos/{o}/{r}/pulls?state=all`` and ``POST
/repos/{o}/{r}/pulls`` ``{title, head, base, body}`` (no draft flag: a draft
is a title starting with ``WIP:``). Webhook deliveries carry
``X-Gitea-Event`` (Forgejo also ``X-Forgejo-Event``) and
``X-Gitea-Signature`` / ``X-Forgejo-Signature``: the hex HMAC-SHA256 of the body."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from corral.forges.base import Forge, ForgeError, Listing

LABEL_COLOR = "#ededed"


class Forgejo(Forge):
    kind = "forgejo"
    signature_headers = ("X-Forgejo-Signature", "X-Gitea-Signature")
    event_headers = ("X-Forgejo-Event", "X-Gitea-Event")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._label_ids: dict[str, dict[str, int]] = {}

    def api_base(self, base: str) -> str:
        return base if base.endswith("/api/v1") else base + "/api/v1"

    def extra_headers(self) -> dict[str, str]:
        return {"Accept": "application/json"}

    def auth(self, token: str) -> dict[str, str]:
        return {"Authorization": f"token {token}"}

    def page_params(self) -> dict[str, Any]:
        return {"limit": 50}

    async def issues(self, repo: str, *, label: str | None, since: str | None) -> Listing:
        params: dict[str, Any] = {"state": "all", "type": "issues", "limit": 50}
        if label:
            params["labels"] = label
        if since:
            params["since"] = since
        listing = await self.listing(f"/repos/{repo}/issues", params)
        issues = [self.to_issue(repo, i) for i in listing.items]
        return Listing([i for i in issues if not i.is_pull], listing.not_modified)

    async def comments(self, repo: str, *, since: str | None) -> Listing:
        params: dict[str, Any] = {"limit": 50}
        if since:
            params["since"] = since
        listing = await self.listing(f"/repos/{repo}/issues/comments", params)
        return Listing([self.to_comment(repo, c) for c in listing.items], listing.not_modified)

    async def _label_id(self, repo: str, name: str, *, create: bool) -> int | None:
        known = self._label_ids.get(repo)
        if known is None or (name not in known and create):
            listing = await self.listing(f"/repos/{repo}/labels", {"limit": 50})
            known = {str(label["name"]): int(label["id"]) for label in listing.items}
            self._label_ids[repo] = known
        if name not in known and create:
            resp = await self.request(
                "POST", f"/repos/{repo}/labels", json={"name": name, "color": LABEL_COLOR}
            )
            known[name] = int(resp.json()["id"])
        return known.get(name)

    async def add_labels(self, repo: str, number: int, names: list[str]) -> None:
        ids = [await self._label_id(repo, n, create=True) for n in names]
        await self.request("POST", f"/repos/{repo}/issues/{number}/labels", json={"labels": ids})

    async def remove_label(self, repo: str, number: int, name: str) -> None:
        label = await self._label_id(repo, name, create=False)
        if label is None:
            return
        try:
            await self.request("DELETE", f"/repos/{repo}/issues/{number}/labels/{label}")
        except ForgeError as exc:
            if exc.status != 404:
                raise

    async def find_pull(self, repo: str, branch: str) -> str | None:
        listing = await self.listing(f"/repos/{repo}/pulls", {"state": "all", "limit": 50})
        for pull in listing.items:
            if (pull.get("head") or {}).get("ref") == branch:
                return str(pull.get("html_url") or "")
        return None

    async def open_pull(
        self, repo: str, *, branch: str, base: str, title: str, body: str, draft: bool
    ) -> str:
        resp = await self.request(
            "POST",
            f"/repos/{repo}/pulls",
            json={
                "title": f"WIP: {title}" if draft else title,
                "head": branch,
                "base": base,
                "body": body,
            },
        )
        return str(resp.json().get("html_url") or "")

    @classmethod
    def sign(cls, secret: str, body: bytes) -> dict[str, str]:
        digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return {"X-Gitea-Signature": digest}
