"""The stdio face, with a lean forwarding path for tools/call.

The SDK's `stdio_server()` hops to a worker thread for every line it reads and
writes, and every frame is parsed into models, dispatched and re-serialised.
That is most of the gateway's cost per call. Here stdin is read on the event
loop (`StdinLines`) and stdout written with non-blocking writes, and a
tools/call for a tool of a ready stdio upstream skips the SDK: the request is
re-encoded with the upstream's tool name and a request id of our own, written
to the upstream's stdin, and the upstream's response line comes back with only
its id replaced (upstream/stdio.py finds it by that id without parsing it).

Everything else goes through the SDK's server as before: initialize,
notifications, server-to-client requests, list and resource requests, and any
tools/call that is not plain (a progress token, extra params, a tool the
catalogue does not know yet, a 2026-07-28 client, tracing on). A lean call is
still a caller (sampling, elicitation and roots during it reach this client),
is cancelled upstream when the client cancels it, times out like any call,
fails at once when its server goes away, and is counted in the metrics.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import stat
import sys
import time
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any

import anyio
import mcp_types as types
from mcp.shared._context_streams import create_context_streams
from mcp.shared.message import SessionMessage
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

import structlog

from manifold import tracing
from manifold.faces.disclosure import META_NAMES
from manifold.faces.stdin import StdinLines

log = structlog.get_logger("manifold.stdio")

if TYPE_CHECKING:
    from manifold.faces.mcp import McpFace
    from manifold.upstream.connection import Upstream

_HOT = b'"tools/call"'
_CANCEL = b'"notifications/cancelled"'
_IS_ERROR = re.compile(rb'"isError"\s*:\s*true')
_PLAIN_PARAMS = frozenset({"name", "arguments", "_meta"})
_SWEEP = 0.1  # how often deadlines of lean calls are checked while any is in flight
_HIGH_WATER = 1 << 20  # the SDK's writer waits when this much output is still unsent
_ENVELOPE_KEYS = frozenset(
    {
        types.PROTOCOL_VERSION_META_KEY,
        types.CLIENT_INFO_META_KEY,
        types.CLIENT_CAPABILITIES_META_KEY,
        types.LOG_LEVEL_META_KEY,
    }
)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


class FrameWriter:
    """Whole frames to a file descriptor without a thread: written at once, the rest when writable."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        mode = os.fstat(fd).st_mode
        self._pollable = stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)
        self._was_blocking = os.get_blocking(fd)
        if self._pollable:
            os.set_blocking(fd, False)
        self._pending = bytearray()
        self._wake = anyio.Event()
        self._progress = anyio.Event()
        self.broken = False

    def write(self, data: bytes) -> None:
        if self.broken:
            return
        if not self._pending:
            view = memoryview(data)
            while view:
                try:
                    written = os.write(self.fd, view)
                except BlockingIOError:
                    break
                except OSError:
                    self.broken = True  # the client is gone; its stdin EOF ends the session
                    return
                view = view[written:]
                if self._pollable:
                    break
            if not view:
                return
            data = bytes(view)
        self._pending += data
        self._wake.set()

    async def run(self) -> None:
        """Flush what a write could not hand over at once."""
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            while self._pending and not self.broken:
                await anyio.wait_writable(self.fd)
                try:
                    written = os.write(self.fd, self._pending)
                except BlockingIOError:
                    continue
                except OSError:
                    self.broken = True
                    self._pending.clear()
                    break
                del self._pending[:written]
                self._progress.set()
                self._progress = anyio.Event()

    async def drain(self, limit: int = _HIGH_WATER) -> None:
        while len(self._pending) > limit and not self.broken:
            await self._progress.wait()

    def close(self) -> None:
        if self._pollable:
            with suppress(OSError):
                os.set_blocking(self.fd, self._was_blocking)


