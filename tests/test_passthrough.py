"""Protocol pass-through: what an upstream says reaches the right client, and back."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from support import PYTHON, TESTS, async_wait_for, running_process, start_http_upstream, subprocess_env
from test_gateway import fixture_stdio, gateway_params, text_of, write_config

pytestmark = pytest.mark.anyio

PROTO = str(TESTS / "upstreams" / "protocol_server.py")


def proto_stdio(name: str = "proto") -> dict[str, Any]:
    return {"mcp_server_type": "stdio", "command": PYTHON, "args": [PROTO, "--name", name]}


def client_callbacks(tag: str, *, roots: bool = True, sampling: bool = True, elicit: str = "accept") -> dict[str, Any]:
    async def sampling_cb(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        prompt = params.messages[0].content
        text = prompt.text if isinstance(prompt, types.TextContent) else "?"
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text=f"{tag} answers {text}"), model="test"
        )

    async def elicit_cb(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        if elicit == "accept":
            return types.ElicitResult(action="accept", content={"name": tag})
        return types.ElicitResult(action=elicit)

    async def roots_cb(context: Any) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri=f"file:///{tag}", name=tag)])

    callbacks: dict[str, Any] = {"elicitation_callback": elicit_cb}
    if sampling:
        callbacks["sampling_callback"] = sampling_cb
    if roots:
        callbacks["list_roots_callback"] = roots_cb
    return callbacks


@asynccontextmanager
async def over_stdio(config: Path, **callbacks: Any) -> AsyncIterator[ClientSession]:
    async with stdio_client(gateway_params(config)) as (read, write):
        async with ClientSession(read, write, **callbacks) as session:
            await session.initialize()
            yield session


@asynccontextmanager
async def over_http(url: str, **callbacks: Any) -> AsyncIterator[ClientSession]:
    async with create_mcp_http_client() as client:
        async with streamable_http_client(url, http_client=client) as (read, write):
            async with ClientSession(read, write, **callbacks) as session:
                await session.initialize()
                yield session


async def test_sampling_elicitation_and_roots_reach_the_client(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"proto": proto_stdio()})
    async with over_stdio(config, **client_callbacks("ada")) as session:
        assert text_of(await session.call_tool("proto__ask_llm", {"prompt": "2+2?"})) == "proto:ada answers 2+2?"
        assert text_of(await session.call_tool("proto__ask_user", {"question": "who?"})) == "accept:ada"
        assert text_of(await session.call_tool("proto__my_roots", {})) == "file:///ada"
    for action in ("decline", "cancel"):
        async with over_stdio(config, **client_callbacks("bob", elicit=action)) as session:
            assert text_of(await session.call_tool("proto__ask_user", {"question": "who?"})) == f"{action}:"


async def test_a_client_without_sampling_gets_a_clear_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"proto": proto_stdio()})
    async with over_stdio(config, **client_callbacks("x", sampling=False, roots=False)) as session:
        with anyio.fail_after(20):  # an error, never a hang
            try:
                result = await session.call_tool("proto__ask_llm", {"prompt": "hi"})
                message = text_of(result) if result.is_error else ""
            except MCPError as exc:  # the upstream may pass the error on as a JSON-RPC error
                message = exc.message
        assert "does not support" in message and "sampling" in message


async def test_progress_and_logging_are_forwarded(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"proto": proto_stdio()})
    logs: list[types.LoggingMessageNotificationParams] = []
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params)

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async with over_stdio(config, logging_callback=on_log) as session:
        await session.set_logging_level("debug")
        result = await session.call_tool("proto__chatty", {"n": 3}, progress_callback=on_progress)
        assert text_of(result) == "done"
        await async_wait_for(lambda: len(logs) >= 3, what="three log lines")
    assert progress == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]
    assert [entry.data for entry in logs[:3]] == ["proto line 0", "proto line 1", "proto line 2"]
    assert all((entry.logger or "").startswith("proto") for entry in logs)


async def test_client_cancellation_reaches_the_upstream(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"proto": proto_stdio()})
    async with over_stdio(config) as session:
        await session.list_tools()  # the upstream is up, so the call really starts there
        with pytest.raises(MCPError):
            await session.call_tool("proto__wait", {"seconds": 60, "tag": "t1"}, read_timeout_seconds=1.0)

        async def cancelled() -> bool:
            return "t1" in text_of(await session.call_tool("proto__cancelled_tags", {}))

        with anyio.fail_after(10):
            while not await cancelled():
                await anyio.sleep(0.05)


async def test_rich_content_passes_unchanged(tmp_path: Path) -> None:
    params = StdioServerParameters(command=PYTHON, args=[PROTO], env=subprocess_env())
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as direct:
            await direct.initialize()
            expected = (await direct.call_tool("rich", {})).model_dump(mode="json", by_alias=True)
    config = write_config(tmp_path, {"proto": proto_stdio()})
    async with over_stdio(config) as session:
        got = (await session.call_tool("proto__rich", {})).model_dump(mode="json", by_alias=True)
    assert got == expected
    assert got["structuredContent"] == {"answer": 42, "nested": {"list": [1, 2]}}
    assert got["_meta"] == {"vendor/trace": "abc"}
    assert [block["type"] for block in got["content"]] == ["text", "image", "audio", "resource", "resource_link"]


async def test_list_changed_reaches_the_client_and_the_new_tool_works(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"alpha": fixture_stdio("alpha")})
    notices: list[Any] = []
    send, receive = anyio.create_memory_object_stream[Any](100)

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            notices.append(message)
            await send.send(message)

    async with over_stdio(config, message_handler=on_message) as session:
        await session.list_tools()
        await session.call_tool("alpha__register_tool", {"tool_name": "fresh"})
        names: set[str] = set()
        with anyio.fail_after(10):  # start-up may send one list_changed of its own first
            while "alpha__fresh" not in names:
                await receive.receive()
                names = {tool.name for tool in (await session.list_tools()).tools}
        assert text_of(await session.call_tool("alpha__fresh", {})) == "alpha:fresh"


async def test_sixteen_clients_each_get_their_own_samplings_and_progress(tmp_path: Path) -> None:
    with start_http_upstream(command=lambda *a: [PYTHON, PROTO, *a]) as upstream:
        config = write_config(
            tmp_path, {"proto": {"mcp_server_type": "streamable_http", "server_url": upstream + "/mcp"}}
        )
        cmd = [PYTHON, "-m", "manifold", "serve", "--transport", "http", "--port", "0", "--config", str(config)]
        env = subprocess_env({"MANIFOLD_DB": f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"})
        with running_process(cmd, env=env) as (_, base):
            answers: dict[int, list[str]] = {}
            progress: dict[int, int] = {}

            async def client(i: int) -> None:
                counts = {"n": 0}

                async def on_progress(value: float, total: float | None, message: str | None) -> None:
                    counts["n"] += 1

                async with over_http(base + "/mcp", **client_callbacks(f"c{i}")) as session:
                    got = []
                    for round_ in range(3):
                        got.append(text_of(await session.call_tool("proto__ask_llm", {"prompt": f"q{round_}"})))
                    await session.call_tool("proto__chatty", {"n": 2}, progress_callback=on_progress)
                    answers[i] = got
                    progress[i] = counts["n"]

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for i in range(16):
                        tg.start_soon(client, i)
    for i in range(16):
        assert answers[i] == [f"proto:c{i} answers q{r}" for r in range(3)], json.dumps(answers[i])
        assert progress[i] == 2


async def test_old_client_new_upstream_and_new_client_old_upstream(tmp_path: Path) -> None:
    """A 2024-11-05 client through Manifold to an SDK 2.x upstream, and a stateless 2026-07-28
    client through Manifold to server-everything (TypeScript, handshake era): nothing dropped."""
    from mcp import Client
    from support import EVERYTHING

    config = write_config(
        tmp_path,
        {
            "alpha": fixture_stdio("alpha"),
            "everything": {"mcp_server_type": "stdio", "command": "node", "args": [EVERYTHING, "stdio"]},
        },
    )
    cmd = [PYTHON, "-m", "manifold", "serve", "--transport", "http", "--port", "0", "--config", str(config)]
    env = subprocess_env({"MANIFOLD_DB": f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"})
    with running_process(cmd, env=env) as (_, base):
        # Old client: the oldest handshake version, spoken by hand.
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        async with httpx2.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
            init = await http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "old", "version": "0"}}})
            assert init.status_code == 200
            session_headers = {"Mcp-Session-Id": init.headers["mcp-session-id"], "MCP-Protocol-Version": "2024-11-05"}
            assert '"protocolVersion":"2024-11-05"' in init.text.replace(" ", "")
            await http.post("/mcp", headers=session_headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
            called = await http.post("/mcp", headers=session_headers, json={
                "jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "alpha__whoami", "arguments": {}}})
            assert '"text":"alpha"' in called.text.replace(" ", "")

        # New client: stateless 2026-07-28 (server/discover, no initialize, no session).
        async with Client(base + "/mcp", mode="2026-07-28") as modern:
            names = {tool.name for tool in (await modern.list_tools()).tools}
            assert {"everything__echo", "alpha__whoami"} <= names  # the legacy upstream's tools are all there
            echoed = await modern.call_tool("everything__echo", {"message": "from 2026"})
            assert "from 2026" in text_of(echoed)
            assert text_of(await modern.call_tool("alpha__whoami", {})) == "alpha"
