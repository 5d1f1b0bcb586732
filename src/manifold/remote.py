"""Talk to a running gateway: its MCP face for tools and calls, /healthz for server states,
and the management API's tool search."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import os

import httpx2
import mcp_types as types
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client


def _base(url: str) -> str:
    url = url.rstrip("/")
    return url[: -len("/mcp")] if url.endswith("/mcp") else url


@asynccontextmanager
async def session(url: str) -> AsyncIterator[ClientSession]:
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(30.0, read=300.0)) as client:
        async with streamable_http_client(_base(url) + "/mcp", http_client=client) as (read, write):
            async with ClientSession(read, write) as mcp:
                await mcp.initialize()
                yield mcp


async def health(url: str) -> dict[str, Any]:
    async with httpx2.AsyncClient(timeout=10.0) as client:
        response = await client.get(_base(url) + "/healthz")
        response.raise_for_status()
        return dict(response.json())


async def list_tools(url: str) -> list[dict[str, Any]]:
    """Every tool of the gateway at `url`, with the server each belongs to."""
    servers = sorted((await health(url))["servers"], key=len, reverse=True)
    rows: list[dict[str, Any]] = []
    async with session(url) as mcp:
        cursor = None
        while True:
            page = await mcp.list_tools(params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
            for tool in page.tools:
                owner = next((s for s in servers if tool.name.startswith(s.replace(".", "_") + "__")), "")
                rows.append({"name": tool.name, "server": owner, "description": tool.description or ""})
            cursor = page.next_cursor
            if not cursor:
                return rows


async def call_tool(url: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    async with session(url) as mcp:
        result = await mcp.call_tool(name, arguments)
        return result.model_dump(mode="json", by_alias=True, exclude_none=True)


class RemoteError(Exception):
    """The gateway answered a request with an error; the message is its `detail`."""


async def search_tools(url: str, query: str, limit: int, token: str | None = None) -> list[dict[str, Any]]:
    """Rank the gateway's catalogue for `query` (GET /v1/mcp-servers/tools/search).

    The token is MANIFOLD_API_TOKEN unless given; a loopback gateway without one needs none.
    """
    token = token if token is not None else os.environ.get("MANIFOLD_API_TOKEN") or None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(timeout=30.0, headers=headers) as client:
        response = await client.get(
            _base(url) + "/v1/mcp-servers/tools/search", params={"query": query, "limit": limit}
        )
    if response.status_code != 200:
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text
        if isinstance(detail, list):  # field errors
            detail = "; ".join(str(e.get("msg")) for e in detail if isinstance(e, dict))
        raise RemoteError(f"HTTP {response.status_code}: {detail}")
    return list(response.json())
