"""The fixture upstream and the demo server, checked with the SDK's own client over real transports."""

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from support import (
    EVERYTHING,
    PYTHON,
    ProcessStartError,
    demo_command,
    demo_stdio_params,
    fixture_command,
    fixture_stdio_params,
    http_upstream,
    running_process,
    start_http_upstream,
    together,
    wait_for,
)

pytestmark = pytest.mark.anyio

CALL_TIMEOUT = 15
AUTH = ("X-Api-Key=s3cret", "Authorization=Bearer tok en")
AUTH_HEADERS = {"X-Api-Key": "s3cret", "Authorization": "Bearer tok en"}
FIXTURE_BASE_TOOLS = {"echo", "whoami", "fail", "slow", "register_tool"}


@contextmanager
def demo_twice() -> Iterator[tuple[str, str]]:
    """The demo with `--port 0` (SSE), stopped; then with that port given explicitly (streamable HTTP)."""
    with running_process(demo_command("--transport", "sse", "--port", "0")) as (_, first):
        pass
    port = first.rsplit(":", 1)[1]
    with running_process(demo_command("--transport", "streamable-http", "--port", port)) as (_, second):
        yield first, second


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Any]]:
    """Every HTTP server this module talks to, started in parallel (the SDK import is slow)."""
    auth = [f"--require-header={h}" for h in AUTH]
    started = {
        "http": start_http_upstream("--name", "alpha", "--tools", "300", "--long-names", *auth),
        "sse": start_http_upstream("--transport", "sse", "--name", "beta", *auth),
        "demo": demo_twice(),
    }
    with together(*started.values()) as urls:
        yield dict(zip(started, urls, strict=True))


@asynccontextmanager
async def session_over(
    transport: str, target: Any, headers: dict[str, str] | None = None, **session_args: Any
) -> AsyncIterator[ClientSession]:
    """An initialized client session over stdio (target: StdioServerParameters) or HTTP (target: URL)."""
    with anyio.fail_after(CALL_TIMEOUT):
        if transport == "stdio":
            async with stdio_client(target) as (read, write):
                async with ClientSession(read, write, **session_args) as session:
                    await session.initialize()
                    yield session
        elif transport == "streamable-http":
            async with httpx2.AsyncClient(headers=headers or {}, timeout=CALL_TIMEOUT) as http:
                async with streamable_http_client(target, http_client=http) as (read, write):
                    async with ClientSession(read, write, **session_args) as session:
                        await session.initialize()
                        yield session
        elif transport == "sse":
            async with sse_client(target, headers=headers) as (read, write):
                async with ClientSession(read, write, **session_args) as session:
                    await session.initialize()
                    yield session
        else:
            raise ValueError(transport)


def text_of(result: types.CallToolResult) -> str:
    return "".join(block.text for block in result.content if isinstance(block, types.TextContent))


