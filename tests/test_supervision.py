"""Supervision and failure isolation (issue 6): real processes, real faults, no sleeps as synchronisation.

Upstreams here are mostly `upstreams/chaos_server.py` (stdlib JSON-RPC, starts in milliseconds and
misbehaves on request) and `upstreams/http_status_server.py` (answers every request with one
status). Some tests drive a `Gateway` in this process (its states are then directly visible); the
others run `manifold serve` as a subprocess and talk to it as clients do. Every wait is an event
or a poll with a deadline; every process a test starts is stopped, grandchildren included.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
import yaml
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT
from support import (
    PYTHON,
    TESTS,
    async_wait_for,
    fixture_command,
    http_upstream,
    running_process,
    subprocess_env,
    wait_for,
)

from manifold.config import SERVER_CONFIG, GatewayConfig
from manifold.gateway import Gateway
from manifold.upstream import connection, reaper
from manifold.upstream.connection import State, Upstream, UpstreamError

pytestmark = pytest.mark.anyio

CHAOS = str(TESTS / "upstreams" / "chaos_server.py")
STATUS_SERVER = str(TESTS / "upstreams" / "http_status_server.py")
SECRET = "s3cr3t-Token-9f2c"
LOAD_CALLS = int(os.environ.get("MANIFOLD_LOAD_CALLS", "30"))
"""Calls per client in the load test; the issue's full form is MANIFOLD_LOAD_CALLS=1000."""

# A wrapper like npx/uvx: `sh -c` starts a helper that ignores stdin, SIGTERM, SIGHUP and SIGINT
# and keeps the server's stdout open, then runs the server as its child (not exec).
WRAPPER_SCRIPT = '( trap "" TERM HUP INT; exec sleep 3600 ) </dev/null & "$@"; exit $?'


def chaos(name: str, *extra: str, **keys: Any) -> dict[str, Any]:
    return {"mcp_server_type": "stdio", "command": PYTHON, "args": [CHAOS, "--name", name, *extra], **keys}


def wrapped(name: str, *extra: str, **keys: Any) -> dict[str, Any]:
    args = ["-c", WRAPPER_SCRIPT, "wrapper", PYTHON, CHAOS, "--name", name, *extra]
    return {"mcp_server_type": "stdio", "command": "sh", "args": args, **keys}


def text_of(result: Any) -> str:
    if isinstance(result, dict):
        return "".join(block.get("text", "") for block in result.get("content", []))
    return "".join(block.text for block in result.content if isinstance(block, types.TextContent))


