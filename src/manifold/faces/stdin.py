"""Standard input as lines that a cancellation can interrupt, for the stdio face.

The SDK's `stdio_server()` reads stdin on a worker thread (`anyio.wrap_file`),
and a cancelled read still waits for the next line: on SIGINT or SIGTERM in
stdio mode the gateway could not shut down (nor stop its upstreams) until the
client wrote a line or closed stdin. `StdinLines` waits for readability on the
event loop instead and then reads only what is there, so shutdown is never
held up. What the event loop cannot watch (a regular file, /dev/null) is read
on a thread: it never blocks for long.

    async with stdio_server(stdin=StdinLines()) as (read, write): ...
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import sniffio

if TYPE_CHECKING:
    from manifold.early import EarlyAnswer

_CHUNK = 65536


class StdinLines:
    """An async iterator of text lines (newline kept) from a file descriptor, stdin by default."""

    def __init__(self, fd: int | None = None, early: EarlyAnswer | None = None) -> None:
        self._fd = sys.stdin.fileno() if fd is None else fd
        self._early = early  # the thread that read the first line (manifold/early.py) goes first
        self._early_eof = False
        self._buffer = bytearray()
        self._eof = False
        self._pollable = not stat.S_ISREG(os.fstat(self._fd).st_mode)
        self._pipe: asyncio.StreamReader | None = None
        self._transport: Any = None
        self._try_pipe = self._pollable

    def __aiter__(self) -> StdinLines:
        return self

    async def __anext__(self) -> str:
        line = await self.read_line()
        if line is None:
            raise StopAsyncIteration
        return line.decode("utf-8", errors="replace")

    async def read_line(self) -> bytes | None:
        """The next line as bytes (newline kept), None at end of input."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                return line
            if self._eof:
                if not self._buffer:
                    return None
                line = bytes(self._buffer)
                self._buffer.clear()
                return line
            chunk = await self._read()
            if chunk:
                self._buffer += chunk
            else:
                self._eof = True

    async def _open_pipe(self) -> None:
        """On asyncio, a pipe transport: the reader stays registered with the loop between reads
        (waiting for readability registers and unregisters it on every read)."""
        self._try_pipe = False
        if sniffio.current_async_library() != "asyncio":
            return
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_CHUNK * 16)
        file = os.fdopen(os.dup(self._fd), "rb", buffering=0)  # the transport closes its own copy
        try:
            self._transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), file)
        except (OSError, ValueError):  # not a pipe, socket or tty, or epoll refuses it
            file.close()
            return
        self._pipe = reader

    def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()

    async def _read(self) -> bytes:
        if self._early is not None:
            early, self._early = self._early, None
            try:
                if not early.done.is_set():
                    await anyio.wait_readable(early.done_fd)
            finally:
                os.close(early.done_fd)
            self._early_eof = early.eof
            if early.read:
                return early.read
        if self._early_eof:
            return b""
        if self._try_pipe:
            await self._open_pipe()
        if self._pipe is not None:
            return await self._pipe.read(_CHUNK)
        if self._pollable:
            try:
                await anyio.wait_readable(self._fd)
            except PermissionError:  # epoll refuses it (/dev/null and the like): it never blocks anyway
                self._pollable = False
            else:
                try:
                    return os.read(self._fd, _CHUNK)  # readable: returns at once
                except BlockingIOError:  # pragma: no cover - another reader took the data
                    return await self._read()
        return await anyio.to_thread.run_sync(os.read, self._fd, _CHUNK)
