"""The stdio face, with the lean forwarding path for tools/call (faces/lean.py).

The SDK's `stdio_server()` hops to a worker thread for every line it reads and
writes, and every frame is parsed into models, dispatched and re-serialised.
That is most of the gateway's cost per call. Here stdin is read on the event
loop (`StdinLines`) and stdout written with non-blocking writes; a plain
tools/call goes the lean way, a plain tools/list is answered with the cached
page's bytes, everything else (initialize, notifications, server-to-client
requests, other lists, resources, anything unusual) through the SDK's server
as before. Every frame, lean or the SDK's, is one `FrameWriter.write`, so
frames never interleave.
"""

from __future__ import annotations

import fcntl
import os
import stat
import sys
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any

import anyio
import mcp_types as types
from mcp.shared._context_streams import create_context_streams
from mcp.shared.message import SessionMessage

import structlog

from manifold import early as manifold_early
from manifold.early import EarlyAnswer
from manifold.faces import lean
from manifold.faces.lean import LeanCall
from manifold.faces.stdin import StdinLines

log = structlog.get_logger("manifold.stdio")

if TYPE_CHECKING:
    from manifold.faces.mcp import McpFace

_SWEEP = 0.1  # how often deadlines of lean calls are checked while any is in flight
_HIGH_WATER = 1 << 20  # the SDK's writer waits when this much output is still unsent


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


class StdioFace:
    """Serves one client on stdin/stdout: lean tools/call here, everything else through the SDK."""

    def __init__(self, face: McpFace, stdin: StdinLines, writer: FrameWriter, early: EarlyAnswer | None = None) -> None:
        self.face = face
        self.gateway = face.gateway
        self.stdin = stdin
        self.writer = writer
        self.calls: dict[int | str, LeanCall] = {}
        self._connection: Any = None
        self._session: _LeanSession | None = None
        self._busy = anyio.Event()
        self.answered = anyio.Event()  # the first frame is out (the answer to `initialize`)
        self.early = early
        self.lean_calls = 0  # how many calls took the lean path (tests and the bench read it)
        self.lean_lists = 0  # how many tools/list were answered from the cached page

    # --- the two SDK streams ------------------------------------------------------

    async def read(self, sink: Any) -> None:
        async with sink:
            while (line := await self.stdin.read_line()) is not None:
                if (lean.HOT in line or lean.CANCEL in line or lean.LIST in line) and await self._lean(line):
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
                if self._answered_early(message.message):
                    continue
                data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                self.writer.write(data.encode() + b"\n")
                await self.writer.drain()
                self.answered.set()

    def _answered_early(self, message: Any) -> bool:
        """The SDK's answer to the `initialize` manifold/early.py already answered: not sent twice."""
        early = self.early
        if early is None or early.result is None or not isinstance(message, types.JSONRPCResponse):
            return False
        if message.id != early.answered_id:
            return False
        self.early = None
        self.answered.set()
        if message.result != early.result:
            log.warning("the early initialize answer differs from the SDK's", early=early.result, sdk=message.result)
        return True

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
        frame = lean.parse(line)
        if frame is None:
            return False
        if frame["method"] == "tools/call":
            return await self._call(frame)
        if frame["method"] == "tools/list":
            return self._list(frame)
        return await self._cancelled(frame)

    def _list(self, frame: dict[str, Any]) -> bool:
        """A plain tools/list: the cached page, written at once (no wait: the read loop goes on)."""
        connection = self._client()
        answer = self.face.lean_list(connection, frame, None, "stdio") if connection is not None else None
        if answer is None:
            return False
        self.writer.write(answer)
        self.lean_lists += 1
        return True

    async def _call(self, frame: dict[str, Any]) -> bool:
        connection = self._client()
        if connection is None or not lean.ready(connection):
            return False
        request_id = frame.get("id")
        if isinstance(request_id, bool) or not isinstance(request_id, int | str) or request_id in self.calls:
            return False
        route = lean.plan(self.gateway, frame.get("params"))
        if route is None:
            return False
        call = lean.start(route, request_id, self._session, self.finish)
        if call is None:
            return False
        if not self.calls:
            self._busy.set()
        self.calls[request_id] = call
        self.lean_calls += 1
        self.gateway.metrics.lean_calls.labels("stdio").inc()
        await lean.send(call, route.params)
        return True

    def finish(self, call: LeanCall, frame: bytes, outcome: str) -> None:
        """Answer the client (once) and account for the call."""
        if self.calls.pop(call.request_id, None) is not call:
            return
        self.writer.write(frame)
        self._done(call, outcome)

    def _done(self, call: LeanCall, outcome: str) -> None:
        lean.done(self.gateway, call, outcome)

    async def _cancelled(self, frame: dict[str, Any]) -> bool:
        request_id = lean.cancelled_id(frame)
        call = self.calls.pop(request_id, None) if request_id is not None else None
        if call is None:
            return False  # not ours: the SDK cancels its own requests
        self._done(call, "failed")
        await lean.cancel_upstream(call, frame["params"].get("reason"))
        return True

    async def sweep(self) -> None:
        """Fail lean calls past their server's timeout, as the SDK's session would."""
        while True:
            if not self.calls:
                self._busy = anyio.Event()
                await self._busy.wait()
            await anyio.sleep(_SWEEP)
            now = anyio.current_time()
            for call in [c for c in self.calls.values() if c.deadline <= now]:
                await lean.time_out(call)


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
    early = manifold_early.current if stdin is None else None
    stdio = StdioFace(face, stdin if stdin is not None else StdinLines(early=early), writer, early)
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
        log.info("stdio client gone", lean_calls=stdio.lean_calls, lean_lists=stdio.lean_lists)
