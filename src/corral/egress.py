"""Where the server may send webhooks: not to its own host or network.

A webhook URL is a request the server makes on a caller's behalf, so an
operator could aim it at loopback or internal services (and read the answer
back from the delivery log). Unless ``webhook_allow_private`` is on (by
default only when the server itself listens on loopback: a laptop where
``Client.run()`` receives on 127.0.0.1), a URL whose host resolves to a
loopback, private, link-local, multicast, reserved or unspecified address is
refused when the job is submitted (422), and again when each delivery
connects: the sender resolves the name itself, checks every address and
connects to a checked one, so a DNS answer that changes meanwhile (rebinding)
cannot get through. Server-wide ``[[webhooks]]`` are the admin's own and are
sent as configured."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from corral.config import Settings
from corral.errors import WebhookRefused
from corral.models import JobCreate, WebhookSpec

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64 = ipaddress.ip_network("64:ff9b::/96")
RESOLVE_SECONDS = 5.0


def refused_kind(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a webhook target (``loopback``, ``private``...), or None."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return refused_kind(embedded)
    for kind, hit in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
        ("non-public", not ip.is_global),
    ):
        if hit:
            return kind
    return None


def _refusal(url: str, host: str, ip: str, kind: str) -> WebhookRefused:
    where = host if host == ip else f"{host} ({ip})"
    return WebhookRefused(
        f"webhook {url!r}: {where} is a {kind} address, and this server does not send "
        "webhooks into its own host or network; an admin may allow it with "
        "webhook_allow_private = true (CORRAL_WEBHOOK_ALLOW_PRIVATE=true)"
    )


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (an IP literal: itself)."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(RESOLVE_SECONDS):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))


def check(url: str, host: str, addresses: Iterable[str]) -> list[str]:
    """``addresses`` if none of them is refused; else WebhookRefused."""
    addresses = list(addresses)
    for address in addresses:
        kind = refused_kind(ipaddress.ip_address(address))
        if kind is not None:
            raise _refusal(url, host, address, kind)
    return addresses


async def check_webhook(spec: JobCreate, settings: Settings) -> None:
    """At submit: refuse the job's webhook if it aims at a refused address."""
    if isinstance(spec.webhook, WebhookSpec) and not settings.webhooks_may_reach_private:
        await check_url(spec.webhook.url)


async def check_url(url: str) -> None:
    """At submit: refuse ``url`` if its host resolves to a refused address. A
    name that does not resolve now is let through: the delivery checks again."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise WebhookRefused(f"webhook {url!r}: invalid port") from None
    try:
        addresses = await resolve(host, port)
    except (OSError, TimeoutError, UnicodeError):
        return
    check(url, host, addresses)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to checked addresses: resolves the name itself, refuses
    it if any address is refused, then connects to the addresses it checked."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await resolve(host, port)
        except (OSError, TimeoutError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        last: Exception | None = None
        for address in check(f"{host}:{port}", host, addresses):
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                last = exc
        raise last or httpcore.ConnectError(f"{host} has no address")

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks are not sent to unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guarded_transport(limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose connections go through GuardedBackend (TLS
    still checks the URL's host name: it is what the request carries)."""
    transport = httpx.AsyncHTTPTransport(limits=limits)
    # httpx offers no network_backend argument; its pool is httpcore's, which does.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=GuardedBackend(),
    )
    return transport


def public_error(error: str | None) -> str | None:
    """A delivery error as non-admins see it: the HTTP status, or that the
    connection failed or was refused, never the socket's detail (which would
    map the server's network: refused, reset, timed out...)."""
    if error is None:
        return None
    if error.startswith("HTTP "):
        return " ".join(error.split(" ", 2)[:2]).rstrip(":")
    if error.startswith("refused:"):
        return "refused: private address"
    return "connection failed"
