"""A stopping replica ends its SSE streams cleanly and at once (the client
sees the end of the body and resumes elsewhere with Last-Event-ID), instead
of holding its shutdown until the graceful timeout cuts them."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from ._helpers import running_server, submit


async def test_sigterm_ends_open_streams_cleanly(tmp_path: Path) -> None:
    with running_server(tmp_path / "data") as s, s.http() as http:
        session_id = http.get(f"/jobs/{submit(http, 'sleep 30')}").json()["session_id"]
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        writer.write(
            f"GET /sessions/{session_id}/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Accept: text/event-stream\r\nAuthorization: Bearer {s.admin_key}\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head
        await reader.readuntil(b"data: ")  # streaming
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            rest = await reader.read()
        took = time.monotonic() - t0
        writer.close()
        # The last chunk of a finished body; not a connection dropped mid-stream
        # after the 3 s the server gives requests in flight.
        assert rest.endswith(b"\r\n0\r\n\r\n"), rest[-40:]
        assert took < 2.5, took
