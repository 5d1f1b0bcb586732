"""Early spawns: `manifold serve` starts its configured stdio servers before its own imports.

What a user would notice if this went wrong: a server started twice (the early
process left running next to a second one), a process left behind that no
server uses, or a server that no longer gets the environment the SDK gives it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mcp.client.stdio import DEFAULT_INHERITED_ENV_VARS, get_default_environment
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from support import FIXTURE, PYTHON, async_wait_for, subprocess_env

from manifold.config import GatewayConfig, StdioServerConfig
from manifold.gateway import Gateway
from manifold.upstream import spawn

pytestmark = pytest.mark.anyio


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _starts(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def _server(name: str, starts: Path) -> StdioServerConfig:
    return StdioServerConfig(command=PYTHON, args=[FIXTURE, "--name", name, "--record-start", str(starts)])


def test_the_inherited_environment_is_the_sdks() -> None:
    assert list(spawn.INHERITED_ENV_VARS) == list(DEFAULT_INHERITED_ENV_VARS)
    assert spawn.default_environment() == get_default_environment()


async def test_each_configured_server_runs_once_and_nothing_is_left_behind(tmp_path: Path) -> None:
    """Through the real CLI: the early processes are the servers the gateway talks to."""
    starts = {name: tmp_path / f"{name}.starts" for name in ("alpha", "beta")}
    lazy_starts = tmp_path / "lazy.starts"
    config = tmp_path / "manifold.yaml"
    config.write_text(
        "mcp_servers:\n"
        + "".join(
            f"  {name}: {{mcp_server_type: stdio, command: {PYTHON}, args: [{FIXTURE}, --name, {name}, --record-start, {path}]}}\n"
            for name, path in starts.items()
        )
        + f"  off: {{mcp_server_type: stdio, enabled: false, command: {PYTHON}, args: [{FIXTURE}, --record-start, {lazy_starts}]}}\n"
    )
    params = StdioServerParameters(
        command=PYTHON,
        args=["-m", "manifold", "serve", "--config", str(config), "--no-watch"],
        env=subprocess_env({"XDG_DATA_HOME": str(tmp_path)}),
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        answer = await session.call_tool("alpha__echo", {"text": "hi"})
        assert [c.text for c in answer.content] == ["hi"]  # type: ignore[union-attr]
        names = {t.name for t in (await session.list_tools()).tools}
        assert {"alpha__echo", "beta__echo"} <= names
        pids = {name: _starts(path) for name, path in starts.items()}
        assert all(len(found) == 1 for found in pids.values()), pids  # started once each, not twice
        assert all(_alive(found[0]) for found in pids.values())
    await async_wait_for(lambda: not any(_alive(p[0]) for p in pids.values()), what="the servers gone")
    assert not lazy_starts.exists()  # a disabled server is not started early either


async def test_an_early_process_no_server_takes_is_stopped_once_the_gateway_has_settled(tmp_path: Path) -> None:
    untaken, taken = tmp_path / "untaken.starts", tmp_path / "taken.starts"
    async with spawn.early_spawns([_server("gone", untaken), _server("kept", taken)]):
        (pid,) = await async_wait_for(lambda: _starts(untaken), timeout=30, what="the early server up")
        # The config changed meanwhile: only "kept" is a server of this gateway.
        gateway = Gateway(GatewayConfig(servers={"kept": _server("kept", taken)}))
        async with gateway.running():
            await gateway.wait_settled()
            assert "kept__echo" in {tool["name"] for tool in gateway.catalog.tools}
            await async_wait_for(lambda: not _alive(pid), timeout=10, what="the untaken server stopped")
            assert len(_starts(taken)) == 1


async def test_early_processes_are_stopped_when_their_scope_ends_untaken(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    async with spawn.early_spawns([_server("a", starts), _server("b", starts)]):
        pids = await async_wait_for(lambda: len(_starts(starts)) == 2 and _starts(starts), timeout=30, what="both up")
    assert not any(_alive(pid) for pid in pids)  # stopped (and waited for) on the way out


async def test_a_server_that_cannot_be_started_early_is_left_to_its_own_start(tmp_path: Path) -> None:
    missing = StdioServerConfig(command=str(tmp_path / "no-such-program"))
    async with spawn.early_spawns([missing]):
        gateway = Gateway(GatewayConfig(servers={"missing": missing}))
        async with gateway.running():
            await gateway.wait_settled()
            assert "command not found" in (gateway.upstreams["missing"].last_error or "")
