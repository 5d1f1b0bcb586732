"""The stdio face's lean path for tools/call keeps every behaviour a client notices.

Plain tools/call frames to a ready stdio upstream skip the SDK's server (faces/stdio.py): the
request is re-encoded with the upstream's name and id, the response line comes back with only its
id replaced. These tests drive that path with the SDK's own client through a `manifold serve`
subprocess and check what the client sees: its own answer for each of many concurrent calls, error
results as written, large results whole, a crash mid-call as an error (never a hang), the server's
timeout, and cancellation that reaches the upstream. The gateway's exit line says how many calls
went the lean way, so a test cannot pass on the full path by accident.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError
from support import PYTHON, TESTS, async_wait_for, http_upstream
from test_gateway import fixture_stdio, gateway_params, text_of, write_config

pytestmark = pytest.mark.anyio

CHAOS = str(TESTS / "upstreams" / "chaos_server.py")


def chaos(name: str, **keys: Any) -> dict[str, Any]:
    return {"mcp_server_type": "stdio", "command": PYTHON, "args": [CHAOS, "--name", name], **keys}


class Gateway:
    def __init__(self, errlog: Path) -> None:
        self.errlog = errlog

    def stderr(self) -> str:
        return self.errlog.read_text(errors="replace")

    def lean_calls(self) -> int:
        found = re.findall(r"stdio client gone.*?lean_calls=(\d+)", self.stderr())
        return int(found[-1]) if found else -1


@asynccontextmanager
async def gateway(tmp_path: Path, servers: dict[str, Any], gw: Gateway) -> AsyncIterator[ClientSession]:
    config = write_config(tmp_path, servers)
    with gw.errlog.open("w") as errlog:
        async with stdio_client(gateway_params(config), errlog=errlog) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                await session.list_tools()  # every upstream is up: calls really start there
                yield session


async def test_many_concurrent_calls_each_get_their_own_answer(tmp_path: Path) -> None:
    gw = Gateway(tmp_path / "gateway.log")
    shaping = {"rename": {"whoami": "identity"}, "deny": ["slow"]}
    servers = {"alpha": fixture_stdio("alpha", tools=shaping), "beta": fixture_stdio("beta")}
    answers: dict[int, tuple[str, bool]] = {}
    async with gateway(tmp_path, servers, gw) as session:

        async def one(i: int) -> None:
            server = "alpha" if i % 2 else "beta"
            if i % 5 == 0:
                result = await session.call_tool(f"{server}__fail", {"message": f"no {i}"})
            else:
                result = await session.call_tool(f"{server}__echo", {"text": f"call {i} ünïcode"})
            answers[i] = (text_of(result), bool(result.is_error))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(60):
                    tg.start_soon(one, i)
            # Renames and filters apply on the lean path too; unknown names keep their error.
            assert text_of(await session.call_tool("alpha__identity", {})) == "alpha"
            for hidden in ("alpha__whoami", "alpha__slow", "nobody__echo"):
                with pytest.raises(MCPError, match="unknown tool"):
                    await session.call_tool(hidden, {"seconds": 0})
    for i in range(60):
        expected = (f"no {i}", True) if i % 5 == 0 else (f"call {i} ünïcode", False)
        assert answers[i] == expected
    await async_wait_for(lambda: gw.lean_calls() >= 61, what="the gateway's exit line")


async def test_a_large_result_passes_whole(tmp_path: Path) -> None:
    gw = Gateway(tmp_path / "gateway.log")
    async with gateway(tmp_path, {"chaos": chaos("chaos")}, gw) as session:
        with anyio.fail_after(60):
            result = await session.call_tool("chaos__big", {"mib": 3})
            assert text_of(result) == "x" * (3 * 1024 * 1024)
            assert text_of(await session.call_tool("chaos__echo", {"text": "after"})) == "after"
    await async_wait_for(lambda: gw.lean_calls() == 2, what="the gateway's exit line")


async def test_a_crash_mid_call_is_an_error_not_a_hang(tmp_path: Path) -> None:
    gw = Gateway(tmp_path / "gateway.log")
    errors: list[str] = []
    async with gateway(tmp_path, {"chaos": chaos("chaos")}, gw) as session:

        async def hang() -> None:
            with pytest.raises(MCPError) as caught:
                await session.call_tool("chaos__hang", {})
            errors.append(caught.value.error.message)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(hang)
                await async_wait_for(lambda: "hang request" in gw.stderr(), what="the hang call upstream")
                with pytest.raises(MCPError) as caught:
                    await session.call_tool("chaos__exit", {"code": 9})
                errors.append(caught.value.error.message)
        assert len(errors) == 2
        assert all("server 'chaos'" in e and "connection lost during tools/call" in e for e in errors)

        async def back() -> bool:
            try:
                return text_of(await session.call_tool("chaos__echo", {"text": "again"})) == "again"
            except MCPError:
                return False

        with anyio.fail_after(30):  # the supervisor restarts the server; calls work again
            while not await back():
                await anyio.sleep(0.1)


async def test_timeout_and_cancellation_reach_the_upstream(tmp_path: Path) -> None:
    gw = Gateway(tmp_path / "gateway.log")
    async with gateway(tmp_path, {"chaos": chaos("chaos", timeout=1)}, gw) as session:
        with anyio.fail_after(30):
            with pytest.raises(MCPError, match=r"server 'chaos' did not answer tools/call within 1 s"):
                await session.call_tool("chaos__hang", {})
            await async_wait_for(lambda: "timed out" in gw.stderr(), what="the upstream told of the timeout")
            # The client gives up on its own: the upstream is told, and the session goes on.
            with pytest.raises(MCPError):
                await session.call_tool("chaos__slow", {"seconds": 0.9}, read_timeout_seconds=0.3)
            await async_wait_for(
                lambda: len(re.findall(r"cancelled request -?\d+", gw.stderr())) >= 2, what="the cancellation upstream"
            )
            assert text_of(await session.call_tool("chaos__echo", {"text": "still here"})) == "still here"
    await async_wait_for(lambda: gw.lean_calls() == 3, what="the gateway's exit line")


@pytest.mark.parametrize("transport", ["stdio", "streamable-http"])
async def test_sampling_and_logs_during_concurrent_lean_calls_reach_the_client(tmp_path: Path, transport: str) -> None:
    """Server-to-client requests and log lines during lean calls still reach the calling client,
    from a stdio server (on its stdout) and from a streamable-HTTP one (on each call's reply)."""
    gw = Gateway(tmp_path / "gateway.log")
    proto = str(TESTS / "upstreams" / "protocol_server.py")
    if transport == "stdio":
        servers = {"proto": {"mcp_server_type": "stdio", "command": PYTHON, "args": [proto, "--name", "proto"]}}
        await _sampling_and_logs(tmp_path, gw, servers)
        return
    async with http_upstream("--name", "proto", command=lambda *a: [PYTHON, proto, *a]) as url:
        servers = {"proto": {"mcp_server_type": "streamable_http", "server_url": url + "/mcp"}}
        await _sampling_and_logs(tmp_path, gw, servers)


async def _sampling_and_logs(tmp_path: Path, gw: Gateway, servers: dict[str, Any]) -> None:
    logs: list[Any] = []

    async def sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        prompt = params.messages[0].content
        text = prompt.text if isinstance(prompt, types.TextContent) else "?"
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text=f"re {text}"), model="test"
        )

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params.data)

    config = write_config(tmp_path, servers)
    answers: dict[int, str] = {}
    with gw.errlog.open("w") as errlog:
        async with stdio_client(gateway_params(config), errlog=errlog) as (read, write):
            async with ClientSession(read, write, sampling_callback=sampling, logging_callback=on_log) as session:
                await session.initialize()
                await session.list_tools()
                await session.set_logging_level("debug")

                async def ask(i: int) -> None:
                    answers[i] = text_of(await session.call_tool("proto__ask_llm", {"prompt": f"q{i}"}))

                with anyio.fail_after(60):
                    async with anyio.create_task_group() as tg:
                        for i in range(8):
                            tg.start_soon(ask, i)
                    assert text_of(await session.call_tool("proto__chatty", {"n": 2})) == "done"
                    await async_wait_for(lambda: len(logs) >= 2, what="two log lines")
    assert answers == {i: f"proto:re q{i}" for i in range(8)}
    assert logs[:2] == ["proto line 0", "proto line 1"]
    await async_wait_for(lambda: gw.lean_calls() == 9, what="the gateway's exit line")