# --- process trees, from /proc --------------------------------------------------------------


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, start time) of a process, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[0], int(fields[19])


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def tree(pid: int, *, include_root: bool = False) -> dict[int, tuple[int, str]]:
    """Every live descendant of `pid` as {pid: (start time, command name)}."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None and stat[1] != "Z":
            parents[int(entry)] = stat[0]
    found: set[int] = {pid} if include_root else set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    result = {}
    for p in found:
        stat = _stat(p)
        if stat is not None:
            result[p] = (stat[2], _comm(p))
    return result


def alive(pid: int, started: int) -> bool:
    """True while that very process (pid and start time) runs; a zombie counts as gone."""
    stat = _stat(pid)
    return stat is not None and stat[1] != "Z" and stat[2] == started


def survivors(snapshot: dict[int, tuple[int, str]]) -> dict[int, str]:
    return {pid: comm for pid, (started, comm) in snapshot.items() if alive(pid, started)}


def kill_all(snapshot: dict[int, tuple[int, str]]) -> None:
    """Last-resort cleanup after a failed test: nothing this test started may outlive it."""
    for pid in survivors(snapshot):
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


# --- an in-process gateway -------------------------------------------------------------------


@asynccontextmanager
async def gateway_with(servers: dict[str, dict[str, Any]]) -> AsyncIterator[Gateway]:
    config = GatewayConfig(servers={name: SERVER_CONFIG.validate_python(body) for name, body in servers.items()})
    gateway = Gateway(config)
    async with gateway.running():
        yield gateway


async def wait_state(upstream: Upstream, *states: State, timeout: float = 20.0) -> None:
    await async_wait_for(lambda: upstream.state in states, timeout, what=f"{upstream.name} to be {states}")


# --- a gateway subprocess ---------------------------------------------------------------------


def write_config(path: Path, servers: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"mcp_servers": servers}))
    return path


def gateway_env(tmp: Path) -> dict[str, str]:
    return subprocess_env({"MANIFOLD_DB": f"sqlite+aiosqlite:///{tmp / 'manifold.db'}", "XDG_DATA_HOME": str(tmp)})


@contextmanager
def http_gateway(tmp: Path, servers: dict[str, Any]) -> Iterator[tuple[subprocess.Popen[str], str]]:
    config = write_config(tmp / "manifold.yaml", servers)
    cmd = [PYTHON, "-m", "manifold", "serve", "--config", str(config), "--transport", "http", "--port", "0"]
    with running_process(cmd, env=gateway_env(tmp)) as (proc, url):
        snapshot: dict[int, tuple[int, str]] = {}
        try:
            yield proc, url
        finally:
            snapshot = tree(proc.pid)
    # running_process stopped the gateway; its reapers take every upstream down with them.
    try:
        wait_for(lambda: not survivors(snapshot), 15, what="the gateway's upstreams to exit")
    finally:
        kill_all(snapshot)


def health(url: str) -> dict[str, Any]:
    return httpx2.get(url + "/healthz", timeout=10).json()["servers"]


async def ahealth(url: str) -> dict[str, Any]:
    async with httpx2.AsyncClient(timeout=10) as client:
        return (await client.get(url + "/healthz")).json()["servers"]


@asynccontextmanager
async def mcp_client(
    url: str, on_message: Callable[[Any], None] | None = None
) -> AsyncIterator[ClientSession]:
    async def handler(message: Any) -> None:
        if on_message is not None:
            on_message(message)

    async with httpx2.AsyncClient(timeout=httpx2.Timeout(30, read=300)) as http:
        async with streamable_http_client(url + "/mcp", http_client=http) as (read, write):
            async with ClientSession(read, write, message_handler=handler) as session:
                await session.initialize()
                yield session


async def call(session: ClientSession, tool: str, args: dict[str, Any] | None = None) -> str:
    """The text of a successful call; MCPError (or AssertionError for an isError result) otherwise."""
    result = await session.call_tool(tool, args or {})
    assert not result.is_error, text_of(result)
    return text_of(result)


# === 1. No orphans ============================================================================


def test_reaper_takes_down_the_group_and_reports_the_status() -> None:
    """The reaper alone: a wrapper's TERM-ignoring grandchild dies with the server, both ways."""

    def start(script: str) -> tuple[subprocess.Popen[bytes], int]:
        watch_r, watch_w = os.pipe()
        try:
            proc = subprocess.Popen(
                reaper.command_line(PYTHON, watch_r, "sh", ["-c", script]),
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                pass_fds=(watch_r,),
                start_new_session=True,
            )
        finally:
            os.close(watch_r)
        return proc, watch_w

    helper = '( trap "" TERM HUP INT; exec sleep 3600 ) </dev/null & '
    exits, exits_w = start(helper + "read line; exit 5")  # the server exits by itself once stdin closes
    closed, closed_w = start(helper + "sleep 3600")  # the server would run for an hour
    watches = {exits_w, closed_w}
    snapshot: dict[int, tuple[int, str]] = {}
    try:
        wait_for(lambda: len(tree(exits.pid)) >= 2 and len(tree(closed.pid)) >= 2, what="both wrappers")
        snapshot = {**tree(exits.pid), **tree(closed.pid)}
        assert sorted(comm for _, comm in snapshot.values()).count("sleep") >= 2, snapshot
        assert exits.stdin is not None
        exits.stdin.close()
        os.close(closed_w)  # Manifold is done with it (or died)
        watches.discard(closed_w)
        assert exits.wait(15) == 5
        assert closed.wait(15) == 128 + signal.SIGTERM
        wait_for(lambda: not survivors(snapshot), 5, what="the groups to be gone")
    finally:
        snapshot.update(tree(exits.pid, include_root=True))
        snapshot.update(tree(closed.pid, include_root=True))
        for fd in watches:  # the reapers' own way out first: they take their groups down
            os.close(fd)
        for proc in (exits, closed):
            with suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        kill_all(snapshot)


