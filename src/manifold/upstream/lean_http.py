"""The lean path's way to an HTTP upstream: one POST per tools/call, no SDK client.

The SDK's client turns every request into models, a task, an httpx request
and an SSE parse, and its answer back into models: ~3 ms of CPU per call
here. This channel posts the frame the face built (our id, the upstream's
tool name) on a keep-alive connection of its own (`http1.Pool`) with the
session's headers, and hands the response back as the bytes the server wrote
(a JSON body, or the data of one SSE event) with the span of its id, exactly
as the stdio channel does with a response line.

The session stays the SDK's: the handshake, the GET stream, every other
request. What an upstream sends on a lean call's stream besides its answer
goes where the full path sends it: a log line to the upstream's notification
handler at once (so it reaches the client ahead of the answer), a sampling or
elicitation request to the SDK's session as if its own transport had read it
(answered, and the answer posted, the way the full path does).

On the legacy SSE transport (`SseChannel`) a call's answer comes on the
session's one stream instead of the POST's reply.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import anyio.abc
import mcp_types as types
import structlog
from mcp.shared.message import SessionMessage
from mcp_types import CONNECTION_CLOSED, INTERNAL_ERROR, INVALID_REQUEST, PARSE_ERROR

from manifold.callers import CURRENT_CALLER
from manifold.logging import masker
from manifold.upstream.http1 import HttpError, Pool
from manifold.upstream.report import TransportReport
from manifold.upstream.stdio import RawCall, lean_response

log = structlog.get_logger("manifold.upstream")

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_LINE = re.compile(rb"\r\n|\n|\r")
_DRAIN_SECONDS = 1.0
_RESUME_ATTEMPTS = 2
_RESUME_DELAY = 1.0
_JSON = "application/json"
_SSE = "text/event-stream"


class StreamEnded(Exception):
    """The reply stream ended without the response."""


async def sse_events(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[tuple[str, bytes, str | None, int | None]]:
    """(event type, data, id, retry) of each event of a text/event-stream body."""
    buffer = bytearray()
    scanned = 0  # the end of an event is looked for only in what is new (a large event comes in many chunks)
    async for chunk in chunks:
        buffer += chunk
        while (end := _EVENT_END.search(buffer, max(scanned - 3, 0))) is not None:
            block = bytes(buffer[: end.start()])
            del buffer[: end.end()]
            scanned = 0
            event, data, event_id, retry = "message", [], None, None
            for line in _LINE.split(block):
                name, _, value = line.partition(b":")
                value = value[1:] if value.startswith(b" ") else value
                if name == b"data":
                    data.append(value)
                elif name == b"event":
                    event = value.decode("utf-8", "replace")
                elif name == b"id":
                    event_id = value.decode("utf-8", "replace")
                elif name == b"retry" and value.isdigit():
                    retry = int(value)
            if data or event_id is not None or retry is not None:
                yield event, b"\n".join(data), event_id, retry
        scanned = len(buffer)
        if scanned > limit:
            raise HttpError(f"an event on the reply stream is over {limit} bytes")


class HttpChannel:
    """Raw tools/call requests to one streamable-HTTP upstream over its own keep-alive pool."""

    def __init__(
        self,
        pool: Pool,
        *,
        session_headers: Callable[[], dict[str, str]],
        deliver: Callable[[SessionMessage], Awaitable[None]],
        session_lost: Callable[[], None],
        report: TransportReport,
        max_event_bytes: int,
    ) -> None:
        self.pool = pool
        self._session_headers = session_headers
        self._deliver = deliver
        self._session_lost = session_lost
        self.report = report
        self.max_event_bytes = max_event_bytes
        self.calls: dict[int, RawCall] = {}
        self._scopes: dict[int, anyio.CancelScope] = {}
        self._next = -1
        self.closed = False
        self._tg: anyio.abc.TaskGroup | None = None
        self.on_notification: Callable[[Any], Awaitable[None]] | None = None
        """The upstream's notification handler (set once its session is up): a log line during a
        call is handled before the answer that follows it, so it reaches the client first."""

    @asynccontextmanager
    async def running(self) -> AsyncIterator[HttpChannel]:
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                try:
                    yield self
                finally:
                    tg.cancel_scope.cancel()
        finally:
            self.closed = True
            calls, self.calls = self.calls, {}
            for call in calls.values():
                call.lost()
            with anyio.CancelScope(shield=True):
                await self.pool.aclose()

    # --- the raw channel (faces/lean.py) ---------------------------------------------

    def start(self, call: RawCall) -> int:
        if self.closed or self._tg is None:
            raise anyio.BrokenResourceError
        request_id = self._next
        self._next -= 1
        self.calls[request_id] = call
        return request_id

    def forget(self, request_id: int) -> RawCall | None:
        scope = self._scopes.pop(request_id, None)
        if scope is not None:
            scope.cancel()  # closes its connection: the upstream sees the request abandoned
        return self.calls.pop(request_id, None)

    async def call(self, request_id: int, frame: bytes) -> None:
        if self._tg is None or self.closed:
            raise anyio.BrokenResourceError
        self._tg.start_soon(self._call, request_id, frame)

    async def notify(self, frame: bytes) -> None:
        if self._tg is not None and not self.closed:
            self._tg.start_soon(self._notify, frame)

    # --- one call ----------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"content-type": _JSON, "accept": f"{_JSON}, {_SSE}", **self._session_headers()}

    async def _call(self, request_id: int, frame: bytes) -> None:
        if request_id not in self.calls:
            return  # forgotten (cancelled) before it went out
        scope = self._scopes[request_id] = anyio.CancelScope()
        try:
            with scope:
                await self._exchange(request_id, frame)
        except (HttpError, OSError) as exc:
            self._fail(request_id, CONNECTION_CLOSED, f"connection lost during tools/call ({exc})", lost=True)
        except StreamEnded as exc:
            self._fail(request_id, CONNECTION_CLOSED, str(exc))
        finally:
            if self._scopes.get(request_id) is scope:
                del self._scopes[request_id]

    def _fail(self, request_id: int, code: int, message: str, *, lost: bool = False, data: Any = None) -> None:
        call = self.calls.pop(request_id, None)
        if call is None:
            return
        if lost:
            call.lost()
            return
        call.failed(code, message, data)

    async def _exchange(self, request_id: int, frame: bytes) -> None:
        method, headers, body = "POST", self._headers(), frame
        last_id: str | None = None
        delay = _RESUME_DELAY
        for attempt in range(_RESUME_ATTEMPTS + 1):
            async with self.pool.request(method, headers, body) as response:
                if method == "POST" and not await self._status_ok(request_id, response):
                    return
                if method == "GET" and response.status != 200:
                    break
                kind = response.headers.get("content-type", "").lower()
                if method == "POST" and kind.startswith(_JSON):
                    self._answer(request_id, await response.read())
                    return
                if not kind.startswith(_SSE):
                    self._fail(request_id, INVALID_REQUEST, f"unexpected content type: {kind or 'none'}")
                    return
                async for event, data, event_id, retry in sse_events(response.chunks(), self.max_event_bytes):
                    last_id = event_id if event_id is not None else last_id
                    delay = retry / 1000 if retry is not None else delay
                    if event != "message" or not data:
                        continue
                    if await self._message(request_id, data):
                        with anyio.move_on_after(_DRAIN_SECONDS):  # to its end, so the connection is reused
                            async for _ in response.chunks():
                                pass
                        return
            if last_id is None or attempt == _RESUME_ATTEMPTS:
                break
            # The server ended the stream early but can replay it (SSE polling): resume.
            await anyio.sleep(delay)
            method, body = "GET", None
            headers = {"accept": _SSE, "last-event-id": last_id, **self._session_headers()}
        raise StreamEnded("the server's reply stream ended without a response")

    async def _status_ok(self, request_id: int, response: Any) -> bool:
        status = response.status
        if status == 200:
            return True
        if status >= 400:
            self.report.http_error = masker.mask(f"HTTP {status} from POST {self.pool.host}:{self.pool.port}{self.pool.target}")
        body = await response.read() if status >= 300 else b""
        if status == 404 and self._session_headers().get("mcp-session-id"):
            self._session_lost()
            self._fail(request_id, CONNECTION_CLOSED, "connection lost during tools/call (the server no longer knows our session)")
            return False
        if status >= 400 and response.headers.get("content-type", "").lower().startswith(_JSON):
            with suppress(ValueError, TypeError, KeyError, AttributeError):
                error = json.loads(body)["error"]
                self._fail(request_id, error["code"], error["message"], data=error.get("data"))
                return False
        if status == 202:
            self._fail(request_id, INVALID_REQUEST, "server answered a request with 202 Accepted")
        elif 300 <= status < 400:
            self._fail(request_id, INVALID_REQUEST, f"redirect (HTTP {status}) not followed")
        else:
            self._fail(request_id, INTERNAL_ERROR, f"HTTP {status} from the server")
        return False

    def _answer(self, request_id: int, payload: bytes) -> bool:
        """The response to our request, handed back unparsed when its id can be found in place."""
        found = lean_response(payload)
        if found is not None and found[0] == request_id:
            call = self.calls.pop(request_id, None)
            if call is not None:
                call.answered(payload, found[1], found[2])
            return True
        try:
            message = types.jsonrpc_message_adapter.validate_json(payload, by_name=False)
        except ValueError as exc:
            self._fail(request_id, PARSE_ERROR, f"unreadable response: {str(exc).splitlines()[0][:120]}")
            return True
        if not isinstance(message, types.JSONRPCResponse | types.JSONRPCError):
            return False
        call = self.calls.pop(request_id, None)
        if call is not None:
            call.answered_message(message)
        return True

    async def _message(self, request_id: int, data: bytes) -> bool:
        """One message on the reply stream: True once it was the response."""
        if lean_response(data) is not None or b'"method"' not in data:
            return self._answer(request_id, data)
        try:
            message = types.jsonrpc_message_adapter.validate_json(data, by_name=False)
        except ValueError:
            log.warning("upstream sent an unreadable message", server=self.report.server)
            return False
        if isinstance(message, types.JSONRPCResponse | types.JSONRPCError):
            return self._answer(request_id, data)
        handler = self.on_notification
        if isinstance(message, types.JSONRPCNotification) and message.method != "notifications/cancelled" and handler:
            try:
                notification = types.server_notification_adapter.validate_python(
                    {"method": message.method, "params": message.params}, by_name=False
                )
            except ValueError:
                log.warning("upstream sent an unreadable notification", server=self.report.server, method=message.method)
                return False
            await handler(notification)
            return False
        # A request riding on our call (or a cancellation of one): the SDK's session handles it,
        # in a context that names the call as its cause (the stream carries the sender's context),
        # so a sampling or elicitation request reaches the client whose call this is.
        token = CURRENT_CALLER.set(self.calls.get(request_id))
        try:
            with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await self._deliver(SessionMessage(message))
        finally:
            CURRENT_CALLER.reset(token)
        return False

    def _target(self) -> str | None:
        """Where calls and notifications are POSTed: the pool's URL."""
        return None

    async def _notify(self, frame: bytes) -> None:
        with suppress(HttpError, OSError):
            async with self.pool.request("POST", self._headers(), frame, target=self._target()) as response:
                await response.read()


