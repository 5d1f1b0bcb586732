"""Lazy stdio servers and the REST tool search, against a real gateway process.

The gateway runs as `python -m manifold serve --transport http` with a SQLite store. The lazy
upstream is the fixture server behind `sh -c 'echo start >> LOG; exec python fixture ...'`, so
every start of its process leaves one line in LOG, and its `--name` (a unique marker) shows
whether a process of it is alive (read from /proc).
"""

import json
import shlex
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import mcp_types as types
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from support import FIXTURE, PYTHON, subprocess_env, wait_for
from test_api import SERVER_ID, TOKEN, Gateway, pids_with, poll, run_gateway

from manifold.config import ConfigError, parse_config

BASE_TOOLS = {"echo", "whoami", "fail", "slow", "register_tool"}


def lazy_config(log: Path, marker: str, *extra: str, **keys: Any) -> dict[str, Any]:
    """A lazy fixture server whose every start appends a line to `log`."""
    command = " ".join(shlex.quote(a) for a in [PYTHON, FIXTURE, "--name", marker, *extra])
    return {
        "mcp_server_type": "stdio",
        "command": "sh",
        "args": ["-c", f"echo start >> {shlex.quote(str(log))}; exec {command}"],
        "lazy": True,
        **keys,
    }


def starts(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def health(gw: Gateway, server: str) -> dict[str, Any]:
    with gw.http() as http:
        return dict(http.get("/healthz").json()["servers"][server])


def wait_idle(gw: Gateway, server: str, marker: str, tools: int = len(BASE_TOOLS)) -> dict[str, Any]:
    """Poll until the server is idle with its tools known and no process of it is alive."""
    state = wait_for(
        lambda: (h := health(gw, server))["state"] == "idle" and h["tools"] == tools and h,
        timeout=60,
        what=f"{server} idle with {tools} tools",
    )
    wait_for(lambda: not pids_with(marker), timeout=30, what=f"no process of {server}")
    return dict(state)


class Client:
    """An MCP client session on the gateway that records the notifications it gets."""

    def __init__(self, session: ClientSession, notes: list[Any]) -> None:
        self.session = session
        self.notes = notes

    async def names(self) -> set[str]:
        return {t.name for t in (await self.session.list_tools()).tools}


def mcp_client(base: str) -> Any:
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def connect() -> Any:
        notes: list[Any] = []

        async def on_message(message: Any) -> None:
            notes.append(getattr(message, "root", message))

        async with (
            httpx2.AsyncClient(timeout=60) as hc,
            streamable_http_client(base + "/mcp", http_client=hc) as (read, write),
            ClientSession(read, write, message_handler=on_message) as session,
        ):
            await session.initialize()
            yield Client(session, notes)

    return connect()


@pytest.fixture(scope="module")
def lazy_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Path, str]]:
    tmp = tmp_path_factory.mktemp("lazy")
    marker = f"lazy-{uuid.uuid4().hex[:8]}"
    log = tmp / "starts.log"
    config = {
        "gateway": {"idle_timeout": 600},
        "mcp_servers": {
            "lazy": lazy_config(log, marker, idle_timeout=1.5),
            "eager": {"mcp_server_type": "stdio", "command": PYTHON, "args": [FIXTURE, "--name", "eager"]},
        },
    }
    with run_gateway(tmp, config) as gw:
        yield gw, log, marker


