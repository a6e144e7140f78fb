"""Server-Sent Events for a streamed task, relayed from its Redis Stream as entries arrive.

Frames are exactly OpenAI's, ``data: {chunk}\\n\\n`` … ``data: [DONE]\\n\\n``, each chunk with an
``id:`` (its stream entry id) so a client can reconnect with ``Last-Event-ID`` on
``GET /v1/tasks/{id}/stream`` and get the chunks after it. The worker side and the entries'
format: ``workers/stream.py``.

The answer starts only with the first entry: a task that fails before any chunk gets an
OpenAI-shaped error answer (and its refund) instead of a stream; one that fails after gets an
``{"error": …}`` event, which the OpenAI SDKs raise as ``APIError``. A relay never hangs: when no
entry came for ``v1_stream_idle_seconds`` and no worker holds the job's lease, it ends with an
error event (the task is then failed and refunded by whichever worker runs the job again).

Re-attaching is free, so relays are counted: at most ``v1_stream_relays_per_task`` of one task and
``v1_stream_relays_per_account`` of one account at once (a 429 beyond; the paid stream itself is
counted but never refused). None holds a Redis connection of its own while it waits: they read
without blocking and wait on their task's feed (``ingress/v1/feed.py``), one blocking reader per
task per process.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from ingress.api_requests import TaskPath
from ingress.api_spec import Raw, api
from ingress.responses import JSON
from ingress.slots import slot
from ingress.state import AppState, state
from ingress.tasks import owned_task
from ingress.v1.answer import NO_RETRY, timed_out
from ingress.v1.feed import Feed, feeds
from jobs import keys
from jobs.errors import BadRequest, GatewayTimeout, NotFound, RateLimited, SyncNodeError
from jobs.results import Upstream, failure_error
from storage.tasks import TERMINAL

Entry = tuple[str, dict[bytes, bytes]]
_ENTRY_ID = re.compile(r"\d{1,20}-\d{1,20}", re.ASCII)
_BLOCK_MS = 1000
# One event (as tools read a stream: its fields); data is a chunk's JSON, an error's, or [DONE].
EVENTS = Raw("text/event-stream", {"type": "object", "required": ["data"], "properties": {
    "data": {"type": "string"}, "id": {"type": "string"}, "event": {"type": "string"}}},
    "Server-Sent Events: OpenAI's chunks, then data: [DONE]")


def accepted(st: AppState, task_id: int, job_id: str, streamed: bool) -> Response:
    """``Prefer: respond-async``: the task's ids and where to read (or stream) it."""
    base = st.settings.public_url
    body: dict[str, Any] = {"id": task_id, "job_id": job_id, "status": "in_progress",
                            "get": f"{base}/prediction-status?job_id={job_id}"}
    if streamed:
        body["stream"] = f"{base}/v1/tasks/{task_id}/stream"
    return JSON(body, status_code=202)


def _text(v: bytes | None) -> str | None:
    return None if v is None else v.decode()


def error_event(message: str, type_: str = "server_error", code: str | None = None) -> bytes:
    err = {"message": message, "type": type_, "param": None, "code": code or type_}
    return b"data: " + orjson.dumps({"error": err}) + b"\n\n"


def frame(entry: Entry) -> bytes | None:
    """The SSE frame an entry stands for (None: the entry ends the stream, see ``end_frame``)."""
    entry_id, fields = entry
    data = fields.get(b"d")
    if data is None:
        return None
    return b"id: " + entry_id.encode() + b"\ndata: " + data + b"\n\n"


def end_failure(fields: dict[bytes, bytes], job_id: str) -> SyncNodeError:
    """The answer to a stream that ended before its first chunk, as a whole task's failure would be."""
    status, ra = _text(fields.get(b"upstream_status")), _text(fields.get(b"retry_after"))
    code, param = _text(fields.get(b"upstream_code")), _text(fields.get(b"upstream_param"))
    upstream = Upstream(int(status) if status else None, float(ra) if ra else None, code, param) \
        if status or ra or code or param else None
    return failure_error(_text(fields.get(b"error")) or f"Task {_text(fields.get(b'end'))}", job_id,
                         client_error=fields.get(b"client_error") == b"1", upstream=upstream)


