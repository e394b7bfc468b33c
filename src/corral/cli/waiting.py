"""While a followed job is queued: why it waits and for how long, on stderr.
On a terminal a spinner line (rich status) that updates in place; piped, a
plain line each time the reason changes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from corral.cli.common import err, esc
from corral.jobs import JobState

if TYPE_CHECKING:
    from rich.status import Status

    from corral.client import Client

# A job that starts within this long shows no waiting line at all.
QUIET = 0.3
# How often the reason is asked of the server, and the spinner line redrawn.
POLL = 1.0
TICK = 0.1


def _elapsed(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


class Waiting:
    """Shows the waiting reason of ``job_id`` while it is ``active``. The
    follower calls ``hide()`` before it prints the job's output and ``show()``
    when the job is queued again; ``close()`` at the end. It asks the server
    through its own client (``connect``), beside the follower's event stream."""

    def __init__(self, connect: Callable[[], Client], job_id: str) -> None:
        self._connect = connect
        self._job_id = job_id
        self._tty = err.is_terminal
        self._lock = threading.Lock()
        self._active = True
        self._since = time.monotonic()
        self._closed = threading.Event()
        self._idle = threading.Event()  # set while nothing is drawn
        self._idle.set()
        self._status: Status | None = None
        self._thread = threading.Thread(target=self._run, name="corral-waiting", daemon=True)
        self._thread.start()

    def show(self) -> None:
        with self._lock:
            if not self._active:
                self._active = True
                self._since = time.monotonic()

    def hide(self) -> None:
        """Stop showing; returns once the spinner line is gone."""
        with self._lock:
            self._active = False
        self._idle.wait()

    def close(self) -> None:
        self.hide()
        self._closed.set()
        self._thread.join()

    def _run(self) -> None:
        reason: str | None = None
        printed: str | None = None
        asked = 0.0
        try:
            with self._connect() as c:
                while not self._closed.wait(TICK):
                    with self._lock:
                        active, since = self._active, self._since
                    now = time.monotonic()
                    if not active or now - since < QUIET:
                        self._clear()
                        reason = printed = None
                        continue
                    if reason is None or now - asked >= POLL:
                        asked = now
                        job = c.get(self._job_id)
                        if job.state is not JobState.QUEUED:
                            self._clear()  # it started: the follower hears of it
                            continue
                        reason = job.waiting or "waiting for a runner"
                    with self._lock:
                        if not self._active:
                            continue
                        text = f"queued {_elapsed(now - since)}: {reason}"
                        if self._tty:
                            self._draw(text)
                        elif reason != printed:
                            err.print(text, markup=False, highlight=False)
                            printed = reason
        except Exception as exc:  # a display aid never breaks the follow
            self._clear()
            err.print(f"(cannot show why the job waits: {exc})", markup=False)
        finally:
            self._clear()

    def _draw(self, text: str) -> None:
        if self._status is None:
            self._idle.clear()
            self._status = err.status(f"[dim]{esc(text)}[/]", spinner="dots")
            self._status.start()
        else:
            self._status.update(f"[dim]{esc(text)}[/]")

    def _clear(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        self._idle.set()