def _stdio_gateway(tmp: Path) -> subprocess.Popen[str]:
    config = write_config(tmp / "manifold.yaml", {"wrapped": wrapped("wrapped"), "plain": chaos("plain")})
    return subprocess.Popen(
        [PYTHON, "-m", "manifold", "serve", "--config", str(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=gateway_env(tmp),
    )


def _handshake(proc: subprocess.Popen[str]) -> list[str]:
    """Initialize over stdio and list tools (the list waits for both servers to settle)."""
    assert proc.stdin is not None and proc.stdout is not None
    frames = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    ]
    proc.stdin.write("".join(json.dumps(frame) + "\n" for frame in frames))
    proc.stdin.flush()
    while True:
        line = proc.stdout.readline()
        assert line, "the gateway closed stdout"
        frame = json.loads(line)
        if frame.get("id") == 2:
            return [tool["name"] for tool in frame["result"]["tools"]]


def test_no_process_outlives_the_gateway(tmp_path: Path) -> None:
    """Whatever ends the gateway, its whole tree goes: reapers, wrappers, servers, grandchildren.

    Four gateways at once (stdio mode, as an MCP client runs it), one per way to end them.
    """
    endings: dict[str, Callable[[subprocess.Popen[str]], None]] = {
        "stdin EOF": lambda proc: proc.stdin.close() if proc.stdin else None,
        "SIGTERM": lambda proc: proc.send_signal(signal.SIGTERM),
        "SIGINT": lambda proc: proc.send_signal(signal.SIGINT),
        "SIGKILL": lambda proc: proc.send_signal(signal.SIGKILL),
    }
    procs: dict[str, subprocess.Popen[str]] = {}
    snapshots: dict[str, dict[int, tuple[int, str]]] = {}
    try:
        for how in endings:
            (tmp_path / how).mkdir()
            procs[how] = _stdio_gateway(tmp_path / how)
        for how, proc in procs.items():
            tools = _handshake(proc)
            assert {"wrapped__echo", "plain__echo"} <= set(tools), how
            # reaper x2, sh, sleep (ignores stdin and SIGTERM), chaos server x2
            snapshots[how] = wait_for(lambda: t if len(t := tree(proc.pid)) >= 6 else None, what="the tree")
            names = sorted(comm for _, comm in snapshots[how].values())
            assert names.count("sleep") == 1 and names.count("sh") == 1, (how, names)
        for how, proc in procs.items():
            endings[how](proc)
        for how, proc in procs.items():
            proc.wait(30)
            if how == "stdin EOF":
                assert proc.returncode == 0
        for how, snapshot in snapshots.items():
            wait_for(lambda: not survivors(snapshot), 15, what=f"every upstream process to exit after {how}")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for snapshot in snapshots.values():
            kill_all(snapshot)


async def test_removing_or_replacing_a_server_stops_its_processes() -> None:
    async with gateway_with({"wrapped": wrapped("wrapped"), "other": chaos("other")}) as gateway:
        first = gateway.upstreams["wrapped"]
        await wait_state(first, State.READY)
        assert first.report.pid is not None
        snapshot = tree(first.report.pid, include_root=True)  # reaper, sh, sleep, server
        try:
            assert len(snapshot) == 4, snapshot
            replaced = await gateway.replace_server("wrapped", SERVER_CONFIG.validate_python(wrapped("wrapped", "--banner", "1")))
            assert not survivors(snapshot), "replace_server left processes of the old server running"
            await wait_state(replaced, State.READY)
            assert replaced.report.pid is not None
            second = tree(replaced.report.pid, include_root=True)
            snapshot.update(second)
            assert len(second) == 4
            await gateway.remove_server("wrapped")
            assert not survivors(snapshot), "remove_server returned with the server's processes running"
            assert text_of(await gateway.call_tool("other__echo", {"text": "unaffected"})) == "unaffected"
        finally:
            kill_all(snapshot)


# === 2. stderr kept, masked; 4. crash loop parked =============================================


async def test_a_crash_loop_is_parked_as_failed_with_its_stderr_kept_and_masked() -> None:
    servers = {
        "crashy": chaos("crashy", "--crash-on-start", "--stderr", f"fatal: bad token {SECRET}", env={"API_KEY": SECRET}),
        "steady": chaos("steady"),
    }
    async with gateway_with(servers) as gateway:
        crashy = gateway.upstreams["crashy"]
        # Each backoff is cut short with wake() (what a refresh does), so the loop runs in
        # milliseconds; the count of attempts and the parking are the supervisor's own.
        with anyio.fail_after(30):
            while crashy.state != State.FAILED:
                if crashy.state == State.BACKING_OFF:
                    crashy.wake()
                await anyio.sleep(0.01)
        assert crashy.restarts == connection.CRASH_LOOP_LIMIT
        assert crashy.last_error == "the server process exited with status 3 (stderr: fatal: bad token ****)"
        assert crashy.stderr_tail[-1] == "fatal: bad token ****"
        assert len(crashy.stderr_tail) == connection.CRASH_LOOP_LIMIT  # one line per attempt, kept across restarts
        assert SECRET not in repr(crashy.stderr_tail) + str(crashy.last_error)
        with pytest.raises(UpstreamError, match=r"server 'crashy' is not connected \(state: failed\)"):
            await crashy.request("tools/list", None)
        assert text_of(await gateway.call_tool("steady__echo", {"text": "fine"})) == "fine"


async def test_an_upstream_error_echoing_a_secret_reaches_the_client_masked() -> None:
    async with gateway_with({"leaky": chaos("leaky", env={"API_KEY": SECRET})}) as gateway:
        with pytest.raises(UpstreamError) as caught:
            await gateway.call_tool("leaky__error", {"message": f"key {SECRET} was refused"})
        assert caught.value.message == "server 'leaky': key **** was refused"
        assert SECRET not in str(caught.value.error)


# === 4. isolation: garbage, invalid JSON-RPC, oversized, crashes ===============================


async def test_garbage_invalid_and_oversized_output_costs_only_that_call() -> None:
    async with gateway_with({"noisy": chaos("noisy", "--banner", "3"), "quiet": chaos("quiet")}) as gateway:
        noisy, quiet = gateway.upstreams["noisy"], gateway.upstreams["quiet"]
        await wait_state(noisy, State.READY)  # three log lines on stdout before the handshake
        await wait_state(quiet, State.READY)
        assert noisy.report.bad_lines == 3

        # Non-JSON lines, JSON that is no message, a response to an id nobody asked: ignored.
        assert text_of(await gateway.call_tool("noisy__garbage", {})) == "survived"
        assert noisy.report.bad_lines == 3 + 4

        # A response that is not JSON-RPC but names its id: that call fails now, not at its timeout.
        with anyio.fail_after(10), pytest.raises(UpstreamError) as bad:
            await gateway.call_tool("noisy__bad_response", {})
        assert bad.value.message.startswith("server 'noisy': the server sent an invalid JSON-RPC response")

        # 33 MiB in one line: dropped as it streams in; the call it answered fails and says why.
        with anyio.fail_after(30), pytest.raises(UpstreamError) as big:
            await gateway.call_tool("noisy__big", {"mib": 33})
        assert big.value.message == "server 'noisy': the server sent a message of 33.0 MiB, over the 32 MiB limit"

        # The same session goes on, and nobody else noticed.
        assert text_of(await gateway.call_tool("noisy__echo", {"text": "still here"})) == "still here"
        assert text_of(await gateway.call_tool("quiet__echo", {"text": "never knew"})) == "never knew"
        assert noisy.state == State.READY and noisy.restarts == 0 and quiet.restarts == 0


async def test_a_server_killed_mid_call_fails_the_call_at_once_and_comes_back() -> None:
    async with gateway_with({"wrapped": wrapped("wrapped"), "other": chaos("other")}) as gateway:
        upstream = gateway.upstreams["wrapped"]
        await wait_state(upstream, State.READY)
        errors: list[str | None] = []
        gateway.add_state_listener(lambda u: errors.append(u.last_error) if u is upstream else None)
        pid = int(text_of(await gateway.call_tool("wrapped__pid", {})))  # the server, inside the sh wrapper

        outcome: list[BaseException] = []

        async def slow_call() -> None:
            try:
                await gateway.call_tool("wrapped__slow", {"seconds": 600})
            except UpstreamError as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow_call)
            await async_wait_for(lambda: any("slow request" in line for line in upstream.stderr_tail), what="the call")
            os.kill(pid, signal.SIGKILL)
            with anyio.fail_after(10):  # at once, not after the call's 600 s or its 60 s timeout
                await async_wait_for(lambda: outcome, what="the in-flight call to fail")
        assert isinstance(outcome[0], UpstreamError)
        assert outcome[0].code == CONNECTION_CLOSED
        assert outcome[0].message == "server 'wrapped': connection lost during tools/call"
        # sh reports its child's SIGKILL as 128 + 9 (and says "Killed"), and so does the reaper.
        lost = await async_wait_for(lambda: [e for e in errors if e], what="the supervisor to record the loss")
        assert lost[0] == "the server process was killed by SIGKILL (stderr: Killed)"
        await wait_state(upstream, State.READY)
        assert upstream.restarts == 1
        assert text_of(await gateway.call_tool("wrapped__echo", {"text": "back"})) == "back"