@pytest.mark.anyio
async def test_lazy_server_listed_without_running_started_by_a_call_stopped_when_idle(
    lazy_gateway: tuple[Gateway, Path, str],
) -> None:
    gw, log, marker = lazy_gateway
    # First registration: started once to read its lists, then stopped; listed from then on.
    state = wait_idle(gw, "lazy", marker)
    assert state["lazy"] is True and starts(log) == 1
    with gw.http() as http:
        metrics = http.get("/metrics").text
    assert 'manifold_upstream_state{server="lazy",state="idle"} 1.0' in metrics
    servers = subprocess.run(
        [PYTHON, "-m", "manifold", "servers", "--url", gw.base, "--json"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert servers.returncode == 0, servers.stderr
    assert json.loads(servers.stdout)["lazy"]["state"] == "idle"

    async with mcp_client(gw.base) as client:
        assert {f"lazy__{t}" for t in BASE_TOOLS} <= await client.names()
        assert starts(log) == 1 and not pids_with(marker)  # listing did not start it

        # A call starts it; while the call is in flight it runs.
        async with anyio.create_task_group() as tg:
            results: list[Any] = []

            async def slow() -> None:
                results.append(await client.session.call_tool("lazy__slow", {"seconds": 3}))

            tg.start_soon(slow)
            await poll(lambda: _running(gw, marker), "the lazy server to run during the call", timeout=60)
        assert results[0].content[0].text == f"{marker} slept 3.0"
        assert starts(log) == 2
        first_pids = pids_with(marker)

        # Idle for its idle_timeout (1.5 s): stopped, still listed.
        wait_idle(gw, "lazy", marker)
        assert {f"lazy__{t}" for t in BASE_TOOLS} <= await client.names()

        # The next call starts it again.
        result = await client.session.call_tool("lazy__echo", {"text": "again"})
        assert result.content[0].text == "again" and not result.is_error
        assert starts(log) == 3
        assert not (pids_with(marker) & first_pids)


async def _running(gw: Gateway, marker: str) -> bool:
    return health(gw, "lazy")["state"] == "ready" and bool(pids_with(marker))


def test_rest_search_ranks_the_catalogue_without_starting_lazy_servers(
    lazy_gateway: tuple[Gateway, Path, str],
) -> None:
    gw, log, marker = lazy_gateway
    wait_idle(gw, "lazy", marker)
    before = starts(log)
    with gw.http() as http:
        response = http.get("/v1/mcp-servers/tools/search", params={"query": "repeat my text back unchanged", "limit": 3})
        assert response.status_code == 200, response.text
        results = response.json()
        assert len(results) == 3
        assert {r["name"] for r in results[:2]} == {"lazy__echo", "eager__echo"}
        for row in results:
            assert set(row) == {"name", "server", "server_id", "description", "score"}
            assert row["name"].startswith(row["server"] + "__") and SERVER_ID.match(row["server_id"])
        scores = [r["score"] for r in results]
        assert scores == sorted(scores, reverse=True) and scores[0] > 0
        echo = next(r for r in results if r["name"] == "lazy__echo")
        assert echo["description"] == "Return the text unchanged."
        assert echo["server_id"] in {s["id"] for s in http.get("/v1/mcp-servers/").json() if s["server_name"] == "lazy"}

        # Bad input: a clear 422 naming the parameter.
        cases: list[tuple[dict[str, Any], str]] = [
            ({}, "query"),
            ({"query": ""}, "query"),
            ({"query": "   "}, "query"),
            ({"query": "x", "limit": 0}, "limit"),
            ({"query": "x", "limit": 51}, "limit"),
            ({"query": "x", "limit": "many"}, "limit"),
        ]
        for params, field in cases:
            bad = http.get("/v1/mcp-servers/tools/search", params=params)
            assert bad.status_code == 422, (params, bad.text)
            assert any(e["loc"][-1] == field for e in bad.json()["detail"]), (params, bad.text)
        # The token guards it like every route.
        assert httpx.get(gw.base + "/v1/mcp-servers/tools/search", params={"query": "x"}).status_code == 401
        # The Letta routes are untouched: "tools" is not a server id.
        assert http.get("/v1/mcp-servers/tools").status_code == 404

    # The CLI asks the same endpoint.
    cli = subprocess.run(
        [PYTHON, "-m", "manifold", "tools", "--url", gw.base, "--search", "repeat my text back", "--limit", "2", "--json"],
        env=subprocess_env({"MANIFOLD_API_TOKEN": TOKEN}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    rows = json.loads(cli.stdout)
    assert {r["name"] for r in rows} == {"lazy__echo", "eager__echo"} and all(r["score"] > 0 for r in rows)
    wrong = subprocess.run(
        [PYTHON, "-m", "manifold", "tools", "--url", gw.base, "--search", "x"],
        env=subprocess_env({"MANIFOLD_API_TOKEN": "wrong-token"}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode == 1 and "401" in wrong.stderr
    assert starts(log) == before  # searching never started the lazy server


def test_lazy_server_through_the_management_api(lazy_gateway: tuple[Gateway, Path, str], tmp_path: Path) -> None:
    gw, _, _ = lazy_gateway
    marker = f"api-lazy-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "api-starts.log"
    with gw.http() as http:
        created = http.post(
            "/v1/mcp-servers/", json={"server_name": "apilazy", "config": lazy_config(log, marker, idle_timeout=30)}
        )
        assert created.status_code == 200, created.text
        body = created.json()
        assert body["lazy"] is True and body["idle_timeout"] == 30
        server_id = body["id"]
        # Its tools are recorded from the one start on registration; then it is stopped.
        tools = http.get(f"/v1/mcp-servers/{server_id}/tools").json()
        assert {t["name"] for t in tools} == BASE_TOOLS
        wait_idle(gw, "apilazy", marker)
        assert http.get(f"/v1/mcp-servers/{server_id}").json()["status"] == "idle"
        assert starts(log) == 1

        echo = next(t for t in tools if t["name"] == "echo")
        run = http.post(f"/v1/mcp-servers/{server_id}/tools/{echo['id']}/run", json={"args": {"text": "via api"}})
        assert run.status_code == 200 and run.json()["func_return"] == "via api"
        assert starts(log) == 2

        patched = http.patch(f"/v1/mcp-servers/{server_id}", json={"config": {"idle_timeout": 0.5}})
        assert patched.status_code == 200 and patched.json()["idle_timeout"] == 0.5
        # Restarted with the new settings: listed from the store (no start), idle.
        wait_idle(gw, "apilazy", marker)
        assert starts(log) == 2
        # Refresh reads the lists from the server itself: it starts it.
        refreshed = http.patch(f"/v1/mcp-servers/{server_id}/refresh")
        assert refreshed.status_code == 200 and refreshed.json() == {"deleted": [], "updated": [], "added": []}
        assert starts(log) == 3
        wait_idle(gw, "apilazy", marker)

        # Bad bodies: lazy on an HTTP server, a non-positive idle timeout.
        http_lazy = {"mcp_server_type": "streamable_http", "server_url": "http://127.0.0.1:9/mcp", "lazy": True}
        bad = http.post("/v1/mcp-servers/", json={"server_name": "nope", "config": http_lazy})
        assert bad.status_code == 422 and "stdio servers only" in bad.text
        zero = http.post("/v1/mcp-servers/", json={"server_name": "nope", "config": lazy_config(log, marker, idle_timeout=0)})
        assert zero.status_code == 422 and "idle_timeout" in zero.text
        assert http.delete(f"/v1/mcp-servers/{server_id}").status_code == 204


@pytest.mark.anyio
async def test_cached_lists_survive_a_restart_and_a_changed_list_is_announced(tmp_path: Path) -> None:
    marker = f"lazy-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "starts.log"
    first = {"mcp_servers": {"lazy": lazy_config(log, marker)}}
    with run_gateway(tmp_path, first) as gw:
        wait_idle(gw, "lazy", marker)
        db = gw.db
    assert starts(log) == 1

    # Same store, and the server now has two more tools (its cached list is the old one).
    second = {"mcp_servers": {"lazy": lazy_config(log, marker, "--tools", "2")}}
    with run_gateway(tmp_path, second, db=db) as gw:
        wait_idle(gw, "lazy", marker)
        assert starts(log) == 1  # listed from the store: not started
        async with mcp_client(gw.base) as client:
            names = await client.names()
            assert "lazy__echo" in names and "lazy__tool_0000" not in names
            result = await client.session.call_tool("lazy__echo", {"text": "wake up"})
            assert result.content[0].text == "wake up" and starts(log) == 2

            async def announced() -> bool:
                return any(isinstance(n, types.ToolListChangedNotification) for n in client.notes)

            await poll(announced, "tools/list_changed after the start", timeout=30)
            assert {"lazy__tool_0000", "lazy__tool_0001"} <= await client.names()

    # The store now holds the new list.
    with run_gateway(tmp_path, second, db=db) as gw:
        wait_idle(gw, "lazy", marker, tools=len(BASE_TOOLS) + 2)
        assert starts(log) == 2


def test_lazy_config_is_validated() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(
            {
                "gateway": {"idle_timeout": -1},
                "mcp_servers": {
                    "web": {"mcp_server_type": "sse", "server_url": "http://127.0.0.1:1/sse", "lazy": True},
                    "cmd": {"mcp_server_type": "stdio", "command": "x", "lazy": True, "idle_timeout": 0},
                },
            }
        )
    text = "\n".join(err.value.problems)
    assert "gateway: field 'idle_timeout'" in text
    assert "server 'web'" in text and "stdio servers only" in text
    assert "server 'cmd': field 'idle_timeout'" in text
    config = parse_config({"mcpServers": {"cmd": {"command": "x", "lazy": True}}})  # client-style entries too
    assert config.servers["cmd"].lazy is True


def test_lazy_start_bench_runs() -> None:
    """Smoke test of bench/lazy_start.py: it runs and prints its table (no figure is checked)."""
    import os
    import signal

    bench = Path(__file__).resolve().parent.parent / "bench" / "lazy_start.py"
    proc = subprocess.Popen(
        [PYTHON, str(bench), "--server", "chaos", "--repeat", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the bench and the servers it started
        out, err = proc.communicate()
        pytest.fail(f"lazy_start.py ran past 120 s\n{out}\n{err[-4000:]}")
    assert proc.returncode == 0, err[-4000:]
    lines = out.splitlines()
    assert lines[0].startswith("Lazy vs eager first-call latency")
    for row in ("eager, call", "lazy, first call", "lazy, next call"):
        assert any(line.startswith(row) and len(line.split()) >= 4 for line in lines), out
    bad = subprocess.run([PYTHON, str(bench), "--repeat", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--repeat must be at least 1" in bad.stderr


@pytest.mark.anyio
async def test_store_keeps_one_listing_per_server_and_drops_it_with_the_server(tmp_path: Path) -> None:
    from manifold.store import NotFound, Store

    async with Store(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}").open() as store:
        server = await store.create_server("s", {"mcp_server_type": "stdio", "command": "x"})
        assert await store.get_listing(server.id) is None
        await store.save_listing(server.id, {"tools": [{"name": "a"}]})
        await store.save_listing(server.id, {"tools": [{"name": "b"}], "capabilities": {"tools": {}}})
        assert await store.get_listing(server.id) == {"tools": [{"name": "b"}], "capabilities": {"tools": {}}}
        await store.delete_server(server.id)
        assert await store.get_listing(server.id) is None
        with pytest.raises(NotFound):
            await store.save_listing(server.id, {"tools": []})
    # A database made before the table (and migrations) existed gains it on open.
    import sqlite3

    with sqlite3.connect(tmp_path / "m.db") as db:
        db.execute("DROP TABLE server_listings")
        db.execute("DROP TABLE manifold_alembic_version")
    async with Store(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}").open() as store:
        again = await store.create_server("s", {"mcp_server_type": "stdio", "command": "x"})
        await store.save_listing(again.id, {"tools": []})
        assert await store.get_listing(again.id) == {"tools": []}
