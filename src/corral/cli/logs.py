"""Log setup for `corral serve` and `corral runner`: text or JSON lines,
credentials and every secret the process knows redacted (corral.redact)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from corral.logctx import KEYS, ContextFilter
from corral.redact import text as redact

# The format setup() chose: a banner is a JSON line too in "json".
_format = "text"


class _Redact(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


class _Text(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = " ".join(f"{k}={getattr(record, k)}" for k in KEYS if hasattr(record, k))
        return f"{line} [{ids}]" if ids else line

    def formatException(self, ei: Any) -> str:
        return redact(super().formatException(ei))


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in (*KEYS, "runner_id"):
            if hasattr(record, key):
                data[key] = getattr(record, key)
        if record.exc_info:
            data["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(data)


def setup(level: str = "INFO", fmt: str = "text") -> None:
    global _format
    _format = fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.addFilter(_Redact())
    if fmt == "json":
        handler.setFormatter(_Json())
    else:
        handler.setFormatter(_Text("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").setLevel("WARNING")
    logging.getLogger("httpx").setLevel("WARNING")
    logging.getLogger("alembic").setLevel("WARNING")


def banner(text: str, *, warning: bool = False, markup: str | None = None) -> None:
    """What `corral serve` and `corral runner` say when they start: a line on
    stderr (``markup``: the same with rich markup), or a JSON log line when
    the log format is JSON, so that stderr holds only JSON lines."""
    if _format == "json":
        logging.getLogger("corral").log(logging.WARNING if warning else logging.INFO, text)
        return
    from corral.cli.common import err

    if markup is not None:
        err.print(markup)
    else:
        err.print(text, markup=False)