def leaves(error: BaseException) -> list[BaseException]:
    """The non-group exceptions inside a (nested) exception group."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]


async def all_tools(session: ClientSession) -> list[types.Tool]:
    tools: list[types.Tool] = []
    cursor: str | None = None
    while True:
        params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            return tools


# --- the demo server ----------------------------------------------------------------------------


async def test_demo_over_stdio_lists_everything_and_computes() -> None:
    progress: list[tuple[float, float | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total))

    async with session_over("stdio", demo_stdio_params("--name", "demo")) as session:
        assert session.initialize_result is not None
        assert session.initialize_result.server_info.name == "demo"
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}
        assert set(tools) == {"echo", "add", "word_count", "slugify", "countdown"}
        assert tools["word_count"].output_schema is not None

        assert text_of(await session.call_tool("add", {"a": 2, "b": 3.5})) == "5.5"
        assert text_of(await session.call_tool("echo", {"text": "héllo"})) == "héllo"
        assert text_of(await session.call_tool("slugify", {"text": "Hello, World!"})) == "hello-world"
        counted = await session.call_tool("word_count", {"text": "one two\nthree"})
        assert counted.structured_content == {"words": 3, "characters": 13, "lines": 2}
        done = await session.call_tool("countdown", {"n": 5}, progress_callback=on_progress)
        assert not done.is_error
        assert progress == [(step, 5) for step in range(1, 6)]

        prompts = (await session.list_prompts()).prompts
        assert [p.name for p in prompts] == ["summarize"]
        prompt = await session.get_prompt("summarize", {"text": "abc"})
        assert "abc" in prompt.messages[0].content.text  # type: ignore[union-attr]

        resources = (await session.list_resources()).resources
        assert [str(r.uri) for r in resources] == ["demo://demo/readme"]
        templates = (await session.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["demo://demo/greeting/{name}"]
        greeting = await session.read_resource("demo://demo/greeting/Ada")
        assert greeting.contents[0].text == "Hello, Ada!"  # type: ignore[union-attr]


async def test_demo_over_http_on_an_ephemeral_then_an_explicit_port(servers: dict[str, Any]) -> None:
    first, second = servers["demo"]
    assert first.startswith("http://127.0.0.1:") and int(first.rsplit(":", 1)[1]) > 0
    assert second == first  # an explicit port prints the same line
    async with session_over("streamable-http", second + "/mcp") as session:
        assert session.initialize_result.server_info.name == "manifold-demo"  # type: ignore[union-attr]
        assert text_of(await session.call_tool("add", {"a": 1, "b": 1})) == "2.0"


# --- the fixture upstream -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("transport", "key", "path"), [("streamable-http", "http", "/mcp"), ("sse", "sse", "/sse")]
)
async def test_fixture_answers_whoami_over_http(
    servers: dict[str, Any], transport: str, key: str, path: str
) -> None:
    name = {"http": "alpha", "sse": "beta"}[key]
    async with session_over(transport, servers[key] + path, headers=AUTH_HEADERS) as session:
        assert text_of(await session.call_tool("whoami", {})) == name
        assert text_of(await session.call_tool("echo", {"text": " as is "})) == " as is "
        failed = await session.call_tool("fail", {"message": "boom"})
        assert failed.is_error and text_of(failed) == "boom"
        info = await session.read_resource(f"fixture://{name}/info")
        assert name in info.contents[0].text  # type: ignore[union-attr]
        item = await session.read_resource(f"fixture://{name}/items/42")
        assert item.contents[0].text == f"{name} item 42"  # type: ignore[union-attr]
        greeting = await session.get_prompt("greet", {"name": "Ada"})
        assert greeting.messages[0].content.text == f"{name} says hello to Ada"  # type: ignore[union-attr]


async def test_fixture_lists_300_generated_tools_and_odd_names(servers: dict[str, Any]) -> None:
    async with session_over("streamable-http", servers["http"] + "/mcp", headers=AUTH_HEADERS) as session:
        tools = await all_tools(session)
        names = [tool.name for tool in tools]
        generated = [name for name in names if name.startswith("tool_")]
        assert generated == [f"tool_{i:04d}" for i in range(300)]
        assert len({tool.description for tool in tools}) == len(tools)
        assert FIXTURE_BASE_TOOLS <= set(names)
        assert {"get.weather", "get_weather", "a tool with spaces"} <= set(names)
        assert max(len(name) for name in names) == 90
        assert text_of(await session.call_tool("tool_0299", {"value": "x"})) == "alpha:tool_0299:x"
        assert text_of(await session.call_tool("a tool with spaces", {})) == "alpha:a tool with spaces"


async def test_fixture_slow_tool_can_be_timed_out(servers: dict[str, Any]) -> None:
    async with session_over("streamable-http", servers["http"] + "/mcp", headers=AUTH_HEADERS) as session:
        with pytest.raises(MCPError):
            await session.call_tool("slow", {"seconds": 5}, read_timeout_seconds=0.2)
        assert text_of(await session.call_tool("slow", {"seconds": 0.01})) == "alpha slept 0.01"


@pytest.mark.parametrize(
    ("transport", "key", "path"), [("streamable-http", "http", "/mcp"), ("sse", "sse", "/sse")]
)
async def test_required_headers(servers: dict[str, Any], transport: str, key: str, path: str) -> None:
    url = servers[key] + path
    async with httpx2.AsyncClient(timeout=CALL_TIMEOUT) as http:
        assert (await http.get(url)).status_code == 401
        one_missing = {"X-Api-Key": "s3cret"}
        assert (await http.get(url, headers=one_missing)).status_code == 401
        wrong = {**AUTH_HEADERS, "X-Api-Key": "S3CRET"}
        assert (await http.get(url, headers=wrong)).status_code == 401

    with pytest.raises(BaseException) as refused:  # noqa: B017 - the SDK wraps it in task groups
        async with session_over(transport, url, headers=one_missing):
            pass
    assert any(isinstance(leaf, MCPError | httpx2.HTTPStatusError) for leaf in leaves(refused.value))

    async with session_over(transport, url, headers=AUTH_HEADERS) as session:
        assert text_of(await session.call_tool("whoami", {})) in {"alpha", "beta"}


async def test_fixture_over_stdio_announces_registered_tools() -> None:
    notices: list[Any] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            notices.append(message)

    params = fixture_stdio_params("--name", "epsilon", "--tools", "3")
    async with session_over("stdio", params, message_handler=on_message) as session:
        caps = session.initialize_result.capabilities  # type: ignore[union-attr]
        assert caps.tools is not None and caps.tools.list_changed
        before = {tool.name for tool in (await session.list_tools()).tools}
        assert before == FIXTURE_BASE_TOOLS | {"tool_0000", "tool_0001", "tool_0002"}
        assert (
            text_of(await session.call_tool("register_tool", {"tool_name": "late"}))
            == "epsilon registered late"
        )
        with anyio.fail_after(5):
            while not notices:
                await anyio.sleep(0.01)
        after = {tool.name for tool in (await session.list_tools()).tools}
        assert after == before | {"late"}
        assert text_of(await session.call_tool("late", {})) == "epsilon:late"


def test_fixture_crash_on_start() -> None:
    with pytest.raises(ProcessStartError) as failed:
        with running_process(fixture_command("--transport", "sse", "--crash-on-start")):
            pass  # pragma: no cover
    report = str(failed.value)
    assert "exited with status 3" in report
    stdout, stderr = report.split("--- stdout ---\n", 1)[1].split("\n--- stderr ---\n", 1)
    assert stdout == ""
    assert stderr.count("\n") == 1 and "crashing on start" in stderr


def test_running_process_stops_what_it_started() -> None:
    with running_process([PYTHON, "-c", "print('LISTENING x', flush=True); import time; time.sleep(60)"]) as (
        proc,
        rest,
    ):
        assert rest == "x"
        assert proc.poll() is None
    assert proc.poll() is not None

    with pytest.raises(ProcessStartError, match="printed no line"):
        with running_process([PYTHON, "-c", "import time; time.sleep(60)"], timeout=0.5):
            pass  # pragma: no cover


def test_wait_for() -> None:
    calls: list[int] = []
    assert wait_for(lambda: calls.append(1) or len(calls) >= 3, timeout=5) is True
    with pytest.raises(TimeoutError, match="never"):
        wait_for(lambda: False, timeout=0.05, what="never")


def test_stdio_params_helpers() -> None:
    assert isinstance(fixture_stdio_params(), StdioServerParameters)
    assert demo_stdio_params().args[:2] == ["-m", "manifold.demo"]


async def test_http_upstream_async_helper_stops_its_process() -> None:
    script = "import os, time; print('LISTENING http://127.0.0.1:9', os.getpid(), flush=True); time.sleep(60)"
    async with http_upstream(command=lambda *args: [PYTHON, "-c", script, *args]) as ready:
        url, pid = ready.split()
        assert url == "http://127.0.0.1:9"
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid), 0)  # gone (and reaped)


def test_everything_server_is_installed() -> None:
    assert Path(EVERYTHING).is_file()
