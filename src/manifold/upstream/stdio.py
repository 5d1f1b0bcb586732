"""The stdio transport: one upstream server as a child process, guarded by a reaper.

Like the SDK's `stdio_client` (newline-delimited JSON-RPC over the child's
stdin and stdout), with what a long-running gateway needs on top:

- No orphans. The server runs under `reaper.py`, which kills its whole process
  group when Manifold closes the watch pipe or dies (SIGKILL included), and
  when the server exits on its own (grandchildren of `sh -c`/`npx` wrappers).
  The server's pipes are ours directly; the reaper is not on the message path.
- Its stderr is read here, never passed through blindly: every line is masked,
  logged with the server's name and kept in a short tail for the operator.
- A misbehaving server costs only its own calls. Lines that are not JSON-RPC
  are counted and logged (rate-limited), never fatal; a malformed response
  that still names a request id fails that request at once; a message over
  `MAX_MESSAGE_BYTES` is dropped without being buffered, and the request it
  answered fails with an error that says so.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any, Protocol

import anyio
import anyio.lowlevel
import mcp_types as types
import structlog
from anyio.abc import Process
from mcp.shared.message import SessionMessage
from mcp_types import INTERNAL_ERROR, ErrorData, JSONRPCError

from manifold.config import StdioServerConfig
from manifold.logging import masker
from manifold.upstream import reaper
from manifold.upstream.report import STDERR_LINE_CHARS, TransportReport
from manifold.upstream.spawn import Watch, spawn

log = structlog.get_logger("manifold.upstream")

MAX_MESSAGE_BYTES = 32 * 1024 * 1024
"""The largest message accepted from a stdio server (one line of JSON)."""

STDIN_GRACE = 2.0
"""Seconds a server gets to exit after its stdin closes (the MCP shutdown sequence)."""

_WRITER_FLUSH = 0.5
_EXIT_POLL = 0.01
_BAD_LINES_LOGGED = 5  # then one line in every _BAD_LINES_EVERY
_BAD_LINES_EVERY = 1000
_READ_CHUNK = 65536
_EDGE = 4096  # bytes kept from each end of an oversized message, to find its id

_ID = r'(-?\d+|"(?:[^"\\]|\\.)*")'
_HEAD_ID = re.compile(rb'^\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"id"\s*:\s*' + _ID.encode())
_TAIL_ID = re.compile(rb'"id"\s*:\s*' + _ID.encode() + rb'\s*(?:,\s*"jsonrpc"\s*:\s*"2\.0"\s*)?\}\s*$')
# A response to a raw (lean) request: its id is negative, the SDK session's never are.
# The id first (Python SDKs) or last (JSON.stringify of {result, jsonrpc, id}).
_LEAN_HEAD = re.compile(rb'\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"id"\s*:\s*(-\d+)\s*,\s*"(result|error)"\s*:')
_LEAN_TAIL = re.compile(rb'"id"\s*:\s*(-\d+)\s*(?:,\s*"jsonrpc"\s*:\s*"2\.0"\s*)?\}\s*$')
_LEAN_TAIL_START = re.compile(rb'\s*\{\s*"(result|error)"\s*:')
_TAIL_WINDOW = 96
_STDIN_HIGH_WATER = 256 * 1024


@asynccontextmanager
async def open_stdio(
    config: StdioServerConfig, report: TransportReport | None = None
) -> AsyncIterator[tuple[Any, Any]]:
    """Start the server under a reaper (or take its early start) and yield the session's streams."""
    report = report if report is not None else TransportReport()
    spawned = await spawn(config)
    try:
        process = spawned.process
        report.spawn_seconds = spawned.seconds
        report.pid = process.pid
        # Whatever happens from here, the finally below closes the watch pipe,
        # and that alone has the reaper take the server's group down.
        pipes = _StdioPipes(process, report, spawned.watch)
        report.raw = pipes
        async with anyio.create_task_group() as tg:
            tg.start_soon(pipes.read_stdout)
            tg.start_soon(pipes.write_stdin)
            tg.start_soon(pipes.read_stderr)
            try:
                yield pipes.read_stream, pipes.write_stream
            finally:
                # Shutdown must finish even under cancellation, or the server
                # would be left running; every wait inside is bounded.
                with anyio.CancelScope(shield=True):
                    await pipes.shutdown()
                tg.cancel_scope.cancel()
    finally:
        report.raw = None
        spawned.watch.close()