# === 3. timeouts ================================================================================


async def test_a_hanging_server_never_holds_up_start_up_or_the_others(tmp_path: Path) -> None:
    servers = {"sleepy": chaos("sleepy", "--hang-on-start", connect_timeout=6), "fast": chaos("fast")}
    with http_gateway(tmp_path, servers) as (_, url):
        await async_wait_for(lambda: health(url)["fast"]["state"] == "ready", 20, what="fast to be ready")
        async with mcp_client(url) as session:
            # A bare tools/call (the SDK's call_tool lists tools afterwards to validate the result).
            request = types.CallToolRequest(params=types.CallToolRequestParams(name="fast__echo", arguments={"text": "served"}))
            assert text_of(await session.send_request(request, types.CallToolResult)) == "served"
            # ... while the hanging server is still on its first attempt:
            sleepy = (await ahealth(url))["sleepy"]
            assert (sleepy["state"], sleepy["restarts"]) == ("connecting", 0)
            # A first tools/list waits for it, but never beyond its connect timeout.
            names = {tool.name for tool in (await session.list_tools()).tools}
            assert "fast__echo" in names and not any(name.startswith("sleepy__") for name in names)
        sleepy = health(url)["sleepy"]
        assert sleepy["state"] in ("backing_off", "connecting")
        assert sleepy["restarts"] >= 1
        assert sleepy["last_error"] == "did not connect within 6 s (stderr: hanging on initialize as asked)"