class SseChannel(HttpChannel):
    """Raw tools/call requests to a server on the legacy SSE transport.

    A call is a POST of its frame to the session's message endpoint (answered
    202); its answer is an event on the session's one stream, which
    `upstream/sse_session.py` reads: it hands the answers to our (negative) ids
    to `take_raw()` before parsing anything, and the rest to the SDK's session.
    """

    def __init__(self, pool: Pool, *, report: TransportReport) -> None:
        super().__init__(
            pool,
            session_headers=dict,
            deliver=_nowhere,
            session_lost=lambda: None,
            report=report,
            max_event_bytes=0,
        )
        self.endpoint: str | None = None
        """The session's message endpoint (path and query), once the server has named it."""

    def _headers(self) -> dict[str, str]:
        return {"content-type": _JSON}

    def _target(self) -> str | None:
        return self.endpoint

    async def _exchange(self, request_id: int, frame: bytes) -> None:
        if self.endpoint is None:
            self._fail(request_id, INTERNAL_ERROR, "the server's message endpoint is not known")
            return
        status = await self.post(frame)
        if not 200 <= status < 300:
            self._fail(request_id, INTERNAL_ERROR, f"HTTP {status} from the server")

    async def post(self, body: bytes) -> int:
        """POST one message to the session's message endpoint; its status (an error one is reported)."""
        target = self.endpoint
        async with self.pool.request("POST", self._headers(), body, target=target) as response:
            await response.read()
        if not 200 <= response.status < 300:
            self.report.http_error = masker.mask(f"HTTP {response.status} from POST {self.pool.host}:{self.pool.port}{target}")
        return response.status

    def take_raw(self, data: bytes) -> bool:
        """True if the event's `data` answers a raw call (then it went to the call, unparsed)."""
        found = lean_response(data)
        if found is None:
            return False
        call = self.calls.pop(found[0], None)
        if call is not None:
            call.answered(data, found[1], found[2])
        return True  # ours even if forgotten (cancelled, timed out): the session never asked


async def _nowhere(message: SessionMessage) -> None:
    """SSE servers send their requests on the session's stream, never on a call's reply."""

