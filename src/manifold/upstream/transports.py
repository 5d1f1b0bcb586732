"""Open the transport for one upstream server: stdio, SSE or streamable HTTP."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TextIO

import httpx2
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from manifold.config import ServerConfig, SseServerConfig, StdioServerConfig

# Long-lived streams may stay quiet for a long time; request deadlines are ours.
_STREAM_READ_TIMEOUT = 24 * 3600.0


@asynccontextmanager
async def open_transport(config: ServerConfig, *, errlog: TextIO | None = None) -> AsyncIterator[tuple[Any, Any]]:
    """Yield the (read, write) stream pair of a live transport to the upstream."""
    if isinstance(config, StdioServerConfig):
        # Args are passed as given, never split on spaces; env is merged over the
        # SDK's safe defaults (HOME, PATH, ...) exactly as the SDK does.
        params = StdioServerParameters(command=config.command, args=list(config.args), env=config.env)
        async with stdio_client(params, errlog=errlog or sys.stderr) as streams:
            yield streams
    elif isinstance(config, SseServerConfig):
        async with sse_client(
            config.server_url,
            headers=config.headers(),
            timeout=config.connect_timeout,
            sse_read_timeout=_STREAM_READ_TIMEOUT,
        ) as streams:
            yield streams
    else:
        # One client per server: its pool keeps connections alive across requests.
        timeout = httpx2.Timeout(config.connect_timeout, read=_STREAM_READ_TIMEOUT)
        limits = httpx2.Limits(max_connections=100, max_keepalive_connections=32)
        async with httpx2.AsyncClient(headers=config.headers(), timeout=timeout, limits=limits) as client:
            async with streamable_http_client(config.server_url, http_client=client) as streams:
                yield streams