class RawCall(Protocol):
    """A request sent as a raw frame; its response comes back without being parsed into models."""

    def answered(self, line: bytes, id_span: tuple[int, int], is_error: bool) -> None:
        """The response line as the server wrote it, the span of its id, and whether it is an error."""

    def answered_message(self, message: Any) -> None:
        """A response that needed the full parser (unusual key order): a JSONRPCResponse or JSONRPCError."""

    def lost(self) -> None:
        """The connection ended before the response came."""

    def failed(self, code: int, message: str, data: Any = None) -> None:
        """The transport could not get a response (an HTTP error, a stream that ended early)."""


class _StdioPipes:
    """The three pipe tasks of one server process and its shutdown sequence.

    It is also the raw channel of the lean forwarding path (see faces/stdio.py):
    `start()` registers a call under a negative id, `send()` writes its frame,
    and the stdout reader hands the matching response line straight back.
    """

    def __init__(self, process: Process, report: TransportReport, watch: Watch) -> None:
        self.process = process
        self.report = report
        self.watch = watch
        self.read_writer, self.read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        self.write_stream, self.write_reader = anyio.create_memory_object_stream[SessionMessage](0)
        self.writer_done = anyio.Event()
        self.stdout_done = anyio.Event()
        self.stderr_done = anyio.Event()
        self.bad_lines = 0
        self.shutting_down = False
        self.closed = False
        self.raw_calls: dict[int, RawCall] = {}
        self._next_raw = -1
        self._stdin_lock = anyio.Lock(fast_acquire=True)

    # --- the raw channel ----------------------------------------------------------

    def start(self, call: RawCall) -> int:
        """Register `call` and return the request id its frame must carry."""
        if self.closed:
            raise anyio.BrokenResourceError
        request_id = self._next_raw
        self._next_raw -= 1
        self.raw_calls[request_id] = call
        return request_id

    def forget(self, request_id: int) -> RawCall | None:
        return self.raw_calls.pop(request_id, None)

    async def call(self, request_id: int, frame: bytes) -> None:
        """Send the frame of a call `start()` registered."""
        await self.send(frame)

    async def notify(self, frame: bytes) -> None:
        await self.send(frame)

    async def send(self, frame: bytes) -> None:
        """Write one whole frame (newline included) to the server's stdin.

        asyncio's pipe writer takes a whole frame synchronously (what the pipe
        cannot take now is buffered), so frames never interleave: the drain is
        only needed once the buffer grows. anyio's `send()` would also yield
        to the event loop after every frame.
        """
        stdin = self.process.stdin
        assert stdin is not None
        writer = getattr(stdin, "_stream", None)
        if writer is None or self.closed or writer.is_closing():
            async with self._stdin_lock:
                await stdin.send(frame)
            return
        try:
            writer.write(frame)
            if writer.transport.get_write_buffer_size() > _STDIN_HIGH_WATER:
                async with self._stdin_lock:
                    await writer.drain()
        except (ConnectionResetError, BrokenPipeError, RuntimeError) as exc:
            raise anyio.BrokenResourceError from exc

    def _raw_response(self, line: bytes) -> bool:
        """Hand a response to a raw call back as bytes; False if the line is not one."""
        found = lean_response(line)
        if found is None:
            return False
        call = self.raw_calls.pop(found[0], None)
        if call is None:
            return False
        call.answered(line, found[1], found[2])
        return True

    def _fail_raw_calls(self) -> None:
        self.closed = True
        calls, self.raw_calls = self.raw_calls, {}
        for call in calls.values():
            call.lost()

    # --- stdout: messages ----------------------------------------------------

    async def _deliver(self, item: SessionMessage | Exception) -> bool:
        try:
            await self.read_writer.send(item)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return False
        return True

    async def read_stdout(self) -> None:
        assert self.process.stdout is not None
        buffer = bytearray()
        oversized = 0  # bytes of the current line, once it is over the limit
        head = b""
        tail = bytearray()
        delivering = True  # once the session is gone, keep draining so the server never blocks
        try:
            async for chunk in self.process.stdout:
                start = 0
                while start <= len(chunk):
                    end = chunk.find(b"\n", start)
                    piece = chunk[start:] if end < 0 else chunk[start:end]
                    if oversized:
                        oversized += len(piece)
                        tail += piece
                        del tail[:-_EDGE]
                    elif len(buffer) + len(piece) > MAX_MESSAGE_BYTES:
                        oversized = len(buffer) + len(piece)
                        head = bytes((buffer + piece)[:_EDGE])
                        tail = bytearray((buffer + piece)[-_EDGE:])
                        buffer.clear()
                    else:
                        buffer += piece
                    if end < 0:
                        break
                    start = end + 1
                    if oversized:
                        item = self._oversized(head, bytes(tail), oversized)
                        oversized, head, tail = 0, b"", bytearray()
                    else:
                        line = piece if len(buffer) == len(piece) else bytes(buffer)
                        buffer.clear()
                        if self.raw_calls and self._raw_response(line):
                            continue
                        item = self._parse(line)
                    if self.raw_calls and item is not None and self._raw_message(item):
                        continue
                    if item is not None and delivering:
                        delivering = await self._deliver(item)
            if not self.shutting_down:
                self.report.went_away = True
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, OSError):
            pass  # our shutdown closed the pipe under the read
        finally:
            self.read_writer.close()  # EOF for the session: in-flight requests fail at once
            self._fail_raw_calls()
            self.stdout_done.set()

    def _raw_message(self, item: SessionMessage | Exception) -> bool:
        """A raw call's response in a shape the byte matcher did not know (keys in another order)."""
        message = getattr(item, "message", None)
        if not isinstance(message, types.JSONRPCResponse | JSONRPCError) or not isinstance(message.id, int):
            return False
        call = self.raw_calls.pop(message.id, None)
        if call is None:
            return False
        call.answered_message(message)
        return True

    def _parse(self, line: bytes) -> SessionMessage | None:
        if not line.strip():
            return None
        try:
            return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))
        except ValueError as exc:
            reason = _first_error(exc)
        self._bad_line(line, reason)
        request_id = _response_id(line)
        if request_id is None:
            return None
        # A response we cannot read: fail its request now rather than at its timeout.
        return _error_for(request_id, f"the server sent an invalid JSON-RPC response ({reason})")

    def _oversized(self, head: bytes, tail: bytes, size: int) -> SessionMessage | None:
        limit = MAX_MESSAGE_BYTES // (1024 * 1024)
        what = f"a message of {size / 1024 / 1024:.1f} MiB, over the {limit} MiB limit"
        self.report.bad_lines += 1
        match = _HEAD_ID.match(head) or _TAIL_ID.search(tail)
        self.report.log.warning("upstream sent an oversized message; dropped", bytes=size)
        if match is None:
            return None
        try:
            request_id = json.loads(match.group(1))
        except ValueError:  # pragma: no cover - the pattern only matches JSON numbers and strings
            return None
        return _error_for(request_id, f"the server sent {what}")

    def _bad_line(self, line: bytes, reason: str) -> None:
        self.report.bad_lines += 1
        self.bad_lines += 1
        if self.bad_lines <= _BAD_LINES_LOGGED or self.bad_lines % _BAD_LINES_EVERY == 0:
            text = masker.mask(line[:200].decode("utf-8", errors="replace"))
            self.report.log.warning(
                "upstream wrote a line that is not JSON-RPC on stdout; ignored",
                line=text,
                reason=reason,
                count=self.bad_lines,
            )

    # --- stdin: requests -----------------------------------------------------

    async def write_stdin(self) -> None:
        assert self.process.stdin is not None
        try:
            async with self.write_reader:
                async for message in self.write_reader:
                    data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    async with self._stdin_lock:
                        await self.process.stdin.send(data.encode() + b"\n")
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            # The server stopped reading: end the session rather than let requests hang.
            self.read_writer.close()
        finally:
            self.writer_done.set()

    # --- stderr: the operator's tail ----------------------------------------------

    async def read_stderr(self) -> None:
        assert self.process.stderr is not None
        buffer = bytearray()
        try:
            async for chunk in self.process.stderr:
                buffer += chunk
                *lines, rest = bytes(buffer).split(b"\n")
                buffer = bytearray(rest[: STDERR_LINE_CHARS * 4])
                for line in lines:
                    self.report.add_stderr(line)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, OSError):
            pass
        finally:
            if buffer:
                self.report.add_stderr(bytes(buffer))
            self.stderr_done.set()

    # --- shutdown ------------------------------------------------------------

    async def shutdown(self) -> None:
        """Flush, close stdin, give the server STDIN_GRACE, then have the reaper take the group down."""
        process = self.process
        self.shutting_down = True
        # Unblock a reader parked on delivery: a server stuck writing its stdout
        # cannot read its stdin, so the drain is what lets it see EOF and exit.
        self.read_stream.close()
        self.write_stream.close()
        with anyio.move_on_after(_WRITER_FLUSH):
            await self.writer_done.wait()
        await _close(process.stdin)
        if not await self._exited(STDIN_GRACE):
            self.watch.close()
            if not await self._exited(2 * reaper.GRACE + 1):
                self.report.log.warning("the reaper did not exit; killing it", pid=process.pid)
                with suppress(ProcessLookupError):
                    process.kill()
                await self._exited(1.0)
        self.watch.close()
        self.report.returncode = process.returncode
        # The group is gone, so the pipes are at EOF: let the readers take in
        # what is still buffered (the last stderr lines matter most).
        with anyio.move_on_after(0.5):
            await self.stdout_done.wait()
            await self.stderr_done.wait()
        await _close(process.stdout)
        await _close(process.stderr)
        _close_transport(process)

    async def _exited(self, timeout: float) -> bool:
        """Poll for the reaper's exit (`wait()` would also wait for pipes a survivor holds)."""
        deadline = anyio.current_time() + timeout
        while self.process.returncode is None:
            if anyio.current_time() >= deadline:
                return False
            await anyio.sleep(_EXIT_POLL)
        self.report.returncode = self.process.returncode
        return True


