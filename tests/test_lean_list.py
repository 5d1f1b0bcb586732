"""A plain tools/list is answered with the page's cached JSON, on the stdio and HTTP faces.

The pages are built by the list handler's code and shaped by the SDK's per-version sieve once per
catalogue (faces/mcp.py `ToolPages`); the faces send their bytes without the SDK's server. These
tests hold the lean answers to what the SDK's own path gives for the same page, for every
handshake version: a tools/list with a param the lean path does not take (`x`) goes the full way,
through the handler and the sieve. They also check that a list after a catalogue change shows the
new catalogue, that `/mcp?mode=search` gets its own list, that a bad cursor keeps the SDK's error,
and, by the gateway's count of lean lists, that the lean path is really taken.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.message import SessionMessage
from mcp_types import INVALID_PARAMS
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from support import PYTHON, TESTS, async_wait_for
from test_gateway import fixture_stdio, gateway_params, write_config
from test_lean_http import http_gateway

from manifold.faces.disclosure import META_NAMES

pytestmark = pytest.mark.anyio

VERSIONS = [v for v in HANDSHAKE_PROTOCOL_VERSIONS if v not in MODERN_PROTOCOL_VERSIONS]
CHAOS = str(TESTS / "upstreams" / "chaos_server.py")
SERVERS = {
    "alpha": fixture_stdio("alpha", "--tools", "2100"),  # with its own 5: 2,105 tools
    # 12 tools with null fields, which the SDK's sieve drops: the lean answer must be sieved too.
    "sloppy": {"mcp_server_type": "stdio", "command": PYTHON, "args": [CHAOS, "--name", "sloppy", "--nulls"]},
}
TOTAL = 2117  # pages of 2,000 and 117
BAD_CURSOR = "bm9wZQ"  # base64 of "nope": not a cursor the gateway handed out

Ask = Callable[[dict[str, Any] | None], Awaitable[dict[str, Any]]]
"""Send a tools/list with these params; the answer's `result` or `error`, as sent."""


def initialize(version: str) -> dict[str, Any]:
    return {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}


async def same_as_the_sdks(ask: Ask) -> int:
    """Both pages and a bad cursor, lean and the SDK's way; how many were asked the lean way."""
    full = await ask({"x": 1})  # the SDK's path (its handler also waits for the servers to be up)
    first = await ask(None)
    assert first == full
    assert len(first["result"]["tools"]) == 2000
    cursor = first["result"]["nextCursor"]
    second = await ask({"cursor": cursor, "_meta": {"progressToken": "p"}})
    assert second == await ask({"cursor": cursor, "x": 1})
    assert len(second["result"]["tools"]) == TOTAL - 2000 and "nextCursor" not in second["result"]
    tools = {tool["name"]: tool for tool in first["result"]["tools"] + second["result"]["tools"]}
    assert len(tools) == TOTAL and "alpha__tool_2099" in tools
    sloppy = tools["sloppy__echo"]
    assert "title" not in sloppy and "outputSchema" not in sloppy and sloppy["annotations"] == {"readOnlyHint": True}
    bad = await ask({"cursor": BAD_CURSOR})
    assert bad == await ask({"cursor": BAD_CURSOR, "x": 1})
    assert bad["error"]["code"] == INVALID_PARAMS and bad["error"]["message"] == "invalid cursor"
    return 2


# --- stdio ---------------------------------------------------------------------------------------


