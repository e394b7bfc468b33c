"""Signed webhooks: what corral sends, and how a receiver checks it.

Every delivery is a POST of a JSON body with three headers:

- ``X-Corral-Delivery``: the delivery id (the same on every retry; receivers
  use it to drop duplicates: delivery is at least once);
- ``X-Corral-Event``: ``job.state``, or the event type it carries;
- ``X-Corral-Signature``: ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``
  keyed by the webhook's secret.

A receiver calls ``verify(body, headers["X-Corral-Signature"], secret)``
before trusting anything in the body::

    from corral.webhooks import verify, WebhookVerificationError
    try:
        verify(request_body, request.headers.get("X-Corral-Signature"), SECRET)
    except WebhookVerificationError as exc:
        return 400, str(exc)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from corral.errors import CorralError

DELIVERY_HEADER = "X-Corral-Delivery"
EVENT_HEADER = "X-Corral-Event"
SIGNATURE_HEADER = "X-Corral-Signature"
DEFAULT_TOLERANCE = 300.0


class WebhookVerificationError(CorralError):
    """The signature header is missing, malformed, stale or does not match."""

    status = 400
    code = "invalid_signature"


@dataclass(frozen=True)
class Endpoint:
    """A server-wide webhook endpoint (``[[webhooks]]`` in corral.toml)."""

    url: str
    secret: str | None = None  # None: the server's webhook secret
    states: frozenset[str] = frozenset()  # empty: every state change
    events: frozenset[str] = frozenset()  # event types delivered too


@dataclass(frozen=True)
class Rules:
    """What the outbox announces besides each job's own webhook."""

    endpoints: tuple[Endpoint, ...] = ()

    @functools.cached_property
    def event_types(self) -> frozenset[str]:
        """Every event type an endpoint asks for (read on each event batch)."""
        return frozenset().union(*(ep.events for ep in self.endpoints))


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``X-Corral-Signature`` value for ``body``."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={_mac(secret, t, body)}"


def verify(
    body: bytes | str,
    header: str | None,
    secret: str,
    tolerance: float = DEFAULT_TOLERANCE,
    *,
    now: float | None = None,
) -> None:
    """Check a delivery's signature; raises WebhookVerificationError unless
    ``header`` signs ``body`` with ``secret`` at a time within ``tolerance``
    seconds of now (older or future timestamps are replays or forgeries).
    Several ``v1=`` values (a secret being rotated) are accepted if any matches."""
    if isinstance(body, str):
        body = body.encode()
    if not header:
        raise WebhookVerificationError(f"no {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise WebhookVerificationError(f"malformed {SIGNATURE_HEADER}: {part.strip()!r}")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise WebhookVerificationError("malformed signature timestamp") from None
        elif key == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        raise WebhookVerificationError(f"{SIGNATURE_HEADER} needs t= and v1=")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookVerificationError(
            f"signature timestamp is {current - timestamp:+.0f}s from now "
            f"(tolerance {tolerance:g}s): a replay or a wrong clock"
        )
    expected = _mac(secret, timestamp, body)
    # Compare against every candidate so the time taken does not depend on which matched.
    matched = False
    for candidate in signatures:
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise WebhookVerificationError("signature does not match (wrong secret or altered body)")


class Receiver:
    """A small webhook receiver on a free port (a thread of its own): checks
    each delivery's signature, drops duplicates by delivery id, and lets
    callers wait for a job's deliveries. ``Client.run()`` uses one to learn
    that a job ended without polling.

        with Receiver(secret) as r:
            client.submit(..., webhook={"url": r.url, "secret": secret})
            body = r.wait(job_id, lambda b: b["state"] in ("done", "failed"), timeout=60)
    """

    def __init__(
        self,
        secret: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        advertise: str | None = None,
        tolerance: float = DEFAULT_TOLERANCE,
    ) -> None:
        self.secret = secret
        self.tolerance = tolerance
        self.rejected = 0
        self._seen: set[str] = set()
        self._bodies: dict[str, list[dict[str, object]]] = {}
        self._cond = threading.Condition()
        handler = type("_Handler", (_ReceiverHandler,), {"receiver": self})
        self._server = ThreadingHTTPServer((host, port), handler)  # OSError if it cannot bind
        self._server.daemon_threads = True
        bound_port = self._server.server_address[1]
        self._address = (host, bound_port)
        self.url = f"http://{advertise or host}:{bound_port}/corral-webhook"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="corral-webhook-receiver",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        # shutdown() waits for serve_forever to look at its flag, which it does
        # after each request or poll interval: connecting wakes it at once
        # (Client.run() returned ~85 ms late waiting for the interval).
        stopper = threading.Thread(target=self._server.shutdown, daemon=True)
        stopper.start()
        deadline = time.monotonic() + 5
        while stopper.is_alive() and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                socket.create_connection(self._address, timeout=0.2).close()
            stopper.join(0.005)
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def deliveries(self, job_id: str) -> list[dict[str, object]]:
        with self._cond:
            return list(self._bodies.get(job_id, ()))

    def wait(
        self,
        job_id: str,
        until: Callable[[dict[str, object]], bool],
        timeout: float | None,
    ) -> dict[str, object] | None:
        """The first delivery about ``job_id`` for which ``until`` holds
        (already received or arriving within ``timeout``), else None."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                for body in self._bodies.get(job_id, ()):
                    if until(body):
                        return body
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def _accept(self, body: bytes, headers: Mapping[str, str]) -> int:
        try:
            verify(body, headers.get(SIGNATURE_HEADER), self.secret, self.tolerance)
            data = json.loads(body)
            job_id = str(data["job_id"])
        except (WebhookVerificationError, ValueError, KeyError, TypeError):
            with self._cond:
                self.rejected += 1
            return 400
        delivery = headers.get(DELIVERY_HEADER) or str(data.get("delivery_id"))
        with self._cond:
            if delivery not in self._seen:
                self._seen.add(delivery)
                self._bodies.setdefault(job_id, []).append(data)
                self._cond.notify_all()
        return 204


class _ReceiverHandler(BaseHTTPRequestHandler):
    receiver: Receiver
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > 4 * 1024 * 1024:
            status = 413
        else:
            body = self.rfile.read(length)
            status = self.receiver._accept(body, {k: v for k, v in self.headers.items()})
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()
