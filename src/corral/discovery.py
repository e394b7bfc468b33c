"""How the CLI finds the server that uses its data dir: `corral serve`
records where it listens in ``DATA_DIR/server.json`` once it listens and
removes it when it stops, so `corral serve --port 9000` (or any `--host`,
port 0) is found by every client command whose data dir is the same
(`CORRAL_DATA_DIR`, or the default), like the admin key next to it."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path

FILE = "server.json"


def record(data_dir: Path, url: str) -> None:
    """Write the URL of this process's server (atomically: readers never see half)."""
    path = data_dir / FILE
    body = {"url": url, "pid": os.getpid(), "host": socket.gethostname()}
    tmp = path.with_name(f".{FILE}.{os.getpid()}")
    tmp.write_text(json.dumps(body) + "\n")
    tmp.replace(path)


def forget(data_dir: Path) -> None:
    """Remove the record if it is this process's (a newer server may have replaced it)."""
    path = data_dir / FILE
    if _read(path).get("pid") == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def recorded(data_dir: Path) -> str | None:
    """The URL the server using ``data_dir`` recorded, unless that server is
    known to be gone (it ran on this host and its process no longer exists)."""
    body = _read(data_dir / FILE)
    url, pid = body.get("url"), body.get("pid")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return None
    if body.get("host") == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
        return None  # killed without cleaning up
    return url


def _read(path: Path) -> dict[str, object]:
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
