"""One logging setup for every SyncNode process (ingress, ``syncnode worker``, ``syncnode up``).

``SYNCNODE_LOG_FORMAT=text`` (the default, for a person reading ``syncnode up``) or ``json`` (one
object per line, for a log pipeline). Every line carries the request and job it belongs to:
the ids live in context variables, set once by the ingress's access middleware and by the job
wrapper of a worker, and copied onto each record when it is created, so a line logged anywhere
below them (storage, a provider client, arq) says which request or job it is about.

What is never logged: credentials and payloads. Only the fields named in ``FIELDS`` leave a
record; the message itself is ours (no request bodies, headers or job arguments are formatted
into one), and the loggers that would print request URLs or job arguments (httpx, arq's job
lines) are kept at WARNING.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, TextIO

import orjson

REQUEST_ID: ContextVar[str | None] = ContextVar("syncnode_request_id", default=None)
UID: ContextVar[str | None] = ContextVar("syncnode_uid", default=None)
JOB_ID: ContextVar[str | None] = ContextVar("syncnode_job_id", default=None)
POOL: ContextVar[str | None] = ContextVar("syncnode_pool", default=None)
_CONTEXT = (("request_id", REQUEST_ID), ("uid", UID), ("job_id", JOB_ID), ("pool", POOL))

# Fields a log call may add with ``extra=``; nothing else a record carries is written out.
FIELDS = ("method", "route", "status", "duration_ms", "function", "outcome", "tries")

# A client's X-Request-Id is kept only when it is short and plain: it is written into every log
# line and response, so newlines, quotes or kilobytes of it would forge or flood log lines.
_REQUEST_ID_OK = re.compile(r"[A-Za-z0-9._:=+/-]{1,128}")
# Loggers that would write what must not be written (request URLs, job arguments) or that
# repeat, per request or job, what the access and job lines already say.
_QUIET = ("httpx", "httpcore", "arq")
_MARK = "_syncnode_handler"


def new_request_id() -> str:
    return uuid.uuid4().hex


def accept_request_id(given: str | None) -> str:
    """The caller's X-Request-Id when it is safe to carry, else a new one."""
    if given and _REQUEST_ID_OK.fullmatch(given):
        return given
    return new_request_id()


_WRITTEN = (*(n for n, _ in _CONTEXT), *FIELDS)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    d = record.__dict__
    return {name: d[name] for name in _WRITTEN if d.get(name) is not None}


def _utc(created: float) -> str:
    """ISO 8601 in UTC with milliseconds; the seconds part is formatted once per second."""
    global _last_second
    sec = int(created)
    if sec != _last_second[0]:
        _last_second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{_last_second[1]}.{int((created - sec) * 1000):03d}Z"


_last_second: tuple[int, str] = (-1, "")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"ts": _utc(record.created), "level": record.levelname,
                                "logger": record.name, "msg": record.getMessage(), **_fields(record)}
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(name)s %(levelname)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        # The ids only: a person reads the other fields in the message itself.
        base = super().formatMessage(record)
        ids = " ".join(f"{n}={v}" for n, _ in _CONTEXT if (v := getattr(record, n, None)) is not None)
        return f"{base} [{ids}]" if ids else base


def _install_record_factory() -> None:
    """Copy the context ids onto every record when it is made (in the task that logs it)."""
    old: Callable[..., logging.LogRecord] = logging.getLogRecordFactory()
    if getattr(old, _MARK, False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = old(*args, **kwargs)
        for name, var in _CONTEXT:
            v = var.get()
            if v is not None:
                setattr(record, name, v)
        return record

    setattr(factory, _MARK, True)
    logging.setLogRecordFactory(factory)


def formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else TextFormatter()


def setup(fmt: str = "text", level: str = "INFO", stream: TextIO | None = None) -> None:
    """Point the root logger at one handler in ``fmt`` (idempotent: a second call replaces it)."""
    _install_record_factory()
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(fmt))
    setattr(handler, _MARK, True)
    root.addHandler(handler)
    root.setLevel(level.upper())
    quiet = max(logging.WARNING, root.level)
    for name in _QUIET:
        logging.getLogger(name).setLevel(quiet)
    # uvicorn configured its own text handlers before calling create_app: route its lines here.
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    # Its access line stays off: syncnode.access writes one per request with the request id,
    # account and duration. uvicorn decides per connection by asking this logger whether it has
    # handlers, so propagating it to ours turned it back on past --no-access-log: two lines
    # per request.
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False


def json_line(msg: str, **fields: Any) -> str:
    """A line in the JSON log shape for output that does not go through logging (``syncnode up``)."""
    return orjson.dumps({"ts": _utc(time.time()), "level": "INFO", "msg": msg, **fields}, default=str).decode()
