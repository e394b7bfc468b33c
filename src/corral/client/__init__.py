"""Python client for the corral HTTP API. The CLI uses it for everything it
does over HTTP.

    from corral.client import Client, AsyncClient
    with Client() as c:                          # CORRAL_URL / CORRAL_TOKEN / local admin key
        result = c.run(command="echo hello")     # submit, block until it ends
        print(result.state, result.result)

    async with AsyncClient() as c:               # the same methods, as coroutines
        result = await c.run(command="echo hello")

``run()`` learns that the job ended from a signed webhook to a receiver it
opens on a free port, and falls back to polling when it cannot bind one, when
``polling=True``, or when no delivery arrives within ``push_grace`` seconds
(the server cannot reach this host).

Each method is declared once (methods.py: one request in calls.py, or a
flow of steps in flows.py) and taken by both faces: ``Client`` (sync.py,
``httpx.Client``) and ``AsyncClient`` (aio.py, ``httpx.AsyncClient``)."""

from corral.errors import ClientError

from .aio import AsyncClient
from .base import ApiError, RunTimeout, Unreachable, resolve
from .flows import Result
from .receivers import AsyncReceiver, Receiver
from .sync import Client

__all__ = [
    "ApiError",
    "AsyncClient",
    "AsyncReceiver",
    "Client",
    "ClientError",
    "Receiver",
    "Result",
    "RunTimeout",
    "Unreachable",
    "resolve",
]