def end_frame(fields: dict[bytes, bytes]) -> bytes:
    if fields.get(b"end") == b"completed":
        return b"data: [DONE]\n\n"
    message = _text(fields.get(b"error")) or "The task failed"
    return error_event(message, "server_error", "stream_failed")


class Relay:
    """Reads one task's stream from an entry id on; liveness-bounded (see the module doc)."""

    def __init__(self, st: AppState, job_id: str, last_id: str = "0", feed: Feed | None = None) -> None:
        self.st = st
        self.job_id = job_id
        self.key = keys.chat_stream(job_id)
        self.last_id = last_id
        self.ended = False
        self.feed = feed

    async def read(self, block_ms: int = _BLOCK_MS) -> list[Entry]:
        """New entries, waiting up to ``block_ms`` for some: on the feed when there is one (no
        connection held meanwhile), else with a blocking XREAD."""
        if self.feed is None:
            return await self._xread(block_ms)
        changed = self.feed.changed  # before the read: an entry landing after it sets this one
        got = await self._from_feed()
        if got or block_ms <= 0:
            return got
        await self.feed.wait(changed, block_ms / 1000)
        return await self._from_feed()

    async def _from_feed(self) -> list[Entry]:
        assert self.feed is not None
        kept = self.feed.after(self.last_id)
        if kept is None:  # behind what the feed kept: catch up without blocking
            return await self._xread(None)
        if kept:
            self.last_id = kept[-1][0]
        return kept

    async def _xread(self, block_ms: int | None) -> list[Entry]:
        res = await self.st.redis.xread({self.key: self.last_id}, count=512, block=block_ms)
        if not res:
            return []
        entries = [(eid.decode(), fields) for eid, fields in res[0][1]]
        self.last_id = entries[-1][0]
        return entries

    async def first(self, timeout: float) -> list[Entry]:
        """Entries once there are any; [] if none came within ``timeout`` (the job may be queued)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = await self.read(max(1, min(_BLOCK_MS, int((deadline - time.monotonic()) * 1000))))
            if got:
                return got
            if ended := await self._ended_without_entry():
                return await self.read(10) or [ended]
        return []

    async def _ended_without_entry(self) -> Entry | None:
        """An end entry made from the status hash, for a task that ended without writing one."""
        cur = await self.st.status.read(self.job_id)
        if cur is None or cur["status"] == "in_progress":
            return None
        return "0-0", {b"end": str(cur["status"]).encode(), b"error": str(cur.get("error") or "").encode()}

    async def worker_alive(self) -> bool:
        return bool(await self.st.redis.exists(keys.in_progress_key_prefix + self.job_id))

    async def frames(self, entries: list[Entry]) -> AsyncIterator[bytes]:
        """SSE bytes, one piece per read: entries that arrived together leave together."""
        idle = self.st.settings.v1_stream_idle_seconds
        seen = time.monotonic()
        while True:
            out: list[bytes] = []
            for entry in entries:
                f = frame(entry)
                if f is None:
                    self.ended = True
                    yield b"".join(out) + end_frame(entry[1])
                    return
                out.append(f)
            if out:
                seen = time.monotonic()
                yield b"".join(out)
            elif time.monotonic() - seen > idle and not await self.worker_alive():
                # One last look: the end entry may have landed since the read.
                entries = await self.read(10)
                if not entries:
                    self.ended = True
                    yield error_event("The worker streaming this task stopped; the task will be failed "
                                      "and refunded", "server_error", "worker_lost")
                    return
                continue
            entries = await self.read()


class SSEResponse(StreamingResponse):
    """Streams frames; a client that goes away runs ``on_disconnect`` (shielded from the
    cancellation that stops the relay) instead of the rest of the frames."""

    def __init__(self, frames: AsyncIterator[bytes], headers: dict[str, str],
                 on_disconnect: Any = None, on_close: Callable[[], Awaitable[Any]] | None = None) -> None:
        super().__init__(frames, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers})
        self.frames = frames
        self.on_disconnect = on_disconnect
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._relay(send, receive)
        finally:
            if self.on_close is not None:
                with anyio.CancelScope(shield=True):
                    await self.on_close()

    async def _relay(self, send: Send, receive: Receive) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        gone = False

        async def watch(scope_: anyio.CancelScope) -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            scope_.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch, tg.cancel_scope)
            try:
                async for chunk in self.frames:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except OSError:
                gone = True
            tg.cancel_scope.cancel()
        if gone:
            if self.on_disconnect is not None:
                with anyio.CancelScope(shield=True):
                    await self.on_disconnect()
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _counted(st: AppState, stack: AsyncExitStack, uid: str, job_id: str, enforce: bool) -> None:
    """Take this relay's slots of its task and its account; 429 beyond either cap when ``enforce``."""
    s = st.settings
    ttl = s.sync_timeout_seconds + s.chat_job_timeout_seconds + 60  # a relay's longest life
    for key, cap, what in ((keys.stream_relays(job_id), s.v1_stream_relays_per_task, "of one task"),
                           (keys.account_relays(uid), s.v1_stream_relays_per_account, "per account")):
        held = await stack.enter_async_context(slot(st.redis, key, ttl))
        if enforce and held > cap:
            raise RateLimited(f"At most {cap} open streams {what}; close one or retry later",
                              headers={"Retry-After": "5"})


