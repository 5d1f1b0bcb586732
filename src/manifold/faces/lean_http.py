"""The HTTP face's lean path: a plain tools/call or tools/list POST answered without the SDK's server.

The SDK's streamable-HTTP server parses every POST into models, hands it to
the session's dispatcher over memory streams, and answers on an SSE response
(sse-starlette) fed by another task: several milliseconds of CPU per call
here. For a plain tools/call in an established session (faces/lean.py says
what plain is) the session manager hands the buffered body here instead: the
call goes to the upstream's raw channel, and its answer goes back on this
POST as an SSE stream, as the SDK's transport frames it: one event when nothing
else came first, else the log lines the upstream sent during the call, then
the answer (one JSON body when the server is set to answer JSON).
A plain tools/list is answered at once with the face's cached page
(faces/mcp.py `ToolPages`), framed as the SDK's transport frames an answer.

What the SDK's transport checks first is checked here too (Host/Origin, the
session's owner, Accept and Content-Type); a request that fails any check,
or is not plain, takes the SDK's path and gets its answer or its error.
Server-to-client requests during a lean call (sampling, elicitation, roots)
go to the client on its GET stream, so a client that can be asked such
things takes the lean path only while that stream is open.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
from mcp.client.streamable_http import DEFAULT_MAX_SSE_EVENT_SIZE
from mcp.server.connection import Connection
from starlette.types import Send

from manifold.faces import lean
from manifold.faces.lean import LeanCall

if TYPE_CHECKING:
    from manifold.faces.mcp import McpFace


class _Exchange:
    """One lean call's way back to its POST: log lines first, then the answer."""

    __slots__ = ("_connection", "frames", "final", "ready")

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.frames: list[bytes] = []
        self.final = False  # the answer is in `frames` (or the call was cancelled: no answer comes)
        self.ready = anyio.Event()

    def put(self, frame: bytes, *, final: bool = False) -> None:
        if self.final:
            return
        if frame:
            self.frames.append(frame)
        self.final = final
        self.ready.set()

    async def batches(self, call: LeanCall) -> AsyncIterator[tuple[list[bytes], bool]]:
        """What came back, as it comes: (frames, whether the last is the answer); the call's
        timeout applies while waiting."""
        deadline = call.deadline
        while True:
            if not self.frames and not self.final:
                with anyio.move_on_after(deadline - anyio.current_time()) as waiting:
                    await self.ready.wait()
                self.ready = anyio.Event()
                if waiting.cancelled_caught:
                    deadline = math.inf
                    await lean.time_out(call)
                    continue
            # Taken together: more frames (the answer too) may come in while the caller sends these.
            frames, final, self.frames = self.frames, self.final, []
            yield frames, final
            if final:
                return

    # What the gateway's bridge asks of a caller (faces/mcp.py).

    async def send_request(self, request: Any, result_type: Any = None, metadata: Any = None) -> Any:
        return await self._connection.send_request(request)

    async def send_log_message(self, level: Any, data: Any, logger: str | None = None, related_request_id: Any = None) -> None:
        params: dict[str, Any] = {"level": level, "data": data}
        if logger is not None:
            params["logger"] = logger
        self.put(lean.dumps({"jsonrpc": "2.0", "method": "notifications/message", "params": params}))


