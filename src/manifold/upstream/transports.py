"""Open the transport for one upstream server: stdio, SSE or streamable HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import httpx2
from mcp.client.sse import sse_client
from mcp.client.streamable_http import StreamableHTTPTransport
from mcp.shared._context_streams import create_context_streams
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp.shared.message import SessionMessage

from manifold.config import ServerConfig, SseServerConfig, StdioServerConfig, StreamableHttpServerConfig
from manifold.upstream.http1 import Pool, proxied
from manifold.upstream.lean_http import HttpChannel, SseChannel
from manifold.upstream.report import TransportReport
from manifold.upstream.sse_session import Redirected, sse_session
from manifold.upstream.stdio import open_stdio

# Long-lived streams may stay quiet for a long time; request deadlines are ours.
_STREAM_READ_TIMEOUT = 24 * 3600.0
_SESSION_HEADER = "mcp-session-id"
MAX_SSE_EVENT_BYTES = 32 * 1024 * 1024
"""The largest event accepted on a streamable-HTTP reply stream (the SDK's default is far smaller)."""
_DRAIN_SECONDS = 1.0


class _DrainOnClose(httpx2.AsyncByteStream):
    """A POST's response body that, closed early, first reads what is left of it.

    The SDK's client closes an SSE reply as soon as the response event is in,
    before the server's end of stream; httpx then drops the connection, and the
    next request opens a new one. Read to its end (servers close the stream
    right after the response), the connection goes back to the pool instead.
    """

    def __init__(self, inner: httpx2.AsyncByteStream) -> None:
        self._inner = inner
        self._parts: AsyncIterator[bytes] | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._parts is None:
            self._parts = self._inner.__aiter__()
        return self._parts

    async def aclose(self) -> None:
        try:
            with anyio.move_on_after(_DRAIN_SECONDS):  # a server that keeps it open costs its connection
                async for _ in self.__aiter__():
                    pass
        finally:
            await self._inner.aclose()


class _KeepAliveTransport(httpx2.AsyncHTTPTransport):
    """httpx's pooled transport, with every POST's reply read to its end (see _DrainOnClose)."""

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await super().handle_async_request(request)
        if request.method == "POST" and isinstance(response.stream, httpx2.AsyncByteStream):
            response.stream = _DrainOnClose(response.stream)
        return response


@asynccontextmanager
async def open_transport(
    config: ServerConfig, *, report: TransportReport | None = None
) -> AsyncIterator[tuple[Any, Any]]:
    """Yield the (read, write) stream pair of a live transport to the upstream.

    `report` learns what the operator should see: the process's pid, exit status
    and stderr tail (stdio), the last HTTP error status (SSE, streamable HTTP).
    """
    report = report if report is not None else TransportReport()
    report.begin()
    hooks = {"response": [report.on_http_response]}
    if isinstance(config, StdioServerConfig):
        # Args are passed as given, never split on spaces; env is merged over the
        # SDK's safe defaults (HOME, PATH, ...) exactly as the SDK does.
        async with open_stdio(config, report) as streams:
            yield streams
    elif isinstance(config, SseServerConfig):
        if _leanable(config.server_url):
            # Manifold's own client: answers to lean calls are taken off the stream unparsed.
            pool = Pool(config.server_url, config.headers(), connect_timeout=config.connect_timeout)
            channel = SseChannel(pool, report=report)
            session = sse_session(
                config.server_url, pool, channel, report, connect_timeout=config.connect_timeout, limit=MAX_SSE_EVENT_BYTES
            )
            try:
                # The session first: a redirect is known before any task group could wrap it.
                async with session as (read, write), channel.running():
                    report.raw = channel
                    try:
                        yield read, write
                    finally:
                        report.raw = None
                return
            except Redirected:
                await pool.aclose()  # before anything was yielded: the SDK's client below follows the redirect
        async with sse_client(
            config.server_url,
            headers=config.headers(),
            timeout=config.connect_timeout,
            sse_read_timeout=_STREAM_READ_TIMEOUT,
            httpx_client_factory=partial(httpx2.AsyncClient, event_hooks=hooks),
        ) as (read, write):
            yield read, write
    else:
        # One client per server: its pool keeps connections alive across requests.
        timeout = httpx2.Timeout(config.connect_timeout, read=_STREAM_READ_TIMEOUT)
        limits = httpx2.Limits(max_connections=100, max_keepalive_connections=32)
        holder: list[Any] = []
        lost: list[bool] = []

        def forget_session(request: str) -> None:
            # The server forgot the session (it restarted). The spec says start a new one; the
            # SDK only fails the request, so end the connection and let the supervisor reconnect.
            if not lost:
                report.log.warning("upstream forgot our session (HTTP 404); reconnecting", request=request)
            lost.append(True)
            holder[0].close()

        async def session_lost(response: httpx2.Response) -> None:
            # 404 to a request that carries our session id.
            if response.status_code == 404 and response.request.headers.get(_SESSION_HEADER) and holder:
                forget_session(f"{response.request.method} {response.request.url}")

        async with httpx2.AsyncClient(
            headers=config.headers(),
            timeout=timeout,
            transport=_KeepAliveTransport(limits=limits),
            event_hooks={"response": [report.on_http_response, session_lost]},
        ) as client:
            try:
                async with _streamable_http(config.server_url, client) as (read, write, transport, inject):
                    holder.append(read)
                    async with _lean_channel(config, transport, inject, forget_session, report):
                        yield read, write
            except Exception as exc:
                if lost:  # the SDK trips over the stream we closed on purpose
                    raise ConnectionResetError("the server no longer knows our session") from exc
                raise
            if lost:
                raise ConnectionResetError("the server no longer knows our session")


def _leanable(url: str) -> bool:
    """Plain HTTP with no proxy in the way: the lean path's own client can reach it."""
    return url.startswith("http://") and not proxied(url)


@asynccontextmanager
async def _streamable_http(url: str, client: httpx2.AsyncClient) -> AsyncIterator[tuple[Any, Any, StreamableHTTPTransport, Any]]:
    """The SDK's streamable-HTTP client transport, wired as `streamable_http_client` does,
    with the two things the lean channel needs in reach: the transport (its session id and
    protocol version) and the writer of the session's read stream."""
    transport = StreamableHTTPTransport(url, max_sse_event_size=MAX_SSE_EVENT_BYTES)
    read_writer, read_stream = create_context_streams[SessionMessage | Exception](0)
    write_stream, write_reader = create_context_streams[SessionMessage](0)
    async with read_writer, read_stream, write_stream, write_reader, anyio.create_task_group() as tg:

        def start_get_stream() -> None:
            tg.start_soon(transport.handle_get_stream, client, read_writer)

        tg.start_soon(transport.post_writer, client, write_reader, read_writer, write_stream, start_get_stream, tg)
        try:
            yield read_stream, write_stream, transport, read_writer
        finally:
            if transport.session_id:
                with anyio.CancelScope(shield=True), anyio.move_on_after(_DRAIN_SECONDS):
                    await transport.terminate_session(client)
            tg.cancel_scope.cancel()


@asynccontextmanager
async def _lean_channel(
    config: StreamableHttpServerConfig,
    transport: StreamableHTTPTransport,
    inject: Any,
    forget_session: Callable[[str], None],
    report: TransportReport,
) -> AsyncIterator[None]:
    """The lean path's channel for this connection, when the upstream is plain HTTP without a proxy."""
    if not _leanable(config.server_url):
        yield
        return

    def session_headers() -> dict[str, str]:
        headers = {}
        if transport.session_id:
            headers["mcp-session-id"] = transport.session_id
        version = transport._protocol_version_header  # noqa: SLF001 - the version the session stamps
        if version:
            headers[MCP_PROTOCOL_VERSION_HEADER] = version
        return headers

    pool = Pool(config.server_url, config.headers(), connect_timeout=config.connect_timeout)
    channel = HttpChannel(
        pool,
        session_headers=session_headers,
        deliver=inject.send,
        session_lost=lambda: forget_session(f"POST {config.server_url}"),
        report=report,
        max_event_bytes=MAX_SSE_EVENT_BYTES,
    )
    async with channel.running():
        report.raw = channel
        try:
            yield
        finally:
            report.raw = None