# === a shared HTTP gateway: timeouts, kill -9 with list_changed, /healthz, load ===================


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    servers = {
        "a": chaos("a"),
        "b": chaos("b"),
        "c": chaos("c"),
        "k": chaos("k"),
        "h": chaos("h", timeout=3),
        "crashy": chaos("crashy", "--crash-on-start", "--stderr", f"using token {SECRET}", env={"API_KEY": SECRET}),
    }
    with http_gateway(tmp_path_factory.mktemp("shared"), servers) as (_, url):
        wait_for(
            lambda: all(health(url)[name]["state"] == "ready" for name in "abckh"), 30, what="the shared upstreams"
        )
        yield url


async def test_a_timed_out_call_names_the_server_and_limit_and_is_cancelled_upstream(shared: str) -> None:
    async with mcp_client(shared) as session:
        hung: list[MCPError] = []
        finished = anyio.Event()

        async def hang() -> None:
            try:
                await session.call_tool("h__hang", {})
            except MCPError as exc:
                hung.append(exc)
            finally:
                finished.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(hang)
            await async_wait_for(
                lambda: any("hang request" in line for line in health(shared)["h"]["stderr_tail"]),
                what="the hanging call to reach the server",
            )
            for i in range(5):  # the other servers answer while h's call hangs
                assert await call(session, "a__echo", {"text": f"meanwhile {i}"}) == f"meanwhile {i}"
            assert not finished.is_set()
            with anyio.fail_after(20):
                await finished.wait()
        assert hung and hung[0].error.code == REQUEST_TIMEOUT
        assert hung[0].error.message == "server 'h' did not answer tools/call within 3 s"
        # The gateway told the server to stop working on it (notifications/cancelled).
        tail = await async_wait_for(
            lambda: [line for line in health(shared)["h"]["stderr_tail"] if line.startswith("cancelled request")],
            what="the cancellation to reach the server",
        )
        assert tail[-1].endswith(": timed out after 3.0s")
        assert await call(session, "h__echo", {"text": "alive"}) == "alive"
        assert health(shared)["h"]["restarts"] == 0