class LeanHttp:
    """Lean tools/call and tools/list for the streamable-HTTP face's sessions."""

    def __init__(self, face: McpFace) -> None:
        self.face = face
        self.gateway = face.gateway
        self.calls: dict[tuple[str, int | str], LeanCall] = {}

    async def handle(
        self,
        session_id: str,
        connection: Connection,
        body: bytes,
        send: Send,
        *,
        get_stream: bool,
        query: Mapping[str, str] | None,
        sse: bool,
    ) -> bool:
        """Serve this POST if it is a plain tools/call, cancels one, or is a plain tools/list (`query`
        is its query string, where a client asks for a mode; `sse`: an answer is an SSE event, as
        the SDK's would be); False to leave it to the SDK."""
        frame = lean.parse(body)
        if frame is None:
            return False
        if frame["method"] == "tools/list":
            answer = self.face.lean_list(connection, frame, query, "http")
            if answer is None:
                return False
            await _answer(send, session_id, answer, sse=sse)
            return True
        if frame["method"] == "tools/call":

            async def respond(call: LeanCall, exchange: _Exchange) -> None:
                await self._respond(session_id, call, exchange, send, sse=sse)

            return await self.call(session_id, connection, frame, respond, get_stream=get_stream, face="http")

        async def accepted() -> None:
            await _send(send, 202, None, session_id, b"", more=False)

        return await self.cancel(session_id, frame, accepted)

    async def call(
        self,
        session_id: str,
        connection: Connection,
        frame: dict[str, Any],
        respond: Callable[[LeanCall, _Exchange], Awaitable[None]],
        *,
        get_stream: bool,
        face: str,
    ) -> bool:
        """Start a plain tools/call and have `respond` deliver what comes back; False if not plain."""
        if not lean.ready(connection):
            return False
        request_id = frame.get("id")
        if isinstance(request_id, bool) or not isinstance(request_id, int | str):
            return False
        key = (session_id, request_id)
        if key in self.calls or not (get_stream or _unaskable(connection)):
            return False
        route = lean.plan(self.gateway, frame.get("params"))
        if route is None:
            return False
        exchange = _Exchange(connection)

        def finish(call: LeanCall, answer: bytes, outcome: str) -> None:
            if self.calls.get(key) is not call:
                return
            del self.calls[key]
            lean.done(self.gateway, call, outcome)
            exchange.put(answer, final=True)

        call = lean.start(route, request_id, exchange, finish)
        if call is None:
            return False
        self.calls[key] = call
        self.gateway.metrics.lean_calls.labels(face).inc()
        try:
            await lean.send(call, route.params)
            await respond(call, exchange)
        finally:
            if self.calls.get(key) is call:  # the server is shutting down under it
                del self.calls[key]
                lean.done(self.gateway, call, "failed")
                with anyio.CancelScope(shield=True):
                    await lean.cancel_upstream(call, "gateway shutting down")
        return True

    async def _respond(self, session_id: str, call: LeanCall, exchange: _Exchange, send: Send, *, sse: bool) -> None:
        """The answer alone when nothing came before it (`_answer`); else an SSE stream, as it comes."""
        started = False
        async for frames, final in exchange.batches(call):
            if final and not started and len(frames) <= 1:
                if frames:
                    await _answer(send, session_id, frames[0], sse=sse)
                else:  # cancelled by its client: no answer
                    await _send(send, 200, "text/event-stream", session_id, b"", more=False)
                return
            if not started:
                await _send(send, 200, "text/event-stream", session_id, b"", more=True)
                started = True
            events = b"".join(sse_event(frame) for frame in frames)
            await _body(send, events, more=not final)

    async def cancel(self, session_id: str, frame: dict[str, Any], accepted: Callable[[], Awaitable[None]]) -> bool:
        """A client's notifications/cancelled for one of its lean calls: acknowledged, and passed on."""
        request_id = lean.cancelled_id(frame)
        call = self.calls.pop((session_id, request_id), None) if request_id is not None else None
        if call is None:
            return False  # not ours: the SDK cancels its own requests
        lean.done(self.gateway, call, "failed")
        call.session.put(b"", final=True)  # the call's way back ends without an answer
        await accepted()
        await lean.cancel_upstream(call, frame["params"].get("reason"))
        return True


def _unaskable(connection: Connection) -> bool:
    """The client declared none of what an upstream can ask of it during a call."""
    params = connection.client_params
    capabilities = params.capabilities if params is not None else None
    if capabilities is None:
        return True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # roots is deprecated in 2026-07-28, alive before
        return capabilities.sampling is None and capabilities.elicitation is None and capabilities.roots is None


async def _answer(send: Send, session_id: str, frame: bytes, *, sse: bool) -> None:
    """One answer as an SSE event, as the SDK's transport frames it; a JSON body when the server
    answers JSON, or when it is larger than the SDK's client takes in one event (1 MiB by default;
    it takes a JSON body of any size).

    SSE not only for sameness: the SDK's client survives an SSE answer cut short (a replica killed
    mid-answer fails that call), but not a JSON body cut short, which takes its whole session down.
    """
    if sse and len(frame) < DEFAULT_MAX_SSE_EVENT_SIZE:
        await _send(send, 200, "text/event-stream", session_id, sse_event(frame), more=False)
    else:
        await _send(send, 200, "application/json", session_id, frame, more=False)


def sse_event(frame: bytes) -> bytes:
    """One JSON-RPC frame as an SSE `message` event."""
    return b"".join((b"event: message\r\ndata: ", frame.rstrip(), b"\r\n\r\n"))


async def _send(send: Send, status: int, content_type: str | None, session_id: str, body: bytes, *, more: bool) -> None:
    headers = [(b"mcp-session-id", session_id.encode("latin-1"))]
    if content_type is not None:
        headers.append((b"content-type", content_type.encode("latin-1")))
    if content_type == "text/event-stream":
        headers.append((b"cache-control", b"no-cache, no-transform"))
    elif not more:
        headers.append((b"content-length", str(len(body)).encode("latin-1")))
    try:
        await send({"type": "http.response.start", "status": status, "headers": headers})
    except OSError:
        return  # the client is gone
    await _body(send, body, more=more)


async def _body(send: Send, body: bytes, *, more: bool) -> None:
    try:
        await send({"type": "http.response.body", "body": body, "more_body": more})
    except OSError:
        pass
