"""The gateway end to end: real upstreams on every transport, real clients on every face."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import pytest
import yaml
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from support import (
    EVERYTHING,
    FIXTURE,
    PYTHON,
    running_process,
    start_http_upstream,
    subprocess_env,
    together,
    wait_for,
)

pytestmark = pytest.mark.anyio


def write_config(tmp_path: Path, servers: dict[str, Any], **gateway: Any) -> Path:
    data: dict[str, Any] = {"mcp_servers": servers}
    if gateway:
        data["gateway"] = gateway
    path = tmp_path / "manifold.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def fixture_stdio(name: str, *extra: str, **keys: Any) -> dict[str, Any]:
    return {"mcp_server_type": "stdio", "command": PYTHON, "args": [FIXTURE, "--name", name, *extra], **keys}


def gateway_params(config: Path, *extra: str) -> StdioServerParameters:
    env = subprocess_env()
    return StdioServerParameters(
        command=PYTHON, args=["-m", "manifold", "serve", "--config", str(config), *extra], env=env
    )


@asynccontextmanager
async def stdio_gateway(config: Path) -> AsyncIterator[ClientSession]:
    async with stdio_client(gateway_params(config)) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            yield session


@asynccontextmanager
async def http_session(url: str) -> AsyncIterator[ClientSession]:
    async with create_mcp_http_client() as client:
        async with streamable_http_client(url, http_client=client) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session


def text_of(result: types.CallToolResult) -> str:
    return "".join(block.text for block in result.content if isinstance(block, types.TextContent))


@pytest.fixture(scope="module")
def http_upstreams() -> Any:
    """One SSE and one streamable-HTTP fixture; the latter only answers with its headers."""
    with together(
        start_http_upstream("--transport", "sse", "--name", "beta"),
        start_http_upstream(
            "--name", "gamma", "--require-header", "X-Api-Key=k-123", "--require-header", "X-Team=blue"
        ),
    ) as (beta, gamma):
        yield {"beta": beta + "/sse", "gamma": gamma + "/mcp"}


def three_transports(urls: dict[str, str]) -> dict[str, Any]:
    return {
        "alpha": fixture_stdio("alpha"),
        "beta": {"mcp_server_type": "sse", "server_url": urls["beta"]},
        "gamma": {
            "mcp_server_type": "streamable_http",
            "server_url": urls["gamma"],
            "auth_header": "X-Api-Key",
            "auth_token": "k-123",
            "custom_headers": {"X-Team": "blue"},
        },
    }


async def check_routing(session: ClientSession) -> None:
    tools = {t.name for t in (await session.list_tools()).tools}
    for server in ("alpha", "beta", "gamma"):
        assert {f"{server}__echo", f"{server}__whoami", f"{server}__fail"} <= tools
        assert text_of(await session.call_tool(f"{server}__whoami", {})) == server
    echoed = await session.call_tool("gamma__echo", {"text": "hello  world"})
    assert text_of(echoed) == "hello  world"

    prompts = {p.name for p in (await session.list_prompts()).prompts}
    assert {"alpha__greet", "beta__greet", "gamma__greet"} <= prompts
    prompt = await session.get_prompt("beta__greet", {"name": "Ada"})
    assert "Ada" in json.dumps(prompt.model_dump(mode="json"))

    uris = {str(r.uri) for r in (await session.list_resources()).resources}
    assert {"fixture://alpha/info", "fixture://beta/info", "fixture://gamma/info"} <= uris
    read = await session.read_resource("fixture://gamma/info")
    assert "gamma" in read.contents[0].text
    templated = await session.read_resource("fixture://alpha/items/42")
    assert "42" in templated.contents[0].text

    # The upstream's own error result passes through unchanged.
    failed = await session.call_tool("beta__fail", {"message": "boom"})
    assert failed.is_error and "boom" in text_of(failed)
    with pytest.raises(MCPError, match="unknown tool 'nope__echo'"):
        await session.call_tool("nope__echo", {})


async def test_three_transports_behind_the_stdio_face(tmp_path: Path, http_upstreams: dict[str, str]) -> None:
    config = write_config(tmp_path, three_transports(http_upstreams))
    async with stdio_gateway(config) as session:
        await check_routing(session)


@pytest.fixture
def http_gateway(tmp_path: Path, http_upstreams: dict[str, str]) -> Any:
    config = write_config(tmp_path, three_transports(http_upstreams))
    cmd = [PYTHON, "-m", "manifold", "serve", "--transport", "http", "--port", "0", "--config", str(config)]
    env = subprocess_env({"MANIFOLD_DB": f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"})
    with running_process(cmd, env=env) as (proc, base):
        yield base


async def test_three_transports_behind_the_http_faces(http_gateway: str) -> None:
    async with http_session(http_gateway + "/mcp") as session:
        await check_routing(session)
    async with sse_client(http_gateway + "/sse") as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            await check_routing(session)


def test_healthz_reports_each_server(http_gateway: str) -> None:
    def states() -> dict[str, Any] | None:
        health = httpx2.get(http_gateway + "/healthz").json()
        assert health["status"] == "ok"
        servers = health["servers"]
        return servers if all(s["state"] == "ready" for s in servers.values()) else None

    servers = wait_for(states, timeout=20, what="every server ready")
    assert set(servers) == {"alpha", "beta", "gamma"}
    health = {"servers": servers}
    assert health["servers"]["gamma"]["tools"] >= 4


async def test_dns_rebinding_is_refused_on_loopback(http_gateway: str) -> None:
    async with httpx2.AsyncClient() as client:
        response = await client.post(
            http_gateway + "/mcp",
            headers={
                "Host": "evil.example",
                "Content-Type": "application/json",
                "Accept": "application/json, text/event-stream",
            },
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
        )
    assert response.status_code in (403, 421)


async def test_missing_headers_mean_the_server_is_left_out_not_the_gateway(
    tmp_path: Path, http_upstreams: dict[str, str]
) -> None:
    servers = three_transports(http_upstreams)
    servers["gamma"]["custom_headers"] = {}  # the upstream now answers 401
    servers["broken"] = fixture_stdio("broken", "--crash-on-start", connect_timeout=5)
    servers["missing"] = {"mcp_server_type": "stdio", "command": "/nonexistent/mcp-server"}
    config = write_config(tmp_path, servers)
    async with stdio_gateway(config) as session:
        tools = {t.name for t in (await session.list_tools()).tools}
        assert "alpha__whoami" in tools and "beta__whoami" in tools
        assert not any(name.startswith(("gamma__", "broken__", "missing__")) for name in tools)
        assert text_of(await session.call_tool("alpha__whoami", {})) == "alpha"


async def test_server_everything_from_npm(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {
            "everything": {"mcp_server_type": "stdio", "command": "node", "args": [EVERYTHING, "stdio"]},
            "alpha": fixture_stdio("alpha"),
        },
    )
    async with stdio_gateway(config) as session:
        tools = {t.name for t in (await session.list_tools()).tools}
        assert "everything__echo" in tools and "alpha__echo" in tools
        result = await session.call_tool("everything__echo", {"message": "hi"})
        assert "hi" in text_of(result)
        added = await session.call_tool("everything__get-sum", {"a": 2, "b": 3})
        assert "5" in text_of(added)


async def test_unprefixed_server_and_name_sanitising(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {
            "plain": fixture_stdio("plain", prefix=False),
            "odd.server": fixture_stdio("odd", "--long-names"),
        },
    )
    async with stdio_gateway(config) as session:
        tools = {t.name for t in (await session.list_tools()).tools}
        assert "whoami" in tools  # unprefixed
        assert "odd_server__whoami" in tools  # invalid characters replaced
        assert all(len(name) <= 64 and name.replace("_", "").replace("-", "").isalnum() for name in tools)
        assert text_of(await session.call_tool("whoami", {})) == "plain"
        dotted = next(name for name in tools if name.startswith("odd_server__get_weather"))
        assert (await session.call_tool(dotted, {})) is not None


def _children(pid: int) -> set[int]:
    """Every descendant of `pid`, read from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_stdout_carries_only_frames_and_every_process_stops(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"alpha": fixture_stdio("alpha"), "beta": fixture_stdio("beta")})
    proc = subprocess.Popen(
        [PYTHON, "-m", "manifold", "serve", "--config", str(config), "--log-level", "debug"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    try:
        assert proc.stdin and proc.stdout
        frames = [
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "t", "version": "1"},
                },
            },
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        ]
        for frame in frames:
            proc.stdin.write(json.dumps(frame) + "\n")
        proc.stdin.flush()
        replies: dict[int, Any] = {}
        while 2 not in replies:  # notifications (list_changed as servers come up) may come between
            frame = json.loads(proc.stdout.readline())
            assert frame["jsonrpc"] == "2.0"
            if "id" in frame:
                replies[frame["id"]] = frame
        assert replies[1]["result"]["serverInfo"]["name"] == "manifold"
        assert len(replies[2]["result"]["tools"]) >= 8
        children = wait_for(lambda: _children(proc.pid) or None, what="upstream processes")
        assert len(children) >= 2
        proc.stdin.close()  # EOF: the gateway shuts down
        assert proc.wait(timeout=20) == 0
        for line in proc.stdout.read().splitlines():  # anything else on stdout must be a frame too
            assert json.loads(line)["jsonrpc"] == "2.0"
        wait_for(lambda: not any(_alive(pid) for pid in children), what="upstreams to exit")
        assert proc.stderr is not None
        assert "upstream ready" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_secrets_never_reach_a_log_line(tmp_path: Path, http_upstreams: dict[str, str]) -> None:
    token = "sekrit-token-8c1f"  # the upstream wants another value, so it answers 401 and we log why
    servers = {
        "alpha": fixture_stdio("alpha", env={"API_KEY": "env-secret-77aa"}),
        "gamma": {
            "mcp_server_type": "streamable_http",
            "server_url": http_upstreams["gamma"],
            "auth_header": "X-Api-Key",
            "auth_token": token,
            "custom_headers": {"X-Team": "header-secret-31b"},
            "connect_timeout": 3,
        },
    }
    config = write_config(tmp_path, servers)
    proc = subprocess.Popen(
        [PYTHON, "-m", "manifold", "serve", "--config", str(config), "--log-level", "debug"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    try:
        assert proc.stdin is not None and proc.stderr is not None
        seen: list[str] = []
        # Read until the failed connection has been logged, then shut down.
        for line in proc.stderr:
            seen.append(line)
            if "gamma" in line and "failed" in line:
                break
        proc.stdin.close()
        seen.append(proc.stderr.read())
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(seen)
    assert "gamma" in text
    for secret in (token, "env-secret-77aa", "header-secret-31b"):
        assert secret not in text


async def test_tool_filters_renames_and_descriptions(tmp_path: Path) -> None:
    shaping = {
        "allow": ["echo", "who*", "fail"],
        "deny": ["fail"],
        "rename": {"whoami": "identity"},
        "descriptions": {"echo": "Repeat it."},
    }
    config = write_config(tmp_path, {"alpha": fixture_stdio("alpha", tools=shaping), "beta": fixture_stdio("beta")})
    async with stdio_gateway(config) as session:
        tools = {t.name: t for t in (await session.list_tools()).tools}
        alpha = sorted(name for name in tools if name.startswith("alpha__"))
        assert alpha == ["alpha__echo", "alpha__identity"]
        assert tools["alpha__echo"].description == "Repeat it."
        assert "beta__fail" in tools  # another server's tools are untouched
        assert text_of(await session.call_tool("alpha__identity", {})) == "alpha"
        for hidden in ("alpha__fail", "alpha__whoami", "alpha__slow"):
            with pytest.raises(MCPError, match="unknown tool"):
                await session.call_tool(hidden, {"message": "x"})