async def test_calls_to_an_sse_server_take_the_lean_path(tmp_path: Path) -> None:
    """Answers to lean calls come on the SSE server's one stream, taken off it before the SDK's
    session: each call still gets its own answer, errors included, and the session goes on."""
    gw = Gateway(tmp_path / "gateway.log")
    async with http_upstream("--transport", "sse", "--name", "beta") as url:
        servers = {"beta": {"mcp_server_type": "sse", "server_url": url + "/sse", "timeout": 2}}
        answers: dict[int, tuple[str, bool]] = {}
        async with gateway(tmp_path, servers, gw) as session:

            async def one(i: int) -> None:
                if i % 4 == 0:
                    result = await session.call_tool("beta__fail", {"message": f"no {i}"})
                else:
                    result = await session.call_tool("beta__echo", {"text": f"call {i}"})
                answers[i] = (text_of(result), bool(result.is_error))

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for i in range(40):
                        tg.start_soon(one, i)
                with pytest.raises(MCPError, match=r"server 'beta' did not answer tools/call within 2 s"):
                    await session.call_tool("beta__slow", {"seconds": 4})
                # The session's own requests go on meanwhile.
                assert {t.name for t in (await session.list_tools()).tools} >= {"beta__echo", "beta__slow"}
                assert text_of(await session.call_tool("beta__whoami", {})) == "beta"
        assert answers == {i: (f"no {i}", True) if i % 4 == 0 else (f"call {i}", False) for i in range(40)}
    await async_wait_for(lambda: gw.lean_calls() == 42, what="the gateway's exit line")


async def test_an_answer_indented_over_many_lines_is_one_line_on_stdio(tmp_path: Path) -> None:
    """A streamable-HTTP server that indents its JSON: the stdio face still writes one line per message."""
    gw = Gateway(tmp_path / "gateway.log")
    async with http_upstream("--name", "pretty", "--json-response", "--pretty") as url:
        servers = {"pretty": {"mcp_server_type": "streamable_http", "server_url": url + "/mcp"}}
        async with gateway(tmp_path, servers, gw) as session:
            for text in ("one", 'two\nlines "quoted"'):
                assert text_of(await session.call_tool("pretty__echo", {"text": text})) == text
    await async_wait_for(lambda: gw.lean_calls() == 2, what="the gateway's exit line")
