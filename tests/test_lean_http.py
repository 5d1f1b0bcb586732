"""The HTTP face's lean path for tools/call keeps every behaviour a client notices.

A plain tools/call POST in an established /mcp session skips the SDK's server and, to a
streamable-HTTP upstream, the SDK's client too (faces/lean_http.py, upstream/lean_http.py). These
tests drive `manifold serve --transport http` with the SDK's own client and check what the client
sees: its own answer for each of many concurrent calls to HTTP and stdio upstreams, error results
and errors as before, log lines and sampling during a call, the server's timeout, a client that
gives up, a server that closes the connections it kept alive, and an upstream that restarts and
forgets our session. The gateway's
`manifold_lean_tool_calls` metric says how many calls went the lean way, so a test cannot pass on
the full path by accident.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from support import PYTHON, TESTS, fixture_command, running_process, start_http_upstream, subprocess_env, together
from test_gateway import fixture_stdio, text_of, write_config

pytestmark = pytest.mark.anyio

PROTO = str(TESTS / "upstreams" / "protocol_server.py")


def proto_command(*args: str) -> list[str]:
    return [PYTHON, PROTO, *args]


@contextmanager
def http_gateway(tmp_path: Path, servers: dict[str, Any], **settings: Any) -> Iterator[str]:
    config = write_config(tmp_path, servers, **settings)
    cmd = [PYTHON, "-m", "manifold", "serve", "--transport", "http", "--port", "0", "--config", str(config)]
    env = subprocess_env({"MANIFOLD_DB": f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"})
    with running_process(cmd, env=env) as (_, base):
        yield base


def lean_calls(base: str, face: str = "http") -> int:
    """How many calls went the lean way on `face` (the gateway's metric)."""
    text = httpx2.get(base + "/metrics").text
    found = re.search(rf'^manifold_lean_tool_calls_total\{{face="{face}"\}} (\S+)$', text, re.M)
    return int(float(found.group(1))) if found else 0


@asynccontextmanager
async def session_to(base: str, **callbacks: Any) -> AsyncIterator[ClientSession]:
    async with create_mcp_http_client() as client:
        async with streamable_http_client(base + "/mcp", http_client=client) as (read, write):
            async with ClientSession(read, write, **callbacks) as session:
                await session.initialize()
                await session.list_tools()  # every upstream is up: calls really start there
                yield session


def http_server(url: str, **keys: Any) -> dict[str, Any]:
    return {"mcp_server_type": "streamable_http", "server_url": url + "/mcp", **keys}


async def test_many_concurrent_calls_each_get_their_own_answer(tmp_path: Path) -> None:
    """To a server answering with SSE, one answering with JSON, and a stdio one."""
    with together(start_http_upstream("--name", "alpha"), start_http_upstream("--name", "gamma", "--json-response")) as (
        alpha,
        gamma,
    ):
        servers = {
            "alpha": http_server(alpha, tools={"rename": {"whoami": "identity"}}),
            "beta": fixture_stdio("beta"),
            "gamma": http_server(gamma),
        }
        with http_gateway(tmp_path, servers) as base:
            answers: dict[int, tuple[str, bool]] = {}
            async with session_to(base) as session:

                async def one(i: int) -> None:
                    server = ("alpha", "beta", "gamma")[i % 3]
                    if i % 5 == 0:
                        result = await session.call_tool(f"{server}__fail", {"message": f"no {i}"})
                    else:
                        result = await session.call_tool(f"{server}__echo", {"text": f"call {i} ünïcode"})
                    answers[i] = (text_of(result), bool(result.is_error))

                with anyio.fail_after(60):
                    async with anyio.create_task_group() as tg:
                        for i in range(60):
                            tg.start_soon(one, i)
                    # Renames apply on the lean path too; unknown names keep the full path's error.
                    assert text_of(await session.call_tool("alpha__identity", {})) == "alpha"
                    with pytest.raises(MCPError, match="alpha__nope"):
                        await session.call_tool("alpha__nope", {})
                    for server in ("alpha", "gamma"):
                        result = await session.call_tool(f"{server}__echo", {"text": "x" * 2_000_000})
                        assert text_of(result) == "x" * 2_000_000
            assert answers == {i: (f"no {i}", True) if i % 5 == 0 else (f"call {i} ünïcode", False) for i in range(60)}
            assert lean_calls(base) == 63


async def test_calls_after_the_server_closed_its_idle_connections_succeed(tmp_path: Path) -> None:
    """Servers close kept-alive connections that idle (uvicorn after 5 s; this one at once): after
    a burst of calls, every connection the gateway keeps for the server is dead by the next call,
    as after any quiet spell, and the calls that follow must not fail as "connection lost"."""
    with together(start_http_upstream("--name", "alpha", "--keep-alive", "0")) as (alpha,):
        with http_gateway(tmp_path, {"alpha": http_server(alpha)}) as base:
            async with session_to(base) as session:
                with anyio.fail_after(60):
                    for round_ in range(3):

                        async def one(i: int, round_: int = round_) -> None:
                            result = await session.call_tool("alpha__echo", {"text": f"burst {round_}.{i}"})
                            assert text_of(result) == f"burst {round_}.{i}"

                        async with anyio.create_task_group() as tg:
                            for i in range(8):  # several connections at once, all kept
                                tg.start_soon(one, i)
                        for i in range(3):
                            result = await session.call_tool("alpha__echo", {"text": f"after {round_}.{i}"})
                            assert text_of(result) == f"after {round_}.{i}"
            assert lean_calls(base) == 3 * (8 + 3)


async def test_logs_and_sampling_during_a_lean_call_reach_their_client(tmp_path: Path) -> None:
    logs: list[Any] = []

    async def sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        prompt = params.messages[0].content
        text = prompt.text if isinstance(prompt, types.TextContent) else "?"
        return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text=f"re {text}"), model="m")

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params.data)

    with start_http_upstream("--name", "proto", command=proto_command) as proto:
        with http_gateway(tmp_path, {"proto": http_server(proto)}) as base:
            async with session_to(base, sampling_callback=sampling, logging_callback=on_log) as session:
                await session.set_logging_level("debug")
                with anyio.fail_after(60):
                    before = lean_calls(base)
                    assert text_of(await session.call_tool("proto__chatty", {"n": 3})) == "done"
                    # The log lines ride on the call's own reply, ahead of its answer.
                    assert logs == ["proto line 0", "proto line 1", "proto line 2"]
                    answers = {}

                    async def ask(i: int) -> None:
                        answers[i] = text_of(await session.call_tool("proto__ask_llm", {"prompt": f"q{i}"}))

                    async with anyio.create_task_group() as tg:
                        for i in range(4):
                            tg.start_soon(ask, i)
                    assert answers == {i: f"proto:re q{i}" for i in range(4)}
                    assert lean_calls(base) - before == 5