def lean_response(line: bytes) -> tuple[int, tuple[int, int], bool] | None:
    """(id, span of the id, is an error) of a response to a raw request, found without parsing."""
    match = _LEAN_HEAD.match(line)
    if match is not None:
        return int(match.group(1)), match.span(1), match.group(2) == b"error"
    start = _LEAN_TAIL_START.match(line)
    if start is None:
        return None
    match = _LEAN_TAIL.search(line, max(len(line) - _TAIL_WINDOW, 0))
    if match is None:
        return None
    return int(match.group(1)), match.span(1), start.group(1) == b"error"


def _error_for(request_id: Any, message: str) -> SessionMessage:
    return SessionMessage(
        JSONRPCError(jsonrpc="2.0", id=request_id, error=ErrorData(code=INTERNAL_ERROR, message=message))
    )


def _response_id(line: bytes) -> Any:
    """The id of something that looks like a response (an object with an id and no method)."""
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict) or "method" in obj:
        return None
    request_id = obj.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, int | str):
        return None
    return request_id


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        with suppress(Exception):
            first = errors()[0]
            if first.get("type") == "json_invalid":
                return "not JSON"
            return str(first.get("msg", "invalid"))[:120]
    return str(exc).splitlines()[0][:120]


async def _close(stream: Any) -> None:
    if stream is None:
        return
    with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        await stream.aclose()


def _close_transport(process: Process) -> None:
    """Close the asyncio subprocess transport (it warns at GC while a survivor holds a pipe)."""
    transport = getattr(getattr(process, "_process", None), "_transport", None)
    close = getattr(transport, "close", None)
    if callable(close):
        with suppress(PermissionError):
            close()
