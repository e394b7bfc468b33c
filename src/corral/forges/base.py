"""What every tracker client shares: authenticated JSON requests, pages
followed through ``Link: <...>; rel="next"``, conditional requests (the first
page of a listing is asked ``If-None-Match`` its last ``ETag``; a 304 costs
GitHub no rate limit and returns the listing kept from last time), and rate
limits honoured (``X-RateLimit-Remaining: 0`` until ``X-RateLimit-Reset``, or
``Retry-After``): a client that was told to wait raises ``RateLimited`` at
once instead of asking again. The token is read for every request (a token
file or command may rotate)."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from corral import __version__, retrying

Credential = Callable[[], Awaitable[str | None]]
PAGES_MAX = 50  # pages of one listing, at most (5,000 items on GitHub)


class ForgeError(Exception):
    """The tracker refused a request, or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class RateLimited(ForgeError):
    """The tracker asked us to wait until ``until`` (unix seconds)."""

    def __init__(self, message: str, until: float) -> None:
        super().__init__(message, 429)
        self.until = until


@dataclass(frozen=True)
class Issue:
    repo: str  # owner/name
    number: int
    title: str
    body: str
    url: str  # the page a person opens
    state: str  # open | closed
    labels: tuple[str, ...]
    is_pull: bool = False
    updated_at: str = ""  # ISO 8601, the tracker's clock


@dataclass(frozen=True)
class Comment:
    repo: str
    id: int
    number: int  # of the issue or pull request it is on
    body: str
    author: str
    url: str
    created_at: str = ""  # ISO 8601, the tracker's clock


@dataclass
class Listing:
    items: list[Any]
    not_modified: bool = False


@dataclass
class Stats:
    requests: int = 0
    not_modified: int = 0
    rate_limited: int = 0
    by_path: dict[str, int] = field(default_factory=dict)