async def test_timeout_and_a_client_that_gives_up(tmp_path: Path) -> None:
    with start_http_upstream("--name", "alpha") as alpha:
        with http_gateway(tmp_path, {"alpha": http_server(alpha, timeout=1)}) as base:
            async with session_to(base) as session:
                with anyio.fail_after(30):
                    with pytest.raises(MCPError, match=r"server 'alpha' did not answer tools/call within 1 s"):
                        await session.call_tool("alpha__slow", {"seconds": 5})
                    with pytest.raises(MCPError):
                        await session.call_tool("alpha__slow", {"seconds": 0.9}, read_timeout_seconds=0.3)
                    assert text_of(await session.call_tool("alpha__echo", {"text": "still here"})) == "still here"
            assert lean_calls(base) == 3
            metrics = httpx2.get(base + "/metrics").text
            failed = re.search(r'^manifold_tool_calls_total\{outcome="failed",server="alpha",tool="slow"\} (\S+)$', metrics, re.M)
            assert failed is not None and float(failed.group(1)) == 2.0


async def test_an_upstream_that_restarts_costs_at_most_a_call(tmp_path: Path) -> None:
    """The restarted server no longer knows our session: the gateway opens a new one, calls go on."""
    first = start_http_upstream("--name", "alpha")
    alpha = await anyio.to_thread.run_sync(first.__enter__)
    port = str(urlsplit(alpha).port)
    try:
        with http_gateway(tmp_path, {"alpha": http_server(alpha, timeout=10)}) as base:
            async with session_to(base) as session:
                assert text_of(await session.call_tool("alpha__echo", {"text": "one"})) == "one"
                await anyio.to_thread.run_sync(first.__exit__, None, None, None)
                first = None
                again = running_process(fixture_command("--transport", "streamable-http", "--name", "alpha", "--port", port))
                await anyio.to_thread.run_sync(again.__enter__)
                try:
                    with anyio.fail_after(40):
                        while True:
                            try:
                                assert text_of(await session.call_tool("alpha__echo", {"text": "two"})) == "two"
                                break
                            except MCPError as exc:  # while it is down and reconnecting: a clear error
                                assert "server 'alpha'" in exc.error.message
                                await anyio.sleep(0.1)
                    assert text_of(await session.call_tool("alpha__echo", {"text": "three"})) == "three"
                finally:
                    await anyio.to_thread.run_sync(again.__exit__, None, None, None)
            assert lean_calls(base) >= 2
    finally:
        if first is not None:
            await anyio.to_thread.run_sync(first.__exit__, None, None, None)


