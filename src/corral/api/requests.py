"""A request id for every HTTP request: taken from ``X-Request-ID`` when the
caller sent a sane one, else made here; bound to the log context while the
request is handled (corral.logctx), sent back in the response's
``X-Request-ID``, and, with ``access_log = true``, one log line per request
(method, path, status, milliseconds; never the query string or headers,
which may carry credentials)."""

from __future__ import annotations

import logging
import random
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral import logctx

HEADER = b"x-request-id"
# The server's own send, above every wrapper (the request id's, the exception
# handlers'), which only look at the response's start: a long stream's body
# messages skip them (api/sse.py).
BODY_SEND = "corral.body_send"
SANE = re.compile(rb"[A-Za-z0-9._:-]{1,64}")
access = logging.getLogger("corral.access")


class BodySend:
    """Outermost, around Starlette's own middleware: puts the server's send in
    the scope as ``BODY_SEND``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[BODY_SEND] = send
        try:
            await self.app(scope, receive, send)
        finally:
            # The server's send is a method of its request cycle, which holds
            # this scope: a reference cycle per request (and FastAPI's exit
            # stacks in the scope with it) left for the cycle collector,
            # whose full passes were 15-20 ms pauses (issue #18).
            scope.pop(BODY_SEND, None)


class RequestIds:
    def __init__(self, app: ASGIApp, *, access_log: bool = False) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == HEADER), None)
        rid = given if given is not None and SANE.fullmatch(given) else None
        # A correlation id, not a secret: 64 bits of the process's PRNG (the
        # system's random source was a system call per request, issue #18).
        request_id = rid.decode() if rid is not None else f"{random.getrandbits(64):016x}"
        status = 0
        began = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((HEADER, request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        with logctx.bound(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                if self.access_log:
                    access.info(
                        "%s %s %s %.1fms",
                        scope["method"],
                        scope["path"],
                        status or "-",
                        (time.perf_counter() - began) * 1000,
                    )
