"""Webhook receivers on a free port: each checks every delivery's signature
(``corral.webhooks.verify``), drops duplicates by delivery id, and lets
callers wait for a job's deliveries. ``Client.run()`` uses a ``Receiver`` (a
thread of its own), ``AsyncClient.run()`` an ``AsyncReceiver`` (a server on
the running event loop)::

    with Receiver(secret) as r:
        client.submit(..., webhook={"url": r.url, "secret": secret})
        body = r.wait(job_id, lambda b: b["state"] in ("done", "failed"), timeout=60)

    async with await AsyncReceiver.start(secret) as r:
        ...
        body = await r.wait(job_id, lambda b: b["state"] == "done", timeout=60)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import h11

from corral.webhooks import (
    DEFAULT_TOLERANCE,
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    WebhookVerificationError,
    verify,
)

MAX_BODY = 4 * 1024 * 1024
PATH = "/corral-webhook"

Until = Callable[[dict[str, object]], bool]


class Inbox:
    """What both receivers keep: the verified deliveries by job, each once."""

    def __init__(self, secret: str, tolerance: float) -> None:
        self.secret = secret
        self.tolerance = tolerance
        self.rejected = 0
        self._seen: set[str] = set()
        self._bodies: dict[str, list[dict[str, object]]] = {}

    def accept(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, bool]:
        """The HTTP status to answer, and whether the delivery is new
        (``headers``: names in lower case)."""
        try:
            verify(body, headers.get(SIGNATURE_HEADER.lower()), self.secret, self.tolerance)
            data = json.loads(body)
            job_id = str(data["job_id"])
        except (WebhookVerificationError, ValueError, KeyError, TypeError):
            self.rejected += 1
            return 400, False
        delivery = headers.get(DELIVERY_HEADER.lower()) or str(data.get("delivery_id"))
        if delivery in self._seen:
            return 204, False
        self._seen.add(delivery)
        self._bodies.setdefault(job_id, []).append(data)
        return 204, True

    def find(self, job_id: str, until: Until) -> dict[str, object] | None:
        for body in self._bodies.get(job_id, ()):
            if until(body):
                return body
        return None

    def deliveries(self, job_id: str) -> list[dict[str, object]]:
        return list(self._bodies.get(job_id, ()))


class Receiver:
    """A receiver in a thread of its own (for synchronous code)."""

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
        self._inbox = Inbox(secret, tolerance)
        self._cond = threading.Condition()
        handler = type("_Handler", (_ThreadHandler,), {"receiver": self})
        self._server = ThreadingHTTPServer((host, port), handler)  # OSError if it cannot bind
        self._server.daemon_threads = True
        bound_port = self._server.server_address[1]
        self._address = (host, bound_port)
        self.url = f"http://{_host(advertise or host)}:{bound_port}{PATH}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="corral-webhook-receiver",
            daemon=True,
        )
        self._thread.start()

    @property
    def rejected(self) -> int:
        """Deliveries refused (bad signature or body)."""
        return self._inbox.rejected

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
            return self._inbox.deliveries(job_id)

    def wait(self, job_id: str, until: Until, timeout: float | None) -> dict[str, object] | None:
        """The first delivery about ``job_id`` for which ``until`` holds
        (already received or arriving within ``timeout``), else None."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while (body := self._inbox.find(job_id, until)) is None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return body

    def _accept(self, body: bytes, headers: Mapping[str, str]) -> int:
        with self._cond:
            status, new = self._inbox.accept(body, headers)
            if new:
                self._cond.notify_all()
        return status


class _ThreadHandler(BaseHTTPRequestHandler):
    receiver: Receiver
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            status = 413
        else:
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            status = self.receiver._accept(body, headers)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


class AsyncReceiver:
    """A receiver served by the running event loop (HTTP/1.1 through h11,
    keep-alive): a delivery wakes its waiter at once, and cancelling the
    waiter takes effect at once."""

    def __init__(self, secret: str, tolerance: float) -> None:
        self.secret = secret
        self.url = ""
        self._inbox = Inbox(secret, tolerance)
        self._arrived = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.StreamWriter, asyncio.Task[None] | None] = {}

    @classmethod
    async def start(
        cls,
        secret: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        advertise: str | None = None,
        tolerance: float = DEFAULT_TOLERANCE,
    ) -> AsyncReceiver:
        """Listen on ``host``:``port`` (0: a free one); OSError if it cannot bind."""
        self = cls(secret, tolerance)
        self._server = await asyncio.start_server(self._serve, host, port)
        bound_port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://{_host(advertise or host)}:{bound_port}{PATH}"
        return self

    @property
    def rejected(self) -> int:
        return self._inbox.rejected

    async def aclose(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for writer in self._connections:  # kept alive by the sender
            writer.close()
        handlers = [t for t in self._connections.values() if t is not None]
        if handlers:
            await asyncio.wait(handlers, timeout=1.0)
        await server.wait_closed()

    async def __aenter__(self) -> AsyncReceiver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def deliveries(self, job_id: str) -> list[dict[str, object]]:
        return self._inbox.deliveries(job_id)

    async def wait(
        self, job_id: str, until: Until, timeout: float | None
    ) -> dict[str, object] | None:
        """The first delivery about ``job_id`` for which ``until`` holds
        (already received or arriving within ``timeout``), else None."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while (body := self._inbox.find(job_id, until)) is None:
            arrived = self._arrived
            try:
                async with asyncio.timeout_at(deadline):
                    await arrived.wait()
            except TimeoutError:
                return self._inbox.find(job_id, until)
        return body

    def _accept(self, body: bytes, headers: Mapping[str, str]) -> int:
        status, new = self._inbox.accept(body, headers)
        if new:  # wake every waiter; later ones wait on a fresh event
            self._arrived.set()
            self._arrived = asyncio.Event()
        return status

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections[writer] = asyncio.current_task()
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        try:
            while await self._exchange(conn, reader, writer):
                conn.start_next_cycle()
        except (h11.ProtocolError, ConnectionError):
            pass
        finally:
            self._connections.pop(writer, None)
            writer.close()

    async def _exchange(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """One request and its answer; False when the connection is done. A
        body over MAX_BODY is read to its end (so the sender sees the answer)
        but not kept, and refused with 413."""
        request: h11.Request | None = None
        body = bytearray()
        too_big = False
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                too_big = too_big or len(body) + len(event.data) > MAX_BODY
                if not too_big:
                    body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:  # ConnectionClosed
                return False
        assert request is not None
        if request.method != b"POST":
            status = 405
        elif too_big:
            status = 413
        else:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers}
            status = self._accept(bytes(body), headers)
        await _answer(conn, writer, status)
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE


async def _answer(conn: h11.Connection, writer: asyncio.StreamWriter, status: int) -> None:
    headers = [] if status == 204 else [("content-length", "0")]
    writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
    writer.write(conn.send(h11.EndOfMessage()) or b"")
    await writer.drain()


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
