"""A fake GitHub (REST v3) and a fake Forgejo/Gitea (``/api/v1``): the issue,
comment, label, pull request and repository endpoints corral's tracker intake
and sink use, in their real wire formats, on loopback in a thread. The git
side is real: each repository is a bare repository on disk (its
``clone_url`` is a ``file://`` URL), and a pull request can only be opened
from a branch that exists there.

GitHub (docs.github.com/rest, 2022-11-28): ``Authorization: Bearer <token>``
(else 401 ``{"message": "Bad credentials"}``); listings page with ``per_page``
and ``page`` and a ``Link`` header (``rel="next"``, ``rel="last"``); every
200 carries an ``ETag`` and a request with a matching ``If-None-Match`` is a
304 that does not count against the rate limit; ``X-RateLimit-Limit``,
``-Remaining``, ``-Reset`` on every answer, and 403 with ``Remaining: 0`` when
spent. ``issues`` lists pull requests too (with a ``pull_request`` key);
``since`` filters on ``updated_at`` (inclusive); ``labels`` on all the named
labels. Labels are added by name (created when missing) and removed by name
(404 ``Label does not exist`` when not on the issue). A second pull request
for the same head and base is 422 ``Validation Failed`` with ``A pull request
already exists for owner:branch.``.

Forgejo/Gitea (the instance's swagger): ``Authorization: token <token>``;
``limit`` and ``page``, ``Link`` and ``X-Total-Count``; no ETags, no rate
limit; issues take ``type=issues``; labels are added and removed by id
(``POST /repos/o/r/labels`` creates one); pull requests have no draft flag.

Webhook deliveries are made with ``fake.deliver(url, event, payload, secret)``
signed as each tracker signs them. Every request is kept in ``fake.requests``
(method, path, status)."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Issue:
    number: int
    title: str
    body: str
    labels: list[str]
    state: str = "open"
    created_at: str = field(default_factory=now_iso)
    updated_at: str = field(default_factory=now_iso)
    pull: dict[str, Any] | None = None  # head/base of a pull request


@dataclass
class _Comment:
    id: int
    number: int
    body: str
    user: str
    created_at: str = field(default_factory=now_iso)
    updated_at: str = field(default_factory=now_iso)


@dataclass
class _Repo:
    owner: str
    name: str
    git: Path
    issues: dict[int, _Issue] = field(default_factory=dict)
    comments: list[_Comment] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)  # name -> id


class FakeForge:
    def __init__(self, kind: str = "github", token: str = "forge-token") -> None:
        assert kind in ("github", "forgejo")
        self.kind = kind
        self.token = token
        self.repos: dict[str, _Repo] = {}
        self.requests: list[tuple[str, str, int]] = []
        self.rate_remaining = 5000
        self.rate_reset = 0  # unix seconds; 0: an hour from the request
        # Seconds a new comment's answer is held back (it is stored at once).
        self.comment_delay = 0.0
        self.lock = threading.RLock()
        self._ids = itertools.count(1001)
        self._server: ThreadingHTTPServer | None = None

    # -- what a test sets up -----------------------------------------------------

    def add_repo(self, full_name: str, git: Path) -> None:
        owner, name = full_name.split("/")
        self.repos[full_name] = _Repo(owner, name, git)

    def open_issue(self, repo: str, title: str, body: str = "", labels: list[str] = ()) -> int:  # type: ignore[assignment]
        with self.lock:
            r = self.repos[repo]
            number = len(r.issues) + 1
            r.issues[number] = _Issue(number, title, body, list(labels))
            for label in labels:
                self._label_id(r, label)
            return number

    def close_issue(self, repo: str, number: int) -> None:
        with self.lock:
            issue = self.repos[repo].issues[number]
            issue.state, issue.updated_at = "closed", now_iso()

    def set_labels(self, repo: str, number: int, labels: list[str]) -> None:
        with self.lock:
            issue = self.repos[repo].issues[number]
            issue.labels, issue.updated_at = list(labels), now_iso()

    def add_comment(self, repo: str, number: int, body: str, user: str = "octocat") -> int:
        with self.lock:
            r = self.repos[repo]
            c = _Comment(next(self._ids), number, body, user)
            r.comments.append(c)
            r.issues[number].updated_at = c.created_at
            return c.id

    def comments_on(self, repo: str, number: int) -> list[str]:
        with self.lock:
            return [c.body for c in self.repos[repo].comments if c.number == number]

    def labels_on(self, repo: str, number: int) -> list[str]:
        with self.lock:
            return list(self.repos[repo].issues[number].labels)

    def pulls(self, repo: str) -> list[_Issue]:
        with self.lock:
            return [i for i in self.repos[repo].issues.values() if i.pull is not None]

    def count(self, method: str, path_part: str) -> int:
        with self.lock:
            return sum(1 for m, p, _ in self.requests if m == method and path_part in p)

    # -- webhooks ------------------------------------------------------------------

    def sign(self, secret: str, body: bytes) -> dict[str, str]:
        digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        if self.kind == "github":
            return {"X-Hub-Signature-256": f"sha256={digest}"}
        return {"X-Gitea-Signature": digest, "X-Forgejo-Signature": digest}

    def event_headers(self, event: str) -> dict[str, str]:
        if self.kind == "github":
            return {"X-GitHub-Event": event, "X-GitHub-Delivery": str(next(self._ids))}
        return {"X-Gitea-Event": event, "X-Forgejo-Event": event}

    def issue_payload(self, repo: str, number: int, action: str) -> dict[str, Any]:
        with self.lock:
            r = self.repos[repo]
            return {
                "action": action,
                "issue": self._issue_json(r, r.issues[number]),
                "repository": self._repo_json(r),
                "sender": {"login": "octocat"},
            }

    def comment_payload(self, repo: str, comment_id: int) -> dict[str, Any]:
        with self.lock:
            r = self.repos[repo]
            c = next(c for c in r.comments if c.id == comment_id)
            return {
                "action": "created",
                "issue": self._issue_json(r, r.issues[c.number]),
                "comment": self._comment_json(r, c),
                "repository": self._repo_json(r),
                "sender": {"login": c.user},
            }

    def deliver(self, url: str, event: str, payload: dict[str, Any], secret: str) -> httpx.Response:
        body = json.dumps(payload).encode()
        headers = {
            "Content-Type": "application/json",
            **self.event_headers(event),
            **self.sign(secret, body),
        }
        return httpx.post(url, content=body, headers=headers, timeout=30)

    # -- JSON shapes -----------------------------------------------------------------

    @property
    def web(self) -> str:
        return self.url.removesuffix("/api/v1") + "/web"

    def _repo_json(self, r: _Repo) -> dict[str, Any]:
        full = f"{r.owner}/{r.name}"
        return {
            "id": abs(hash(full)) % 100000,
            "name": r.name,
            "full_name": full,
            "owner": {"login": r.owner},
            "html_url": f"{self.web}/{full}",
            "clone_url": f"file://{r.git}",
            "default_branch": "main",
            "private": False,
        }

    def _label_id(self, r: _Repo, name: str) -> int:
        if name not in r.labels:
            r.labels[name] = next(self._ids)
        return r.labels[name]

    def _label_json(self, r: _Repo, name: str) -> dict[str, Any]:
        return {"id": self._label_id(r, name), "name": name, "color": "ededed"}

    def _issue_json(self, r: _Repo, i: _Issue) -> dict[str, Any]:
        full = f"{r.owner}/{r.name}"
        kind = "pull" if (i.pull and self.kind == "github") else ("pulls" if i.pull else "issues")
        data: dict[str, Any] = {
            "id": i.number + 10_000,
            "number": i.number,
            "title": i.title,
            "body": i.body,
            "state": i.state,
            "labels": [self._label_json(r, n) for n in i.labels],
            "user": {"login": "octocat"},
            "html_url": f"{self.web}/{full}/{kind}/{i.number}",
            "created_at": i.created_at,
            "updated_at": i.updated_at,
            "comments": sum(1 for c in r.comments if c.number == i.number),
        }
        if self.kind == "github":
            data["url"] = f"{self.url}/repos/{full}/issues/{i.number}"
        if i.pull is not None:
            data["pull_request"] = {"html_url": data["html_url"]}
        elif self.kind == "forgejo":
            data["pull_request"] = None
        return data

    def _pull_json(self, r: _Repo, i: _Issue) -> dict[str, Any]:
        data = self._issue_json(r, i)
        assert i.pull is not None
        data.pop("pull_request", None)
        data["head"] = {"ref": i.pull["head"], "label": f"{r.owner}:{i.pull['head']}"}
        data["base"] = {"ref": i.pull["base"]}
        data["draft"] = i.pull.get("draft", False)
        return data

    def _comment_json(self, r: _Repo, c: _Comment) -> dict[str, Any]:
        full = f"{r.owner}/{r.name}"
        issue = r.issues[c.number]
        kind = "pull" if (issue.pull and self.kind == "github") else "issues"
        data: dict[str, Any] = {
            "id": c.id,
            "body": c.body,
            "user": {"login": c.user},
            "html_url": f"{self.web}/{full}/{kind}/{c.number}#issuecomment-{c.id}",
            "created_at": c.created_at,
            "updated_at": c.updated_at,
        }
        if self.kind == "github":
            data["issue_url"] = f"{self.url}/repos/{full}/issues/{c.number}"
        else:
            data["issue_url"] = f"{self.web}/{full}/issues/{c.number}"
            data["pull_request_url"] = ""
        return data

    # -- the API -----------------------------------------------------------------------

    def handle(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        expected = f"Bearer {self.token}" if self.kind == "github" else f"token {self.token}"
        if headers.get("authorization") != expected:
            return (
                401,
                {"message": "Bad credentials" if self.kind == "github" else "token is required"},
                {},
            )
        if self.kind == "forgejo":
            if not path.startswith("/api/v1/"):
                return 404, {"message": "not found"}, {}
            path = path.removeprefix("/api/v1")
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if len(parts) < 3 or parts[0] != "repos":
            return 404, {"message": "Not Found"}, {}
        r = self.repos.get(f"{parts[1]}/{parts[2]}")
        if r is None:
            return 404, {"message": "Not Found"}, {}
        rest = parts[3:]
        with self.lock:
            return self._route(r, method, rest, query, body)

    def _route(
        self, r: _Repo, method: str, rest: list[str], q: dict[str, str], body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        if not rest and method == "GET":
            return 200, self._repo_json(r), {}
        if rest == ["issues"] and method == "GET":
            items = sorted(r.issues.values(), key=lambda i: i.updated_at)
            state = q.get("state", "open")
            if state != "all":
                items = [i for i in items if i.state == state]
            if q.get("labels"):
                wanted = q["labels"].split(",")
                items = [i for i in items if all(w in i.labels for w in wanted)]
            if q.get("since"):
                items = [i for i in items if i.updated_at >= q["since"]]
            if self.kind == "forgejo" and q.get("type") == "issues":
                items = [i for i in items if i.pull is None]
            return 200, [self._issue_json(r, i) for i in items], {}
        if rest == ["issues", "comments"] and method == "GET":
            comments = sorted(r.comments, key=lambda c: c.created_at)
            if q.get("since"):
                comments = [c for c in comments if c.updated_at >= q["since"]]
            return 200, [self._comment_json(r, c) for c in comments], {}
        if len(rest) >= 2 and rest[0] == "issues" and rest[1].isdigit():
            issue = r.issues.get(int(rest[1]))
            if issue is None:
                return 404, {"message": "Not Found"}, {}
            return self._issue_route(r, issue, method, rest[2:], body)
        if rest == ["labels"] and method == "GET":
            return 200, [{"id": i, "name": n, "color": "ededed"} for n, i in r.labels.items()], {}
        if rest == ["labels"] and method == "POST" and self.kind == "forgejo":
            return 201, self._label_json(r, str(body["name"])), {}
        if rest == ["pulls"] and method == "GET":
            pulls = [i for i in r.issues.values() if i.pull is not None]
            if q.get("head"):
                pulls = [p for p in pulls if f"{r.owner}:{p.pull['head']}" == q["head"]]  # type: ignore[index]
            return 200, [self._pull_json(r, p) for p in pulls], {}
        if rest == ["pulls"] and method == "POST":
            return self._open_pull(r, body)
        return 404, {"message": "Not Found"}, {}

    def _issue_route(
        self, r: _Repo, issue: _Issue, method: str, rest: list[str], body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        if not rest and method == "GET":
            return 200, self._issue_json(r, issue), {}
        if rest == ["comments"] and method == "GET":
            return (
                200,
                [self._comment_json(r, c) for c in r.comments if c.number == issue.number],
                {},
            )
        if rest == ["comments"] and method == "POST":
            if not isinstance(body, dict) or not body.get("body"):
                return 422, {"message": "Validation Failed"}, {}
            c = _Comment(next(self._ids), issue.number, str(body["body"]), "corral-bot")
            r.comments.append(c)
            if self.comment_delay:
                return 201, self._comment_json(r, c), {"X-Fake-Delay": str(self.comment_delay)}
            return 201, self._comment_json(r, c), {}
        if rest == ["labels"] and method == "POST":
            names = body.get("labels") if isinstance(body, dict) else None
            if not isinstance(names, list):
                return 422, {"message": "Validation Failed"}, {}
            for value in names:
                if self.kind == "forgejo":
                    if not isinstance(value, int) or value not in r.labels.values():
                        return 422, {"message": f"label {value!r} does not exist"}, {}
                    value = next(n for n, i in r.labels.items() if i == value)
                if value not in issue.labels:
                    issue.labels.append(str(value))
            issue.updated_at = now_iso()
            return 200, [self._label_json(r, n) for n in issue.labels], {}
        if len(rest) == 2 and rest[0] == "labels" and method == "DELETE":
            name = rest[1]
            if self.kind == "forgejo":
                name = next((n for n, i in r.labels.items() if str(i) == rest[1]), "")
            if name not in issue.labels:
                return 404, {"message": "Label does not exist"}, {}
            issue.labels.remove(name)
            issue.updated_at = now_iso()
            return (
                (200, [self._label_json(r, n) for n in issue.labels], {})
                if self.kind == "github"
                else (204, None, {})
            )
        return 404, {"message": "Not Found"}, {}

    def _open_pull(self, r: _Repo, body: Any) -> tuple[int, Any, dict[str, str]]:
        if not isinstance(body, dict) or not body.get("head") or not body.get("base"):
            return 422, {"message": "Validation Failed"}, {}
        head, base = str(body["head"]), str(body["base"])
        exists = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"refs/heads/{head}"],
            cwd=r.git,
            capture_output=True,
            check=False,
        )
        if exists.returncode != 0:
            return (
                422,
                {"message": "Validation Failed", "errors": [{"field": "head", "code": "invalid"}]},
                {},
            )
        for i in r.issues.values():
            if i.pull and i.pull["head"] == head and i.pull["base"] == base and i.state == "open":
                return (
                    422,
                    {
                        "message": "Validation Failed",
                        "errors": [
                            {
                                "resource": "PullRequest",
                                "code": "custom",
                                "message": f"A pull request already exists for {r.owner}:{head}.",
                            }
                        ],
                    },
                    {},
                )
        number = len(r.issues) + 1
        pull = {"head": head, "base": base}
        if self.kind == "github":
            pull["draft"] = bool(body.get("draft", False))
        r.issues[number] = _Issue(
            number, str(body.get("title") or ""), str(body.get("body") or ""), [], pull=pull
        )
        return 201, self._pull_json(r, r.issues[number]), {}

    # -- serving ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        base = f"http://127.0.0.1:{self._server.server_address[1]}"
        return base + "/api/v1" if self.kind == "forgejo" else base

    @property
    def base_url(self) -> str:
        """What a tracker's ``base_url`` is set to."""
        return self.url.removesuffix("/api/v1")

    def start(self) -> FakeForge:
        handler = type("_Bound", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        # poll_interval: how long close() waits for the loop (0.5 s by default)
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeForge:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


PER_PAGE_MAX = {"github": 100, "forgejo": 50}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeForge
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _serve(self, method: str) -> None:
        fake = self.fake
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in self.headers.items()}
        extra: dict[str, str] = {}
        if fake.kind == "github":
            reset = fake.rate_reset or int(datetime.now(UTC).timestamp()) + 3600
            if fake.rate_remaining <= 0:
                self._send(
                    403,
                    {"message": "API rate limit exceeded"},
                    {
                        "X-RateLimit-Limit": "5000",
                        "X-RateLimit-Remaining": "0",
                        "X-RateLimit-Reset": str(reset),
                    },
                    method,
                    url.path,
                )
                return
        status, data, extra = fake.handle(method, url.path, query, headers, body)
        # Pages: the listing endpoints.
        if status == 200 and method == "GET" and isinstance(data, list):
            size_key = "per_page" if fake.kind == "github" else "limit"
            size = min(int(query.get(size_key, 30)), PER_PAGE_MAX[fake.kind])
            page = int(query.get("page", 1))
            total = len(data)
            last = max(1, -(-total // size))
            data = data[(page - 1) * size : page * size]
            links = []
            if page < last:
                nq = {**query, "page": str(page + 1)}
                links.append(f'<{self._self_url(url.path, nq)}>; rel="next"')
                lq = {**query, "page": str(last)}
                links.append(f'<{self._self_url(url.path, lq)}>; rel="last"')
            if links:
                extra["Link"] = ", ".join(links)
            if fake.kind == "forgejo":
                extra["X-Total-Count"] = str(total)
        if status == 200 and method == "GET" and fake.kind == "github":
            etag = (
                '"'
                + hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:32]
                + '"'
            )
            extra["ETag"] = etag
            if headers.get("if-none-match") == etag:
                self._send(304, None, {**extra, **self._rate(counted=False)}, method, url.path)
                return
        if fake.kind == "github":
            extra.update(self._rate(counted=True))
        self._send(status, data, extra, method, url.path)

    def _rate(self, *, counted: bool) -> dict[str, str]:
        fake = self.fake
        if counted:
            fake.rate_remaining -= 1
        reset = fake.rate_reset or int(datetime.now(UTC).timestamp()) + 3600
        return {
            "X-RateLimit-Limit": "5000",
            "X-RateLimit-Remaining": str(max(0, fake.rate_remaining)),
            "X-RateLimit-Reset": str(reset),
        }

    def _self_url(self, path: str, query: dict[str, str]) -> str:
        from urllib.parse import urlencode

        host = f"http://127.0.0.1:{self.server.server_address[1]}"
        return f"{host}{path}?{urlencode(query)}"

    def _send(
        self, status: int, data: Any, headers: dict[str, str], method: str, path: str
    ) -> None:
        with self.fake.lock:
            self.fake.requests.append((method, path, status))
        delay = float(headers.pop("X-Fake-Delay", 0) or 0)
        if delay:
            time.sleep(delay)  # the request's own thread: the fake keeps serving
        payload = b"" if data is None or status == 304 else json.dumps(data).encode()
        self.send_response(status)
        if payload:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")