async def open_stream(st: AppState, task_id: int, job_id: str, *, uid: str, cancel_on_disconnect: bool,
                      last_id: str = "0", enforce_caps: bool = False) -> Response:
    """The task's stream as SSE. ``enforce_caps``: refuse (429) a relay beyond the caps; the paid
    request's own stream is counted but never refused."""
    stack = AsyncExitStack()
    try:
        await _counted(st, stack, uid, job_id, enforce_caps)
        feed = await stack.enter_async_context(feeds(st.redis).watching(keys.chat_stream(job_id)))
        relay = Relay(st, job_id, last_id, feed)
        entries = await relay.first(st.settings.sync_timeout_seconds)
        if not entries:
            raise timed_out(job_id, task_id, streamed=True)
        fields = entries[0][1]
        if b"d" not in fields and fields.get(b"end") != b"completed" and last_id == "0":
            raise end_failure(fields, job_id)
    except BaseException:
        await stack.aclose()
        raise

    async def cancel() -> None:
        if not relay.ended:
            await st.redis.set(keys.stream_cancel(job_id), b"1", ex=max(60, int(st.settings.chat_job_timeout_seconds)))

    headers = {"X-SyncNode-Task-Id": str(task_id), "X-SyncNode-Job-Id": job_id}
    return SSEResponse(relay.frames(entries), headers, cancel if cancel_on_disconnect else None, stack.aclose)


@api("A streamed task's events, from after Last-Event-ID", tags=("v1",), auth="bearer", path=TaskPath,
     headers={"Last-Event-ID": "Resume after this event id"},
     ok={200: EVENTS},
     errors=(400, 401, 402, 403, 404, 429, 502, 504))
async def task_stream(request: Request) -> Response:
    """GET /v1/tasks/{id}/stream: a streamed task's events, after ``Last-Event-ID`` if sent."""
    st = state(request)
    who = await st.auth.principal(request, None, public=False)
    row = await owned_task(request, who.uid)
    if not (isinstance(row["request"], dict) and row["request"].get("stream") is True):
        raise NotFound("This task was not streamed: GET /tasks/{id} holds its answer")
    last = request.headers.get("last-event-id", "").strip() or "0"
    if not _ENTRY_ID.fullmatch(last) and last != "0":
        raise BadRequest("Last-Event-ID must be an event id this stream sent (like 1732550000000-0)")
    if row["status"] in TERMINAL and not await st.redis.exists(keys.chat_stream(row["job_id"])):
        raise NotFound(f"The stream of task {row['id']} has expired: GET /tasks/{row['id']} holds its answer")
    try:
        return await open_stream(st, row["id"], row["job_id"], uid=who.uid, cancel_on_disconnect=False,
                                 last_id=last, enforce_caps=True)
    except GatewayTimeout as e:
        e.headers = {**(e.headers or {}), **NO_RETRY}
        raise
