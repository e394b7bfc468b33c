"""``corral.testing.start_server``: a test gets the server it started, never
another one that answers at the same address (another test's, or another
suite's on the machine)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from corral.testing import ServerProcess, start_server


class _Health(BaseHTTPRequestHandler):
    """Answers /health like `corral serve` does."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def impostor(held_port: int) -> Iterator[int]:
    """Another server listening on a port, answering /health with 200."""
    server = ThreadingHTTPServer(("127.0.0.1", held_port), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield held_port
    finally:
        server.shutdown()
        server.server_close()


def test_a_port_another_server_holds_fails_the_start(tmp_path: Path, impostor: int) -> None:
    # Its /health answers at once; `corral serve` cannot bind and exits:
    # the start fails with why, instead of handing the test the other server.
    with pytest.raises(RuntimeError, match="address already in use"):
        start_server(tmp_path / "data", port=impostor)


def test_servers_started_together_each_get_a_port_of_their_own(tmp_path: Path) -> None:
    with ThreadPoolExecutor(3) as pool:
        servers: list[ServerProcess] = list(
            pool.map(lambda name: start_server(tmp_path / name), ["a", "b", "c"])
        )
    try:
        assert len({s.port for s in servers}) == 3
        for srv in servers:
            assert srv.url == f"http://127.0.0.1:{srv.port}"
            with srv.http() as http:  # its own admin key: another server refuses it
                assert http.get("/status").status_code == 200
            assert srv.log == srv.data_dir / f"serve-{srv.port}.log"
            assert "listening on" in srv.output()
    finally:
        for srv in servers:
            srv.stop()
