"""Hot reload: edit the config under a connected client; SIGHUP; a broken edit changes nothing."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
import yaml
from mcp.client.session import ClientSession
from mcp.client.stdio import stdio_client
from test_gateway import fixture_stdio, gateway_params, text_of, write_config

pytestmark = pytest.mark.anyio


async def names(session: ClientSession) -> set[str]:
    return {tool.name for tool in (await session.list_tools()).tools}


async def until(session: ClientSession, changed: Any, predicate: Any) -> set[str]:
    """Wait for list_changed notifications until the tool names satisfy `predicate`."""
    with anyio.fail_after(20):
        while not predicate(current := await names(session)):
            await changed.receive()
    return current


def rewrite(path: Path, servers: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump({"mcp_servers": servers}))


async def test_edits_apply_live_and_a_broken_edit_changes_nothing(tmp_path: Path) -> None:
    alpha, beta = fixture_stdio("alpha"), fixture_stdio("beta")
    config = write_config(tmp_path, {"alpha": alpha, "beta": beta})
    send, changed = anyio.create_memory_object_stream[Any](100)

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            await send.send(message)

    params = gateway_params(config)
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write, message_handler=on_message) as session:
            await session.initialize()
            assert {"alpha__whoami", "beta__whoami"} <= await names(session)

            # Add gamma, remove beta, leave alpha alone (its process and session survive).
            rewrite(config, {"alpha": alpha, "gamma": fixture_stdio("gamma")})
            current = await until(session, changed, lambda n: "gamma__whoami" in n and "beta__whoami" not in n)
            assert "alpha__whoami" in current
            assert text_of(await session.call_tool("gamma__whoami", {})) == "gamma"
            assert text_of(await session.call_tool("alpha__whoami", {})) == "alpha"

            # A broken edit is rejected: everything keeps working as it was.
            config.write_text("mcp_servers:\n  alpha:\n    mcp_server_type: nope\n")
            # A valid edit after it proves the broken one was read and skipped.
            rewrite(config, {"alpha": alpha, "gamma": fixture_stdio("gamma", prefix=False)})
            current = await until(session, changed, lambda n: "whoami" in n and "gamma__whoami" not in n)
            assert "alpha__whoami" in current
            assert text_of(await session.call_tool("whoami", {})) == "gamma"


async def test_sighup_reloads(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"alpha": fixture_stdio("alpha")})
    send, changed = anyio.create_memory_object_stream[Any](100)

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            await send.send(message)

    async with stdio_client(gateway_params(config, "--no-watch")) as (read, write):
        async with ClientSession(read, write, message_handler=on_message) as session:
            await session.initialize()
            assert "alpha__whoami" in await names(session)
            pid = _gateway_pid()
            # The file is not watched (--no-watch): only SIGHUP can make this edit take effect.
            rewrite(config, {"alpha": fixture_stdio("alpha"), "beta": fixture_stdio("beta")})
            import os

            os.kill(pid, signal.SIGHUP)
            await until(session, changed, lambda n: "beta__whoami" in n)


def _gateway_pid() -> int:
    """The newest `manifold serve` child of this test process."""
    import os

    me = str(os.getpid())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = f.read().rsplit(")", 1)[1].split()[1]
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if ppid == me and b"manifold" in cmd and b"serve" in cmd:
            found.append(int(entry))
    assert len(found) == 1, found
    return found[0]
