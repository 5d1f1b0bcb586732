"""The legacy SSE transport's client on Manifold's own HTTP client (plain HTTP, no proxy).

The SDK's `sse_client` turns every event of the session's one stream into
models (httpx, an SSE parser, pydantic) before anyone sees it, so an answer to
a lean call was parsed and then encoded again. Here each event's data is
looked at as bytes first: an answer to a lean call (one of our negative ids)
goes to its call unparsed, as a streamable-HTTP reply does; everything else is
parsed and given to the SDK's session, which cannot tell the difference.
Messages the session sends are POSTed to the endpoint the server named, each
in its own task (a slow POST does not hold up the next), as the SDK's client
does; a request whose POST fails gets an error answer at once instead of
waiting for its timeout.

A server that redirects its stream is left to the SDK's client (`Redirected`),
which follows redirects that stay on the same origin.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager, suppress
from http import HTTPStatus
from typing import Any
from urllib.parse import urljoin, urlsplit

import anyio
import mcp_types as types
from mcp.shared._context_streams import create_context_streams
from mcp.shared.message import SessionMessage
from mcp_types import INTERNAL_ERROR, ErrorData, JSONRPCError, JSONRPCRequest

from manifold.logging import masker
from manifold.upstream.http1 import HttpError, Pool
from manifold.upstream.lean_http import SseChannel, sse_events
from manifold.upstream.report import TransportReport

_SSE = "text/event-stream"

Events = AsyncIterator[tuple[str, bytes, str | None, int | None]]


class Redirected(Exception):
    """The server redirects its event stream: a case for the SDK's client."""


@asynccontextmanager
async def sse_session(
    url: str, pool: Pool, channel: SseChannel, report: TransportReport, *, connect_timeout: float, limit: int
) -> AsyncIterator[tuple[Any, Any]]:
    """The (read, write) streams of one session with the SSE server at `url`."""
    async with pool.request("GET", {"accept": _SSE, "cache-control": "no-store"}) as response:
        status = response.status
        if 300 <= status < 400:
            raise Redirected(url)
        if status != 200:
            report.http_error = masker.mask(f"HTTP {status} {_phrase(status)} from GET {url}")
            raise HttpError(report.http_error)
        kind = response.headers.get("content-type", "").lower()
        if not kind.startswith(_SSE):
            raise HttpError(f"the server's event stream is {kind or 'of no content type'}, not {_SSE}")
        async with aclosing(sse_events(response.chunks(), limit)) as events:
            with anyio.fail_after(connect_timeout):
                channel.endpoint = await _endpoint(events, url)
            read_writer, read_stream = create_context_streams[SessionMessage | Exception](0)
            write_stream, write_reader = create_context_streams[SessionMessage](0)
            async with read_writer, read_stream, write_stream, write_reader, anyio.create_task_group() as tg:
                tg.start_soon(_read, events, channel, read_writer)
                tg.start_soon(_write, channel, write_reader, read_writer)
                yield read_stream, write_stream
                tg.cancel_scope.cancel()


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "(unknown status)"


async def _endpoint(events: Events, url: str) -> str:
    """The message endpoint the server names first (path and query), on the stream's own origin."""
    async for event, data, _, _ in events:
        if event != "endpoint":
            continue
        endpoint = urljoin(url, data.decode("utf-8", "replace").strip())
        there, here = urlsplit(endpoint), urlsplit(url)
        if (there.scheme, there.netloc) != (here.scheme, here.netloc):
            raise HttpError(f"the server's message endpoint is on another origin: {endpoint}")
        return there.path + (f"?{there.query}" if there.query else "")
    raise HttpError("the server's event stream ended before it named its message endpoint")


async def _read(events: Events, channel: SseChannel, read_writer: Any) -> None:
    try:
        async for event, data, _, _ in events:
            if event != "message" or not data or channel.take_raw(data):
                continue
            try:
                message = types.jsonrpc_message_adapter.validate_json(data, by_name=False)
            except ValueError as exc:
                await read_writer.send(exc)
                continue
            await read_writer.send(SessionMessage(message))
    except (HttpError, OSError) as exc:
        with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await read_writer.send(exc)
    finally:
        await read_writer.aclose()  # the stream ended: the session is over, and its connection


async def _write(channel: SseChannel, write_reader: Any, read_writer: Any) -> None:
    async with anyio.create_task_group() as tg:
        async for message in write_reader:
            context = write_reader.last_context  # the sender's: a POST runs where its request was made
            if context is not None:
                context.run(tg.start_soon, _post, channel, message, read_writer)
            else:
                tg.start_soon(_post, channel, message, read_writer)


async def _post(channel: SseChannel, message: SessionMessage, read_writer: Any) -> None:
    body = message.message.model_dump_json(by_alias=True, exclude_unset=True).encode()
    try:
        status = await channel.post(body)
    except (HttpError, OSError) as exc:
        problem = f"could not send the request ({exc})"
    else:
        if 200 <= status < 300:
            return
        problem = f"HTTP {status} from the server"
    if isinstance(message.message, JSONRPCRequest):
        error = JSONRPCError(jsonrpc="2.0", id=message.message.id, error=ErrorData(code=INTERNAL_ERROR, message=problem))
        with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await read_writer.send(SessionMessage(error))