async def test_kill_9_mid_call_errors_at_once_restarts_and_clients_see_list_changed(shared: str) -> None:
    changed: list[float] = []

    def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.append(time.monotonic())

    async with mcp_client(shared, on_message) as session:
        # A tool that only this process of k has: after a restart it is gone.
        assert await call(session, "k__add_tool", {"tool_name": "ephemeral"}) == "added ephemeral"
        await async_wait_for(lambda: changed, what="list_changed for the added tool")
        names = {t.name for t in (await session.list_tools()).tools}
        assert "k__ephemeral" in names
        restarts = health(shared)["k"]["restarts"]
        pid = int(await call(session, "k__pid"))
        seen = len(changed)

        outcome: list[MCPError] = []

        async def slow_call() -> None:
            try:
                await session.call_tool("k__slow", {"seconds": 600})
            except MCPError as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow_call)
            await async_wait_for(
                lambda: any("slow request" in line for line in health(shared)["k"]["stderr_tail"]),
                what="the slow call to reach k",
            )
            os.kill(pid, signal.SIGKILL)
            with anyio.fail_after(10):  # at once: not after 600 s, nor after k's 60 s timeout
                await async_wait_for(lambda: outcome, what="the in-flight call to fail")
        assert outcome[0].error.code == CONNECTION_CLOSED
        assert outcome[0].error.message == "server 'k': connection lost during tools/call"

        # Restarted on its own; its lists were re-read and the clients told.
        await async_wait_for(lambda: len(changed) > seen, 20, what="list_changed after the restart")
        await async_wait_for(
            lambda: (s := health(shared)["k"])["state"] == "ready" and s["restarts"] > restarts, 20, what="k back"
        )
        names = {t.name for t in (await session.list_tools()).tools}
        assert "k__echo" in names and "k__ephemeral" not in names
        assert await call(session, "k__echo", {"text": "back"}) == "back"
        assert int(await call(session, "k__pid")) != pid


async def test_healthz_shows_the_stderr_tail_and_last_error_masked(shared: str) -> None:
    crashy = await async_wait_for(
        lambda: (s := health(shared)["crashy"])["last_error"] and s, 20, what="crashy to have crashed"
    )
    assert crashy["state"] in ("backing_off", "connecting", "failed")
    assert crashy["last_error"] == "the server process exited with status 3 (stderr: using token ****)"
    assert crashy["stderr_tail"] and set(crashy["stderr_tail"]) == {"using token ****"}
    body = httpx2.get(shared + "/healthz").text
    assert SECRET not in body
    assert health(shared)["a"]["stderr_tail"] == []


# === 5. load ===================================================================================


