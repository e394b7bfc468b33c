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

``corral.client.Receiver`` (a thread) and ``AsyncReceiver`` (asyncio) are ready ones.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import time
from dataclasses import dataclass

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