class Forge:
    """A tracker's REST API; ``GitHub`` and ``Forgejo`` fill in the paths."""

    kind = ""
    default_base: str | None = None
    signature_headers: tuple[str, ...] = ()
    event_headers: tuple[str, ...] = ()

    def __init__(
        self,
        base_url: str | None,
        credential: Credential,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        base = base_url or self.default_base
        if not base:
            raise ValueError(f"a {self.kind} tracker needs a base_url")
        self.base_url = self.api_base(base.rstrip("/"))
        self.credential = credential
        self.http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": f"corral/{__version__}", **self.extra_headers()},
        )
        self.stats = Stats()
        self.wait_until = 0.0
        self._etags: dict[str, tuple[str, list[Any]]] = {}

    # -- what a kind says -----------------------------------------------------

    def api_base(self, base: str) -> str:
        return base

    def extra_headers(self) -> dict[str, str]:
        return {}

    def auth(self, token: str) -> dict[str, str]:
        raise NotImplementedError

    # -- requests ---------------------------------------------------------------

    async def aclose(self) -> None:
        await self.http.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        etag: str | None = None,
    ) -> httpx.Response:
        now = time.time()
        if self.wait_until > now:
            raise RateLimited(
                f"rate limited for {self.wait_until - now:.0f} more seconds", self.wait_until
            )
        headers: dict[str, str] = {}
        token = await self.credential()
        if token:
            headers.update(self.auth(token))
        if etag:
            headers["If-None-Match"] = etag
        try:
            resp = await self.http.request(method, path, params=params, json=json, headers=headers)
        except httpx.HTTPError as exc:
            raise ForgeError(f"{self.kind} unreachable: {type(exc).__name__}: {exc}") from exc
        self.stats.requests += 1
        key = path.split("?", 1)[0]
        self.stats.by_path[key] = self.stats.by_path.get(key, 0) + 1
        if resp.status_code == 304:
            self.stats.not_modified += 1
            return resp
        limited = self._limited(resp)
        if limited is not None:
            self.stats.rate_limited += 1
            self.wait_until = limited
            raise RateLimited(f"{self.kind} rate limit: {_message(resp)}", limited)
        if resp.status_code >= 400:
            raise ForgeError(
                f"{self.kind} answered {resp.status_code} to {method} {key}: {_message(resp)}",
                resp.status_code,
            )
        return resp

    def _limited(self, resp: httpx.Response) -> float | None:
        """Until when the tracker asks us to wait, if it does."""
        if resp.status_code not in (403, 429):
            return None
        now = time.time()
        wait = retrying.retry_after(resp.headers.get("retry-after"))
        if wait is not None:
            return now + wait
        if resp.headers.get("x-ratelimit-remaining") == "0":
            try:
                return max(now, float(resp.headers.get("x-ratelimit-reset", "")))
            except ValueError:
                return now + 60.0
        return now + 60.0 if resp.status_code == 429 else None

    def forget(self) -> None:
        """Drop the kept listings: the next ones are read in full."""
        self._etags.clear()

    async def listing(self, path: str, params: dict[str, Any]) -> Listing:
        """Every item of a paged listing; the first page asked conditionally."""
        cache_key = path + "?" + "&".join(f"{k}={v}" for k, v in sorted(params.items()))
        cached = self._etags.get(cache_key)
        resp = await self.request("GET", path, params=params, etag=cached[0] if cached else None)
        if resp.status_code == 304 and cached is not None:
            return Listing(list(cached[1]), not_modified=True)
        items: list[Any] = list(resp.json())
        etag = resp.headers.get("etag")
        pages = 1
        while (link := resp.links.get("next")) is not None and pages < PAGES_MAX:
            resp = await self.request("GET", link["url"])
            items += resp.json()
            pages += 1
        if etag:
            self._etags[cache_key] = (etag, items)
        return Listing(items)

    # -- the operations (per kind) ----------------------------------------------

    async def issues(self, repo: str, *, label: str | None, since: str | None) -> Listing:
        """Issues of ``repo`` (open and closed, not pull requests) with
        ``label``, updated since ``since`` (ISO 8601), oldest update first."""
        raise NotImplementedError

    async def comments(self, repo: str, *, since: str | None) -> Listing:
        """Comments on the issues and pull requests of ``repo`` since ``since``."""
        raise NotImplementedError

    async def issue(self, repo: str, number: int) -> Issue:
        resp = await self.request("GET", f"/repos/{repo}/issues/{number}")
        return self.to_issue(repo, resp.json())

    async def issue_comments(self, repo: str, number: int) -> list[Comment]:
        listing = await self.listing(f"/repos/{repo}/issues/{number}/comments", self.page_params())
        return [self.to_comment(repo, c) for c in listing.items]

    async def comment(self, repo: str, number: int, body: str) -> Comment:
        resp = await self.request(
            "POST", f"/repos/{repo}/issues/{number}/comments", json={"body": body}
        )
        return self.to_comment(repo, resp.json())

    async def add_labels(self, repo: str, number: int, names: list[str]) -> None:
        raise NotImplementedError

    async def remove_label(self, repo: str, number: int, name: str) -> None:
        raise NotImplementedError

    async def repository(self, repo: str) -> dict[str, Any]:
        """The repository: ``clone_url``, ``default_branch``..."""
        data: dict[str, Any] = (await self.request("GET", f"/repos/{repo}")).json()
        return data

    async def find_pull(self, repo: str, branch: str) -> str | None:
        """The page of an existing pull request from ``branch``, if any."""
        raise NotImplementedError

    async def open_pull(
        self, repo: str, *, branch: str, base: str, title: str, body: str, draft: bool
    ) -> str:
        """Open a pull request from ``branch`` into ``base``; its page."""
        raise NotImplementedError

    # -- shapes -------------------------------------------------------------------

    def page_params(self) -> dict[str, Any]:
        return {"per_page": 100}

    def to_issue(self, repo: str, data: dict[str, Any]) -> Issue:
        return Issue(
            repo=repo,
            number=int(data["number"]),
            title=str(data.get("title") or ""),
            body=str(data.get("body") or ""),
            url=str(data.get("html_url") or ""),
            state=str(data.get("state") or "open"),
            labels=tuple(str(label["name"]) for label in data.get("labels") or ()),
            is_pull=bool(data.get("pull_request")),
            updated_at=str(data.get("updated_at") or ""),
        )

    def to_comment(self, repo: str, data: dict[str, Any]) -> Comment:
        # issue_url ends with the number, on both (an API URL on GitHub, a page on Gitea).
        source = str(data.get("issue_url") or data.get("pull_request_url") or "")
        number = source.rstrip("/").rsplit("/", 1)[-1]
        return Comment(
            repo=repo,
            id=int(data["id"]),
            number=int(number) if number.isdigit() else 0,
            body=str(data.get("body") or ""),
            author=str((data.get("user") or {}).get("login") or ""),
            url=str(data.get("html_url") or ""),
            created_at=str(data.get("created_at") or ""),
        )

    # -- inbound webhooks -----------------------------------------------------------

    @classmethod
    def event_of(cls, headers: Mapping[str, str]) -> str | None:
        for name in cls.event_headers:
            value = headers.get(name) or headers.get(name.lower())
            if value:
                return str(value)
        return None

    @classmethod
    def verify(cls, secret: str, body: bytes, headers: Mapping[str, str]) -> bool:
        """Whether the delivery's signature is the HMAC-SHA256 of ``body``
        under ``secret`` (compared in constant time)."""
        expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        for name in cls.signature_headers:
            given = headers.get(name) or headers.get(name.lower())
            if given:
                return hmac.compare_digest(cls.signature_value(str(given)), expected)
        return False

    @classmethod
    def signature_value(cls, header: str) -> str:
        return header.strip()

    @classmethod
    def sign(cls, secret: str, body: bytes) -> dict[str, str]:
        """The signature header a tracker sends with ``body`` (for tests)."""
        raise NotImplementedError


def quoted(name: str) -> str:
    return quote(name, safe="")


def _message(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:200] or resp.reason_phrase
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])[:300]
    return resp.text[:200]