class Wire:
    """JSON-RPC straight over the SDK client's stdio transport: answers as the gateway sent them."""

    def __init__(self, read: Any, write: Any) -> None:
        self.read, self.write = read, write
        self._ids = itertools.count(1)

    async def ask(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        n = next(self._ids)
        request_id: int | str = n if n % 2 else f"req-{n}"  # ids come back as the client sent them
        fields: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            fields["params"] = params
        await self.write.send(SessionMessage(types.JSONRPCRequest(**fields)))
        with anyio.fail_after(60):
            while True:
                item = await self.read.receive()
                if isinstance(item, Exception):
                    raise item
                message = item.message
                if isinstance(message, types.JSONRPCResponse | types.JSONRPCError) and message.id == request_id:
                    dumped = message.model_dump(mode="json", by_alias=True, exclude_none=True)
                    return {key: dumped[key] for key in ("result", "error") if key in dumped}

    async def tell(self, method: str) -> None:
        await self.write.send(SessionMessage(types.JSONRPCNotification(jsonrpc="2.0", method=method)))


def lean_lists_at_exit(errlog: Path) -> int:
    """How many lists the stdio face answered the lean way (its exit line)."""
    found = re.findall(r"stdio client gone.*?lean_lists=(\d+)", errlog.read_text(errors="replace"))
    return int(found[-1]) if found else -1


@pytest.mark.parametrize("version", VERSIONS)
async def test_stdio_lean_lists_are_the_sdks_for_every_version(tmp_path: Path, version: str) -> None:
    config = write_config(tmp_path, SERVERS)
    errlog = tmp_path / "gateway.log"
    with errlog.open("w") as log:
        async with stdio_client(gateway_params(config), errlog=log) as (read, write):
            wire = Wire(read, write)
            answer = await wire.ask("initialize", initialize(version))
            assert answer["result"]["protocolVersion"] == version
            await wire.tell("notifications/initialized")

            async def ask(params: dict[str, Any] | None) -> dict[str, Any]:
                return await wire.ask("tools/list", params)

            lean = await same_as_the_sdks(ask)
    await async_wait_for(lambda: lean_lists_at_exit(errlog) == lean, what="the gateway's exit line")


# --- streamable HTTP -----------------------------------------------------------------------------

HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def lean_lists(base: str) -> int:
    """How many lists the HTTP face answered the lean way (the gateway's metric)."""
    text = httpx2.get(base + "/metrics").text
    found = re.search(r'^manifold_lean_tool_lists_total\{face="http"\} (\S+)$', text, re.M)
    return int(float(found.group(1))) if found else 0


def message_of(response: httpx2.Response) -> dict[str, Any]:
    """The one JSON-RPC message of a POST's answer, sent as JSON or SSE."""
    assert response.status_code == 200, response.text
    if response.headers["content-type"].startswith("application/json"):
        return dict(response.json())
    events = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
    return dict(json.loads(next(event for event in events if event)))


@asynccontextmanager
async def raw_session(http: httpx2.AsyncClient, url: str, version: str) -> AsyncIterator[Ask]:
    """An initialised /mcp session spoken to with plain POSTs; yields its tools/list."""
    opened = await http.post(url, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": initialize(version)})
    assert message_of(opened)["result"]["protocolVersion"] == version
    headers = {"Mcp-Session-Id": opened.headers["mcp-session-id"], "MCP-Protocol-Version": version}
    notified = await http.post(url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert notified.status_code == 202
    ids = itertools.count(1)

    async def ask(params: dict[str, Any] | None) -> dict[str, Any]:
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": f"l{next(ids)}", "method": "tools/list"}
        if params is not None:
            body["params"] = params
        response = await http.post(url, headers=headers, json=body)
        message = message_of(response)
        assert message["id"] == body["id"]
        # Lean or not, framed as the SDK's transport frames an answer.
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["mcp-session-id"] == headers["Mcp-Session-Id"]
        return {key: message[key] for key in ("result", "error") if key in message}

    try:
        yield ask
    finally:
        await http.delete(url, headers=headers)


async def test_http_lean_lists_are_the_sdks_for_every_version_and_mode(tmp_path: Path) -> None:
    with http_gateway(tmp_path, SERVERS, pinned=["alpha__echo"]) as base:
        async with httpx2.AsyncClient(timeout=60, headers=HEADERS) as http:
            for version in VERSIONS:
                before = lean_lists(base)
                async with raw_session(http, base + "/mcp", version) as ask:
                    lean = await same_as_the_sdks(ask)
                assert lean_lists(base) - before == lean, version

            # A session that asked for search mode gets its list, the lean way too (read from the
            # query string by the lean path itself: its first list).
            before = lean_lists(base)
            async with raw_session(http, base + "/mcp?mode=search", VERSIONS[-1]) as ask:
                listed = await ask(None)
                assert listed == await ask({"x": 1})
                assert {tool["name"] for tool in listed["result"]["tools"]} == {"alpha__echo", *META_NAMES}
            assert lean_lists(base) - before == 1

            # A mode the gateway does not know is the SDK's to judge (it lists the gateway's own).
            async with raw_session(http, base + "/mcp?mode=bogus", VERSIONS[-1]) as ask:
                assert len((await ask(None))["result"]["tools"]) == 2000
            assert lean_lists(base) - before == 1


# --- the catalogue changes -----------------------------------------------------------------------


async def every_tool(session: ClientSession) -> tuple[set[str], int]:
    """All tool names, page by page as a client lists them; and how many pages that took."""
    names: set[str] = set()
    cursor: str | None = None
    for pages in itertools.count(1):
        page = await session.list_tools(params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
        names |= {tool.name for tool in page.tools}
        cursor = page.next_cursor
        if not cursor:
            return names, pages
    raise AssertionError("unreachable")


async def follows_the_catalogue(session: ClientSession, tmp_path: Path, changed: Any) -> None:
    """Two big servers (two pages), then one of them removed and a small one added."""
    first, pages = await every_tool(session)
    assert pages == 2 and len(first) == 2 * 1205 and {"alpha__tool_1199", "beta__tool_0000"} <= first
    assert await every_tool(session) == (first, 2)

    write_config(tmp_path, {"alpha": fixture_stdio("alpha", "--tools", "1200"), "gamma": fixture_stdio("gamma")})
    with anyio.fail_after(30):
        while True:
            await changed.receive()  # a tools/list_changed: list again
            names, pages = await every_tool(session)
            if "gamma__whoami" in names and "beta__whoami" not in names:
                break
    assert pages == 1 and names == {n for n in first if n.startswith("alpha__")} | {
        "gamma__echo", "gamma__whoami", "gamma__fail", "gamma__slow", "gamma__register_tool"
    }


def two_big_servers() -> dict[str, Any]:
    return {"alpha": fixture_stdio("alpha", "--tools", "1200"), "beta": fixture_stdio("beta", "--tools", "1200")}


def on_list_changed() -> tuple[Any, Callable[[Any], Awaitable[None]]]:
    send, changed = anyio.create_memory_object_stream[Any](100)

    async def handler(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            await send.send(message)

    return changed, handler


async def test_stdio_lists_follow_the_catalogue(tmp_path: Path) -> None:
    config = write_config(tmp_path, two_big_servers())
    changed, handler = on_list_changed()
    errlog = tmp_path / "gateway.log"
    with errlog.open("w") as log:
        async with stdio_client(gateway_params(config), errlog=log) as (read, write):
            async with ClientSession(read, write, message_handler=handler) as session:
                await session.initialize()
                await follows_the_catalogue(session, tmp_path, changed)
    # At least the second listing of the first catalogue and the last one were lean.
    await async_wait_for(lambda: lean_lists_at_exit(errlog) >= 3, what="the gateway's exit line")


async def test_http_lists_follow_the_catalogue(tmp_path: Path) -> None:
    changed, handler = on_list_changed()
    with http_gateway(tmp_path, two_big_servers()) as base:
        async with create_mcp_http_client() as client:
            async with streamable_http_client(base + "/mcp", http_client=client) as (read, write):
                async with ClientSession(read, write, message_handler=handler) as session:
                    await session.initialize()
                    await follows_the_catalogue(session, tmp_path, changed)
        assert lean_lists(base) >= 3