class _LeanSession:
    """What a server-to-client request or log line during a lean call needs of its caller."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    async def send_request(self, request: Any, result_type: Any = None, metadata: Any = None) -> Any:
        return await self._connection.send_request(request)

    async def send_log_message(self, level: Any, data: Any, logger: str | None = None, related_request_id: Any = None) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # logging is deprecated in 2026-07-28, alive before
            await self._connection.log(level, data, logger)


class LeanCall:
    """One tools/call on the lean path: the client's id, the upstream's, and the way back."""

    __slots__ = ("face", "request_id", "id_json", "upstream", "channel", "tool", "session", "uid", "started", "deadline")

    def __init__(self, face: StdioFace, request_id: int | str, upstream: Upstream, channel: Any, tool: str, session: Any) -> None:
        self.face = face
        self.request_id = request_id
        self.id_json = json.dumps(request_id).encode()
        self.upstream = upstream
        self.channel = channel
        self.tool = tool
        self.session = session
        self.uid = 0
        self.started = time.perf_counter()
        self.deadline = anyio.current_time() + upstream.config.timeout

    # Called by the upstream's stdout reader (upstream/stdio.py RawCall).

    def answered(self, line: bytes, id_span: tuple[int, int], is_error: bool) -> None:
        if is_error:
            with suppress(ValueError, AttributeError, TypeError):
                self._error(json.loads(line)["error"])
                return
            self._error({"code": types.INTERNAL_ERROR, "message": "the server sent an unreadable error"})
            return
        start, end = id_span
        frame = b"".join((line[:start], self.id_json, line[end:], b"\n"))
        self.face.finish(self, frame, "error" if _IS_ERROR.search(line) else "ok")

    def answered_message(self, message: Any) -> None:
        if isinstance(message, types.JSONRPCError):
            self._error(message.error.model_dump(by_alias=True, exclude_none=True))
            return
        result = message.result
        frame = _dumps({"jsonrpc": "2.0", "id": self.request_id, "result": result})
        self.face.finish(self, frame, "error" if isinstance(result, dict) and result.get("isError") else "ok")

    def lost(self) -> None:
        self.upstream.connection_lost()
        self.fail(CONNECTION_CLOSED, f"server '{self.upstream.name}': connection lost during tools/call")

    def _error(self, error: dict[str, Any]) -> None:
        message = f"server '{self.upstream.name}': {error.get('message', '')}"
        self.fail(error.get("code", types.INTERNAL_ERROR), message, error.get("data"))

    def fail(self, code: int, message: str, data: Any = None) -> None:
        error: dict[str, Any] = {"code": code, "message": message}
        if data is not None:
            error["data"] = data
        self.face.finish(self, _dumps({"jsonrpc": "2.0", "id": self.request_id, "error": error}), "failed")


class StdioFace:
    """Serves one client on stdin/stdout: lean tools/call here, everything else through the SDK."""

    def __init__(self, face: McpFace, stdin: StdinLines, writer: FrameWriter) -> None:
        self.face = face
        self.gateway = face.gateway
        self.stdin = stdin
        self.writer = writer
        self.calls: dict[int | str, LeanCall] = {}
        self._connection: Any = None
        self._session: _LeanSession | None = None
        self._busy = anyio.Event()
        self.answered = anyio.Event()  # the first frame is out (the answer to `initialize`)
        self.lean_calls = 0  # how many calls took the lean path (tests and the bench read it)

    # --- the two SDK streams ------------------------------------------------------

    async def read(self, sink: Any) -> None:
        async with sink:
            while (line := await self.stdin.read_line()) is not None:
                if (_HOT in line or _CANCEL in line) and await self._lean(line):
                    continue
                try:
                    message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                except Exception as exc:  # noqa: BLE001 - the SDK answers a bad frame itself
                    await sink.send(exc)
                    continue
                await sink.send(SessionMessage(message))

    async def write(self, source: Any) -> None:
        async with source:
            async for message in source:
                data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                self.writer.write(data.encode() + b"\n")
                await self.writer.drain()
                self.answered.set()

    # --- the lean path ----------------------------------------------------------------

    def _client(self) -> Any:
        if self._connection is None:
            connection = next(iter(self.face.tracker.connections), None)
            if connection is None:
                return None
            self._connection = connection
            self._session = _LeanSession(connection)
        return self._connection

    async def _lean(self, line: bytes) -> bool:
        try:
            frame = json.loads(line)
        except ValueError:
            return False
        if not isinstance(frame, dict) or frame.get("jsonrpc") != "2.0":
            return False
        method = frame.get("method")
        if method == "tools/call":
            return await self._call(frame)
        if method == "notifications/cancelled":
            return await self._cancelled(frame)
        return False

    async def _call(self, frame: dict[str, Any]) -> bool:
        if tracing.enabled:
            return False
        connection = self._client()
        if (
            connection is None
            or not connection.initialize_accepted
            or connection.protocol_version in MODERN_PROTOCOL_VERSIONS
        ):
            return False
        request_id = frame.get("id")
        params = frame.get("params")
        if (
            isinstance(request_id, bool)
            or not isinstance(request_id, int | str)
            or request_id in self.calls
            or not isinstance(params, dict)
            or not params.keys() <= _PLAIN_PARAMS
        ):
            return False
        name = params.get("name")
        arguments = params.get("arguments") or {}
        meta = params.get("_meta")
        if not isinstance(name, str) or name in META_NAMES or not isinstance(arguments, dict):
            return False
        if meta is not None:
            if not isinstance(meta, dict) or "progressToken" in meta:
                return False  # progress is mapped by the SDK's session: the full path
            meta = {key: value for key, value in meta.items() if key not in _ENVELOPE_KEYS}
        route = self.gateway.catalog.route_tool(name)
        if route is None:
            return False  # the full path waits for servers still starting, and has the error
        upstream = self.gateway.upstreams.get(route.server)
        channel = upstream.raw_channel if upstream is not None else None
        if upstream is None or channel is None:
            return False
        tool = route.name
        shaping = upstream.config.tools
        if shaping is not None and shaping.rename:
            tool = {new: old for old, new in shaping.rename.items()}.get(tool, tool)
        call = LeanCall(self, request_id, upstream, channel, tool, self._session)
        try:
            call.uid = channel.start(call)
        except anyio.BrokenResourceError:
            return False
        forwarded: dict[str, Any] = {"name": tool, "arguments": arguments}
        if meta:
            forwarded["_meta"] = meta
        if not self.calls:
            self._busy.set()
        self.calls[request_id] = call
        upstream.callers.append(call)
        self.lean_calls += 1
        try:
            await channel.send(_dumps({"jsonrpc": "2.0", "id": call.uid, "method": "tools/call", "params": forwarded}))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            if channel.forget(call.uid) is not None:
                call.lost()
        return True

    def finish(self, call: LeanCall, frame: bytes, outcome: str) -> None:
        """Answer the client (once) and account for the call."""
        if self.calls.pop(call.request_id, None) is not call:
            return
        self.writer.write(frame)
        self._done(call, outcome)

    def _done(self, call: LeanCall, outcome: str) -> None:
        with suppress(ValueError):
            call.upstream.callers.remove(call)
        self.gateway.metrics.observe_call(call.upstream.name, call.tool, time.perf_counter() - call.started, outcome)

    async def _cancelled(self, frame: dict[str, Any]) -> bool:
        params = frame.get("params")
        request_id = params.get("requestId") if isinstance(params, dict) else None
        if isinstance(request_id, bool) or not isinstance(request_id, int | str):
            return False
        call = self.calls.pop(request_id, None)
        if call is None:
            return False  # not ours: the SDK cancels its own requests
        self._done(call, "failed")
        await self._cancel_upstream(call, params.get("reason"))
        return True

    async def _cancel_upstream(self, call: LeanCall, reason: Any) -> None:
        if call.channel.forget(call.uid) is None:
            return  # already answered or the connection is gone
        notice: dict[str, Any] = {"requestId": call.uid}
        if isinstance(reason, str):
            notice["reason"] = reason
        with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            await call.channel.send(_dumps({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": notice}))

    async def sweep(self) -> None:
        """Fail lean calls past their server's timeout, as the SDK's session would."""
        while True:
            if not self.calls:
                self._busy = anyio.Event()
                await self._busy.wait()
            await anyio.sleep(_SWEEP)
            now = anyio.current_time()
            for call in [c for c in self.calls.values() if c.deadline <= now]:
                limit = call.upstream.config.timeout
                call.fail(REQUEST_TIMEOUT, f"server '{call.upstream.name}' did not answer tools/call within {limit:g} s")
                await self._cancel_upstream(call, "timed out")


def _claim_stdout() -> tuple[int, int | None]:
    """A private copy of stdout for the wire; fd 1 then points at stderr, so stray prints miss it."""
    try:
        private = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
    except OSError:
        return 1, None
    try:
        os.dup2(2, 1)
    except OSError:
        os.close(private)
        return 1, None
    return private, private


def _release_stdout(private: int | None) -> None:
    if private is None:
        return
    with suppress(OSError):
        os.dup2(private, 1)
    with suppress(OSError):
        os.close(private)


@asynccontextmanager
async def serve_stdio(face: McpFace, stdin: StdinLines | None = None) -> AsyncIterator[tuple[Any, Any, StdioFace]]:
    """Yield the SDK's (read, write) streams for `face.server.run`, and the StdioFace serving them."""
    sys.stdout.flush()
    fd, private = _claim_stdout()
    writer = FrameWriter(fd)
    stdio = StdioFace(face, stdin if stdin is not None else StdinLines(), writer)
    read_writer, read_stream = create_context_streams[SessionMessage | Exception](0)
    write_stream, write_reader = create_context_streams[SessionMessage](0)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(stdio.read, read_writer)
            tg.start_soon(stdio.write, write_reader)
            tg.start_soon(writer.run)
            tg.start_soon(stdio.sweep)
            try:
                yield read_stream, write_stream, stdio
            finally:
                with anyio.move_on_after(1, shield=True):
                    await writer.drain(0)
                tg.cancel_scope.cancel()
    finally:
        writer.close()
        stdio.stdin.close()
        _release_stdout(private)
        log.info("stdio client gone", lean_calls=stdio.lean_calls)