async def test_load_16_clients_while_one_upstream_is_killed_and_restarted(shared: str) -> None:
    clients, per_client = 16, LOAD_CALLS
    total = clients * per_client
    run = uuid.uuid4().hex[:8]
    outcomes: dict[int, list[tuple[str, str, str]]] = {i: [] for i in range(clients)}  # (server, token, outcome)
    done = 0
    killed = anyio.Event()
    restarts_before = health(shared)["b"]["restarts"]

    async def client(index: int) -> None:
        nonlocal done
        async with mcp_client(shared) as session:
            for i in range(per_client):
                server = "abc"[(index + i) % 3]
                token = f"{run}:{index}:{i}:{server}"
                try:
                    result = await session.call_tool(f"{server}__echo", {"text": token})
                    outcome = ("error: " if result.is_error else "") + text_of(result)
                except MCPError as exc:
                    outcome = "error: " + exc.error.message
                outcomes[index].append((server, token, outcome))
                done += 1

    async def killer() -> None:
        await async_wait_for(lambda: done >= total // 3, 60, what="a third of the calls")
        async with mcp_client(shared) as session:
            pid = int(await call(session, "b__pid"))
        os.kill(pid, signal.SIGKILL)
        killed.set()

    with anyio.fail_after(120):  # no call may hang
        async with anyio.create_task_group() as tg:
            tg.start_soon(killer)
            for index in range(clients):
                tg.start_soon(client, index)
    assert killed.is_set()

    failures = []
    for index, results in outcomes.items():
        assert len(results) == per_client  # none lost
        for server, token, outcome in results:
            if outcome == token:
                continue  # its own answer, not another client's
            assert outcome.startswith("error: "), f"client {index} got {outcome!r} for {token!r}"
            failures.append((server, outcome))
    assert all(server == "b" for server, _ in failures), failures
    for _, outcome in failures:
        assert outcome.startswith(("error: server 'b': connection lost", "error: server 'b' is not connected")), outcome
    # b came back on its own and answers again.
    await async_wait_for(
        lambda: (s := health(shared)["b"])["state"] == "ready" and s["restarts"] > restarts_before, 20, what="b back"
    )
    async with mcp_client(shared) as session:
        assert await call(session, "b__echo", {"text": "after"}) == "after"


# === HTTP upstreams: 500, 401, down at start, restarted =========================================


@asynccontextmanager
async def http_fixture_on(port: int) -> AsyncIterator[subprocess.Popen[str]]:
    """The fixture server over streamable HTTP on a given port (started and stopped on a thread)."""
    cm = running_process(fixture_command("--transport", "streamable-http", "--name", "late", "--port", str(port)))
    with anyio.CancelScope(shield=True):
        proc, _ = await anyio.to_thread.run_sync(cm.__enter__)
    try:
        yield proc
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(cm.__exit__, None, None, None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_http_500_and_401_affect_only_their_own_server() -> None:
    with running_process([PYTHON, STATUS_SERVER, "--status", "500"]) as (_, e500), running_process(
        [PYTHON, STATUS_SERVER, "--status", "401"]
    ) as (_, e401):
        servers = {
            "e500": {"mcp_server_type": "streamable_http", "server_url": e500 + "/mcp"},
            "e401": {
                "mcp_server_type": "sse",
                "server_url": e401 + "/sse",
                "auth_header": "Authorization",
                "auth_token": f"Bearer {SECRET}",
            },
            "fine": chaos("fine"),
        }
        async with gateway_with(servers) as gateway:
            e500u, e401u = gateway.upstreams["e500"], gateway.upstreams["e401"]
            await wait_state(e500u, State.BACKING_OFF, State.FAILED)
            await wait_state(e401u, State.BACKING_OFF, State.FAILED)
            assert e500u.last_error == f"Server returned an error response (HTTP 500 Internal Server Error from POST {e500}/mcp)"
            assert e401u.last_error is not None and f"HTTP 401 Unauthorized from GET {e401}/sse" in e401u.last_error
            with pytest.raises(UpstreamError, match=r"^server 'e500' is not connected \(state: "):
                await gateway.call_upstream_tool("e500", "echo", {})
            assert text_of(await gateway.call_tool("fine__echo", {"text": "unaffected"})) == "unaffected"
            assert gateway.upstreams["fine"].restarts == 0


async def test_http_upstream_down_at_start_connects_by_itself_and_survives_restarts_and_kills() -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    servers = {"late": {"mcp_server_type": "streamable_http", "server_url": url, "connect_timeout": 5}}
    async with gateway_with(servers) as gateway:
        late = gateway.upstreams["late"]
        await wait_state(late, State.BACKING_OFF)
        assert late.last_error == "All connection attempts failed"
        async with http_fixture_on(port):
            await wait_state(late, State.READY, timeout=30)  # backoff alone, nobody woke it
            assert text_of(await gateway.call_tool("late__whoami", {})) == "late"
        # Same port, new process: it does not know our session (HTTP 404); the gateway starts a
        # new one, on the first request that carries the old session id (a call, or the SDK's
        # retry of its standalone GET stream).
        connects = late.connects
        async with http_fixture_on(port) as proc:

            async def answered() -> bool:
                with suppress(UpstreamError):
                    return text_of(await gateway.call_tool("late__whoami", {})) == "late"
                return False

            with anyio.fail_after(30):
                while not await answered():
                    await anyio.sleep(0.1)
            await async_wait_for(lambda: late.state == State.READY and late.connects > connects, 20, what="reconnect")

            # Killed mid-call, the stream closing under a response: that call fails at once.
            outcome: list[UpstreamError] = []

            async def slow_call() -> None:
                try:
                    await gateway.call_tool("late__slow", {"seconds": 600})
                except UpstreamError as exc:
                    outcome.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(slow_call)
                session = late._session  # noqa: SLF001 - the request is written once it is pending here
                await async_wait_for(lambda: session is not None and session._dispatcher._pending, what="the call")  # noqa: SLF001
                # A later request answered: the server is at work on the slow one (POSTs go out in order).
                assert text_of(await gateway.call_tool("late__whoami", {})) == "late"
                proc.kill()
                with anyio.fail_after(10):
                    await async_wait_for(lambda: outcome, what="the in-flight call to fail")
            assert outcome[0].message.startswith("server 'late': connection lost during tools/call")
            # The server is gone, not just that response: the gateway notices on its own and reconnects.
            await wait_state(late, State.BACKING_OFF, State.CONNECTING)


async def test_an_sse_server_that_redirects_its_stream_is_followed() -> None:
    """Manifold's own SSE client does not follow redirects: the SDK's, which does, takes over."""
    async with http_upstream("--transport", "sse", "--name", "moved", "--sse-quirk", "redirect") as url:
        async with gateway_with({"moved": {"mcp_server_type": "sse", "server_url": url + "/old-sse"}}) as gateway:
            await wait_state(gateway.upstreams["moved"], State.READY)
            assert text_of(await gateway.call_tool("moved__echo", {"text": "found"})) == "found"


async def test_an_sse_message_endpoint_on_another_origin_is_refused() -> None:
    """A stream that names a message endpoint elsewhere would send every request there: refused."""
    async with http_upstream("--transport", "sse", "--name", "astray", "--sse-quirk", "foreign-endpoint") as url:
        config = {"mcp_server_type": "sse", "server_url": url + "/sse", "connect_timeout": 5}
        async with gateway_with({"astray": config, "other": chaos("other")}) as gateway:
            astray = gateway.upstreams["astray"]
            await async_wait_for(lambda: astray.last_error is not None, what="the connection to fail")
            assert "message endpoint is on another origin: http://localhost:" in astray.last_error
            assert astray.state is not State.READY
            assert text_of(await gateway.call_tool("other__echo", {"text": "unaffected"})) == "unaffected"


async def test_a_request_an_sse_server_refuses_fails_at_once_and_the_session_goes_on() -> None:
    """A POST answered with an error status fails its request with that status, not a timeout
    (the SDK's client stopped sending anything after one); later requests still go out."""
    async with http_upstream("--transport", "sse", "--name", "picky", "--sse-quirk", "refuse-prompts") as url:
        config = {"mcp_server_type": "sse", "server_url": url + "/sse", "timeout": 60}
        async with gateway_with({"picky": config}) as gateway:
            picky = gateway.upstreams["picky"]
            await wait_state(picky, State.READY)
            for _ in range(2):
                with pytest.raises(MCPError, match="HTTP 500 from the server"):
                    await gateway.get_prompt("picky__greet", {"name": "Ada"})
            resource = await gateway.read_resource("fixture://picky/info")
            assert resource["contents"], resource
            assert picky.state is State.READY and picky.restarts == 0
