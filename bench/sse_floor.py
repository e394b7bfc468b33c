"""The floor under (d): what one asyncio process pays to write one SSE frame
to each of N loopback connections, with no HTTP framework in the way.

Two shapes: ``direct`` (one loop writes the frame to every transport) and
``task`` (a task per subscriber, woken by a future, writes its own, as an
ASGI response must). Server CPU per delivery, as (d) reports corral's.

    python bench/sse_floor.py [--subscribers 1000] [--events 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import socket
import time
from multiprocessing.queues import Queue

FRAME = (
    b'id: 12\ndata: {"type":"bench","payload":{"i":1,"t":1733333333.123456},"seq":12,'
    b'"session_id":"s-abcdef","job_id":"j-abcdef","created_at":"2026-12-04T17:00:00Z"}\n\n'
)
CHUNK = b"%x\r\n" % len(FRAME) + FRAME + b"\r\n"  # as uvicorn frames a chunked body


def serve(shape: str, n: int, events: int, port: Queue[int], cpu: Queue[float]) -> None:
    async def main() -> None:
        writers: list[asyncio.StreamWriter] = []
        waiters: list[asyncio.Future[bytes]] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            with contextlib.suppress(asyncio.CancelledError):
                while shape == "task":
                    fut = asyncio.get_running_loop().create_future()
                    waiters.append(fut)
                    writer.transport.write(await fut)
                await asyncio.Event().wait()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port.put(server.sockets[0].getsockname()[1])
        while len(writers) < n:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        began = time.process_time()
        for _ in range(events):
            if shape == "task":
                woken, waiters[:] = list(waiters), []
                for fut in woken:
                    fut.set_result(CHUNK)
            else:
                for w in writers:
                    w.transport.write(CHUNK)
            await asyncio.sleep(0.02)
        cpu.put(time.process_time() - began)

    asyncio.run(main())


async def subscribe(port: int, n: int) -> tuple[list[socket.socket], list[int]]:
    """n connections read in the event loop's callbacks (next to nothing per read)."""
    loop = asyncio.get_running_loop()
    socks, got = [], [0]

    def read(s: socket.socket) -> None:
        with contextlib.suppress(BlockingIOError):
            got[0] += s.recv(65536).count(b"data: ")

    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        loop.add_reader(s.fileno(), read, s)
        socks.append(s)
    return socks, got


async def measure(port: Queue[int], cpu: Queue[float], n: int) -> tuple[float, int]:
    """Connect n subscribers, wait for the server's CPU figure, count deliveries."""
    socks, got = await subscribe(port.get(timeout=30), n)
    while cpu.empty():
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    for s in socks:
        asyncio.get_running_loop().remove_reader(s.fileno())
        s.close()
    return cpu.get(), got[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--events", type=int, default=200)
    args = parser.parse_args()
    n, events = args.subscribers, args.events
    for shape in ("direct", "task"):
        port: Queue[int] = mp.Queue()
        cpu: Queue[float] = mp.Queue()
        proc = mp.Process(target=serve, args=(shape, n, events, port, cpu), daemon=True)
        proc.start()

        seconds, delivered = asyncio.run(measure(port, cpu, n))
        proc.terminate()
        load = f"{os.getloadavg()[0]:.2f}"
        print(
            f"{shape:6} {seconds / (n * events) * 1e6:5.1f} us of server CPU per delivery "
            f"({delivered:,} of {n * events:,} delivered; load average {load})"
        )


if __name__ == "__main__":
    main()
