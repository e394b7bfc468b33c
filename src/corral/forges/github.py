"""GitHub REST v3 (``https://api.github.com``, or GitHub Enterprise's
``https://HOST/api/v3`` as ``base_url``).

Wire format as documented (docs.github.com/rest, API version 2022-11-28):
``GET /repos/{o}/{r}/issues?labels=&state=all&since=&sort=updated&direction=asc
&per_page=100`` lists issues and pull requests (a pull request has a
``pull_request`` key); ``GET /repos/{o}/{r}/issues/comments?since=`` the
comments of a repository (each with ``issue_url`` ending in the number);
``POST .../issues/{n}/labels`` takes ``{"labels": [names]}`` (a missing label
is created), ``DELETE .../issues/{n}/labels/{name}`` removes one (404 when it
is not there); ``GET /repos/{o}/{r}/pulls?head=owner:branch&state=all`` and
``POST /repos/{o}/{r}/pulls`` ``{title, head, base, body, draft}``. Webhook
deliveries carry ``X-GitHub-Event`` and ``X-Hub-Signature-256: sha256=<hex
HMAC-SHA256 of the body>``."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from corral.forges.base import Forge, ForgeError, Listing, quoted


class GitHub(Forge):
    kind = "github"
    default_base = "https://api.github.com"
    signature_headers = ("X-Hub-Signature-256",)
    event_headers = ("X-GitHub-Event",)

    def extra_headers(self) -> dict[str, str]:
        return {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}

    def auth(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def issues(self, repo: str, *, label: str | None, since: str | None) -> Listing:
        params: dict[str, Any] = {
            "state": "all",
            "sort": "updated",
            "direction": "asc",
            "per_page": 100,
        }
        if label:
            params["labels"] = label
        if since:
            params["since"] = since
        listing = await self.listing(f"/repos/{repo}/issues", params)
        issues = [self.to_issue(repo, i) for i in listing.items]
        return Listing([i for i in issues if not i.is_pull], listing.not_modified)

    async def comments(self, repo: str, *, since: str | None) -> Listing:
        params: dict[str, Any] = {"sort": "updated", "direction": "asc", "per_page": 100}
        if since:
            params["since"] = since
        listing = await self.listing(f"/repos/{repo}/issues/comments", params)
        return Listing([self.to_comment(repo, c) for c in listing.items], listing.not_modified)

    async def add_labels(self, repo: str, number: int, names: list[str]) -> None:
        await self.request("POST", f"/repos/{repo}/issues/{number}/labels", json={"labels": names})

    async def remove_label(self, repo: str, number: int, name: str) -> None:
        try:
            await self.request("DELETE", f"/repos/{repo}/issues/{number}/labels/{quoted(name)}")
        except ForgeError as exc:
            if exc.status != 404:  # not on the issue: nothing to remove
                raise

    async def find_pull(self, repo: str, branch: str) -> str | None:
        owner = repo.split("/", 1)[0]
        resp = await self.request(
            "GET", f"/repos/{repo}/pulls", params={"head": f"{owner}:{branch}", "state": "all"}
        )
        for pull in resp.json():
            if (pull.get("head") or {}).get("ref") == branch:
                return str(pull.get("html_url") or "")
        return None

    async def open_pull(
        self, repo: str, *, branch: str, base: str, title: str, body: str, draft: bool
    ) -> str:
        resp = await self.request(
            "POST",
            f"/repos/{repo}/pulls",
            json={"title": title, "head": branch, "base": base, "body": body, "draft": draft},
        )
        return str(resp.json().get("html_url") or "")

    @classmethod
    def signature_value(cls, header: str) -> str:
        return header.strip().removeprefix("sha256=")

    @classmethod
    def sign(cls, secret: str, body: bytes) -> dict[str, str]:
        digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return {"X-Hub-Signature-256": f"sha256={digest}"}
