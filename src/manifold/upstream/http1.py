"""A small HTTP/1.1 keep-alive client for the lean path's POSTs to streamable-HTTP upstreams.

httpx costs ~0.7 ms of CPU per request here and aiohttp ~0.26 ms; the lean
path's whole budget per call is under a millisecond (bench/bench.py). This
client does only what that path needs — POST (and GET for a resumed stream)
with a body of known length over plain HTTP/1.1, responses parsed by
httptools (uvicorn's C parser, already a dependency), bodies streamed chunk
by chunk for SSE — at ~0.1 ms. Everything else (TLS, proxies, redirects, the
GET stream, the handshake) stays with the SDK's httpx client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.abc
import httptools

_READ = 65536


class HttpError(Exception):
    """The connection failed or the server sent something that is not HTTP/1.1."""


class _Reply:
    """httptools' callbacks: status, headers, body chunks as they arrive."""

    __slots__ = ("headers", "chunks", "headers_done", "complete", "keep_alive", "status", "parser")

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.status = 0
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()  # the parser forgets once the message is complete

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class Response:
    """One response: its status and headers at once, its body as it arrives."""

    def __init__(self, connection: _Connection, reply: _Reply) -> None:
        self._connection = connection
        self._reply = reply
        self.status = reply.status
        self.headers = reply.headers

    @property
    def complete(self) -> bool:
        return self._reply.complete

    async def chunks(self) -> AsyncIterator[bytes]:
        reply = self._reply
        while True:
            if reply.chunks:
                parts, reply.chunks = reply.chunks, []
                for part in parts:
                    yield part
            if reply.complete:
                return
            if not await self._connection.feed(reply):
                return  # the server closed the connection: a body read to its end

    async def read(self) -> bytes:
        return b"".join([part async for part in self.chunks()])


class _Connection:
    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.reusable = True

    async def feed(self, reply: _Reply) -> bool:
        """Read once into the parser; False at end of stream."""
        try:
            data = await self.stream.receive(_READ)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            self.reusable = False
            return False
        try:
            reply.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            raise HttpError("the server switched protocols") from exc
        except httptools.HttpParserError as exc:
            raise HttpError(f"malformed HTTP response: {exc}") from exc
        return True

    async def aclose(self) -> None:
        self.reusable = False
        with suppress(Exception):
            await self.stream.aclose()


class Pool:
    """Keep-alive connections to one origin (plain HTTP): taken for one request, put back after."""

    def __init__(self, url: str, headers: dict[str, str], *, connect_timeout: float, max_idle: int = 32) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"not a plain HTTP URL: {url}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        netloc = parts.netloc.rsplit("@", 1)[-1]
        self._fixed = {"host": netloc, **{k.lower(): v for k, v in headers.items()}}
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self._idle: list[_Connection] = []
        self.closed = False

    def _head(self, method: str, target: str, headers: dict[str, str], length: int | None) -> bytes:
        lines = [f"{method} {target} HTTP/1.1"]
        lines.extend(f"{name}: {value}" for name, value in {**self._fixed, **headers}.items())
        if length is not None:
            lines.append(f"content-length: {length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _connect(self) -> _Connection:
        with anyio.fail_after(self.connect_timeout):
            stream = await anyio.connect_tcp(self.host, self.port)
        return _Connection(stream)

    @asynccontextmanager
    async def request(
        self, method: str, headers: dict[str, str], body: bytes | None = None, *, target: str | None = None
    ) -> AsyncIterator[Response]:
        """Send one request (to the pool's URL, or `target` on the same origin); yield its response
        once its headers are in.

        A kept-alive connection the server has closed meanwhile shows as a
        connection that ends before any response byte: that request is sent
        once more on a new connection (the server never read it), and the
        other idle connections go too — they have idled at least as long (the
        last one back is the first one out), so the server has closed them
        as well (uvicorn after 5 s).
        """
        if self.closed:
            raise HttpError("the connection pool is closed")
        head = self._head(method, target or self.target, headers, None if body is None else len(body))
        payload = head + (body or b"")
        for attempt in range(2):
            reused = attempt == 0 and bool(self._idle)
            connection = self._idle.pop() if reused else await self._connect()
            reply = _Reply()
            try:
                await connection.stream.send(payload)
                while not reply.headers_done:
                    if not await connection.feed(reply):
                        raise HttpError("the server closed the connection without answering")
            except (HttpError, OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                await connection.aclose()
                if reused and not reply.headers and not reply.chunks:
                    await self._drop_idle()
                    continue
                raise HttpError(str(exc) or type(exc).__name__) from exc
            break
        response = Response(connection, reply)
        try:
            yield response
        except BaseException:
            await connection.aclose()
            raise
        if (
            reply.complete
            and connection.reusable
            and reply.keep_alive
            and not self.closed
            and len(self._idle) < self.max_idle
        ):
            self._idle.append(connection)
        else:
            await connection.aclose()

    async def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.aclose()

    async def aclose(self) -> None:
        self.closed = True
        await self._drop_idle()


def proxied(url: str, environ: Any = None) -> bool:
    """Whether the environment sends requests to `url` through a proxy (then httpx's path is used)."""
    import urllib.request

    proxies = urllib.request.getproxies_environment() if environ is None else environ
    scheme = urlsplit(url).scheme
    if not (proxies.get(scheme) or proxies.get("all")):
        return False
    host = urlsplit(url).hostname or ""
    return not urllib.request.proxy_bypass_environment(host, proxies)