async def test_frames_that_come_while_earlier_ones_are_sent_are_not_lost() -> None:
    """The way back of a lean call: a log line, then (while that one is still being written to the
    client) another and the answer. All three reach the client, in order."""
    from types import SimpleNamespace

    from manifold.faces.lean_http import _Exchange

    exchange = _Exchange(connection=None)  # type: ignore[arg-type]
    call = SimpleNamespace(deadline=anyio.current_time() + 30)
    exchange.put(b"log 0")
    sent: list[tuple[bytes, bool]] = []
    with anyio.fail_after(10):
        async for frames, final in exchange.batches(call):  # type: ignore[arg-type]
            if not sent:  # the client is slow to take the first line: the rest comes meanwhile
                exchange.put(b"log 1")
                exchange.put(b"answer", final=True)
                await anyio.sleep(0)
            sent += [(frame, final) for frame in frames]
    assert sent == [(b"log 0", False), (b"log 1", True), (b"answer", True)]


async def test_the_sse_face_answers_lean_calls_on_its_stream(tmp_path: Path) -> None:
    """The legacy /sse face: calls to an SSE and a streamable-HTTP server, their own answers, error
    results, log lines ahead of the answer, a client that gives up, and the session's other
    requests alongside."""
    logs: list[Any] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params.data)

    with together(
        start_http_upstream("--transport", "sse", "--name", "alpha"),
        start_http_upstream("--name", "proto", command=proto_command),
    ) as (alpha, proto):
        servers = {"alpha": {"mcp_server_type": "sse", "server_url": alpha + "/sse"}, "proto": http_server(proto)}
        with http_gateway(tmp_path, servers) as base:
            answers: dict[int, tuple[str, bool]] = {}
            async with sse_client(base + "/sse") as (read, write):
                async with ClientSession(read, write, logging_callback=on_log) as session:
                    await session.initialize()
                    await session.list_tools()
                    await session.set_logging_level("debug")

                    async def one(i: int) -> None:
                        if i % 4 == 0:
                            result = await session.call_tool("alpha__fail", {"message": f"no {i}"})
                        else:
                            result = await session.call_tool("alpha__echo", {"text": f"call {i}"})
                        answers[i] = (text_of(result), bool(result.is_error))

                    with anyio.fail_after(60):
                        async with anyio.create_task_group() as tg:
                            for i in range(40):
                                tg.start_soon(one, i)
                        for _ in range(5):  # log lines ride ahead of the answer, every time
                            logs.clear()
                            assert text_of(await session.call_tool("proto__chatty", {"n": 2})) == "done"
                            assert logs == ["proto line 0", "proto line 1"]
                        with pytest.raises(MCPError):
                            await session.call_tool("alpha__slow", {"seconds": 0.9}, read_timeout_seconds=0.3)
                        assert len((await session.list_tools()).tools) > 5
                        assert text_of(await session.call_tool("alpha__echo", {"text": "after"})) == "after"
            assert answers == {i: (f"no {i}", True) if i % 4 == 0 else (f"call {i}", False) for i in range(40)}
            assert lean_calls(base, "sse") == 47


async def test_answers_spread_over_many_lines_reach_every_face_whole(tmp_path: Path) -> None:
    """Servers that indent their JSON (a body, or an SSE event over many `data:` lines): each face
    still frames the answer as one message (an SSE event's data, a JSON body)."""
    with together(
        start_http_upstream("--name", "events", "--pretty"),
        start_http_upstream("--name", "bodies", "--json-response", "--pretty"),
        start_http_upstream("--transport", "sse", "--name", "legacy", "--pretty"),
    ) as (events, bodies, legacy):
        servers = {
            "events": http_server(events),
            "bodies": http_server(bodies),
            "legacy": {"mcp_server_type": "sse", "server_url": legacy + "/sse"},
        }
        with http_gateway(tmp_path, servers) as base:
            text = 'two\nlines "quoted"'
            async with session_to(base) as session:
                for server in servers:
                    assert text_of(await session.call_tool(f"{server}__echo", {"text": text})) == text
            async with sse_client(base + "/sse") as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                for server in servers:
                    assert text_of(await session.call_tool(f"{server}__echo", {"text": text})) == text
            assert (lean_calls(base), lean_calls(base, "sse")) == (3, 3)
