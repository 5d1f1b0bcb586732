"""Three replicas on one PostgreSQL database behind nginx round-robin behave as one gateway.

Skipped (with the reason) where PostgreSQL or nginx is not installed; `.ci/run` installs both.
The cluster: a throwaway PostgreSQL, three `manifold serve --transport http --port 0 --db
postgresql+asyncpg://...` processes, and nginx on a free port in front of them. Clients are the
MCP SDK's own client and plain HTTP for the management API.
"""

from __future__ import annotations

import signal
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import mcp_types as types
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from replicas import GatewayCluster, gateway_cluster
from services import nginx_missing
from support import FIXTURE, PYTHON, TESTS, async_wait_for, start_http_upstream

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

PROTO = str(TESTS / "upstreams" / "protocol_server.py")
CONFIG = {
    "mcp_servers": {
        "cfg": {"mcp_server_type": "stdio", "command": PYTHON, "args": [FIXTURE, "--name", "cfg"]},
        "proto": {"mcp_server_type": "stdio", "command": PYTHON, "args": [PROTO, "--name", "proto"]},
        "watch": {"mcp_server_type": "stdio", "command": PYTHON, "args": [str(TESTS / "upstreams" / "watch_server.py")]},
    }
}


@pytest.fixture(scope="module")
def cluster(pg_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayCluster]:
    if (reason := nginx_missing()) is not None:
        pytest.skip(reason)
    with gateway_cluster(pg_cluster.create_database(), CONFIG, tmp_path_factory.mktemp("replicas")) as c:
        yield c


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with start_http_upstream("--name", "remote") as url:
        yield url + "/mcp"


@asynccontextmanager
async def mcp_session(url: str, on_message: Any = None, **callbacks: Any) -> AsyncIterator[ClientSession]:
    async with (
        httpx2.AsyncClient(timeout=30) as http,
        streamable_http_client(url + "/mcp", http_client=http) as (read, write),
        ClientSession(read, write, message_handler=on_message, **callbacks) as session,
    ):
        await session.initialize()
        yield session


def text_of(result: Any) -> str:
    assert not result.is_error, result
    return "".join(c.text for c in result.content if getattr(c, "text", None) is not None)


async def tool_names(session: ClientSession) -> set[str]:
    return {t.name for t in (await session.list_tools()).tools}


async def test_a_change_on_one_replica_is_live_on_every_replica(cluster: GatewayCluster, upstream: str) -> None:
    a, b, c = cluster.replicas
    changed: dict[str, int] = {"b": 0, "c": 0}

    def counter(key: str) -> Any:
        async def on_message(message: Any) -> None:
            if isinstance(message, types.ToolListChangedNotification):
                changed[key] += 1

        return on_message

    async with (
        mcp_session(b.base, counter("b")) as on_b,
        mcp_session(c.base, counter("c")) as on_c,
        httpx.AsyncClient(headers=cluster.headers, timeout=30) as api,
    ):
        assert "live__whoami" not in await tool_names(on_b)
        created = await api.post(
            a.base + "/v1/mcp-servers/",
            json={"server_name": "live", "config": {"mcp_server_type": "streamable_http", "server_url": upstream}},
        )
        assert created.status_code == 200, created.text
        server_id = created.json()["id"]
        before = {"b": changed["b"], "c": changed["c"]}

        async def live_on(session: ClientSession) -> bool:
            return "live__whoami" in await tool_names(session)

        for session in (on_b, on_c):
            await poll(lambda session=session: live_on(session), "the new server on B and C")
            assert text_of(await session.call_tool("live__whoami", {})) == "remote"
        await async_wait_for(lambda: changed["b"] > before["b"] and changed["c"] > before["c"], what="list_changed")

        # One server id and one set of tool ids, whichever replica answers.
        async def ids_on(base: str) -> tuple[str, dict[str, str]]:
            servers = (await api.get(base + "/v1/mcp-servers/")).json()
            (server,) = [s for s in servers if s["server_name"] == "live"]
            tools = (await api.get(f"{base}/v1/mcp-servers/{server['id']}/tools")).json()
            return server["id"], {t["name"]: t["id"] for t in tools}

        seen = [await ids_on(r.base) for r in cluster.replicas]
        assert seen[0][0] == server_id and seen[0][1] and all(s == seen[0] for s in seen)
        # Config-file servers too: recorded by name, one id whichever replica recorded it first.
        listings = [{s["server_name"]: s["id"] for s in (await api.get(r.base + "/v1/mcp-servers/")).json()}
                    for r in cluster.replicas]
        assert {"cfg", "proto", "watch", "live"} <= set(listings[0]) and all(x == listings[0] for x in listings)

        # A rename on B and a delete on C reach every replica too.
        renamed = await api.patch(f"{b.base}/v1/mcp-servers/{server_id}", json={"server_name": "moved", "config": {}})
        assert renamed.status_code == 200, renamed.text
        for session in (on_c,):
            await poll(lambda session=session: _has(session, "moved__whoami", "live__whoami"), "the rename on C")
        async with mcp_session(a.base) as on_a:
            await poll(lambda: _has(on_a, "moved__whoami", "live__whoami"), "the rename on A")
            assert (await api.delete(f"{c.base}/v1/mcp-servers/{server_id}")).status_code == 204
            await poll(lambda: _gone(on_a, "moved__whoami"), "the delete on A")
            await poll(lambda: _gone(on_b, "moved__whoami"), "the delete on B")
        for r in cluster.replicas:
            assert (await api.get(f"{r.base}/v1/mcp-servers/{server_id}")).status_code == 404


async def _has(session: ClientSession, present: str, absent: str) -> bool:
    names = await tool_names(session)
    return present in names and absent not in names


async def _gone(session: ClientSession, name: str) -> bool:
    return name not in await tool_names(session)


async def test_one_session_is_served_by_every_replica_round_robin(cluster: GatewayCluster) -> None:
    before = len(cluster.proxy.routed())
    async with mcp_session(cluster.proxy.base) as session:
        for i in range(12):
            result = await session.call_tool("cfg__echo", {"text": f"n{i}"})
            assert text_of(result) == f"n{i}"
        assert "cfg__whoami" in await tool_names(session)
    posts = [r for r in cluster.proxy.routed()[before:] if r[0] == "POST" and r[1] == "/mcp"]
    assert all(status == "200" or status == "202" for _, _, status, _ in posts), posts
    assert {addr for *_, addr in posts} == {r.address for r in cluster.replicas}


async def test_a_forged_or_unknown_session_id_is_refused_everywhere(cluster: GatewayCluster) -> None:
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    async with httpx.AsyncClient(timeout=30, headers=headers) as http:
        init = await http.post(cluster.proxy.base + "/mcp", json={"jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
        genuine = init.headers["mcp-session-id"]
        body, _, signature = genuine.rpartition(".")
        forged = f"{body}.{'A' * len(signature)}"
        for replica in cluster.replicas:
            for bad in (forged, "0123456789abcdef", genuine[:-2]):
                answer = await http.post(replica.base + "/mcp", headers={"Mcp-Session-Id": bad}, json=call)
                assert answer.status_code == 404, (bad, answer.text)
            ok = await http.post(replica.base + "/mcp", headers={"Mcp-Session-Id": genuine}, json=call)
            assert ok.status_code == 200 and "cfg__echo" in ok.text
            # An answer-shaped body (what gets relayed to other replicas) from a foreign Host is
            # refused like any request from there, never relayed.
            reply = {"jsonrpc": "2.0", "id": 123456789, "result": {}}
            rebound = await http.post(
                replica.base + "/mcp", headers={"Mcp-Session-Id": genuine, "Host": "evil.example"}, json=reply
            )
            assert rebound.status_code in (400, 403, 421), rebound.status_code


async def test_sixteen_clients_through_nginx_lose_nothing(cluster: GatewayCluster) -> None:
    """16 sessions x 40 calls through round-robin nginx: every call answered, by the right session."""
    calls = 40
    answered: dict[int, int] = {}

    async def client(i: int) -> None:
        async with mcp_session(cluster.proxy.base) as session:
            for n in range(calls):
                assert text_of(await session.call_tool("cfg__echo", {"text": f"c{i}-{n}"})) == f"c{i}-{n}"
                answered[i] = answered.get(i, 0) + 1

    async with anyio.create_task_group() as tg:
        for i in range(16):
            tg.start_soon(client, i)
    assert answered == {i: calls for i in range(16)}


async def test_killing_a_replica_loses_only_its_in_flight_calls(
    pg_cluster: Any, tmp_path: Path
) -> None:
    """SIGKILL one of three replicas under load: each client loses at most its one call in flight,
    and every session carries on through the two others."""
    with gateway_cluster(pg_cluster.create_database(), CONFIG, tmp_path) as cluster:
        victim = cluster.replicas[1]
        clients, after_kill = 8, 15
        lost: dict[int, int] = {i: 0 for i in range(clients)}
        done_after: dict[int, int] = {i: 0 for i in range(clients)}
        killed = anyio.Event()
        warmed: set[int] = set()

        async def client(i: int) -> None:
            async with mcp_session(cluster.proxy.base) as session:
                n = 0
                while done_after[i] < after_kill:
                    n += 1
                    try:
                        result = await session.call_tool("cfg__echo", {"text": f"c{i}-{n}"})
                        assert text_of(result) == f"c{i}-{n}"
                    except Exception:  # noqa: BLE001 - a call the dead replica was serving
                        lost[i] += 1
                        assert not killed.is_set() or lost[i] <= 1, f"client {i} lost more than one call"
                        continue
                    warmed.add(i)
                    if killed.is_set():
                        done_after[i] += 1

        async with anyio.create_task_group() as tg:
            for i in range(clients):
                tg.start_soon(client, i)
            await async_wait_for(lambda: len(warmed) == clients, timeout=60, what="every client to get going")
            victim.proc.send_signal(signal.SIGKILL)
            killed.set()
        assert all(done_after[i] == after_kill for i in range(clients))
        assert sum(lost.values()) <= clients, lost


async def poll(check: Any, what: str, timeout: float = 15.0) -> None:
    with anyio.fail_after(timeout):
        while not await check():
            await anyio.sleep(0.02)


async def test_a_stateless_client_works_through_any_replica(cluster: GatewayCluster) -> None:
    """A 2026-07-28 client (no session at all) through round-robin nginx."""
    from mcp import Client

    async with Client(cluster.proxy.base + "/mcp", mode="2026-07-28") as modern:
        assert "cfg__echo" in {t.name for t in (await modern.list_tools()).tools}
        for i in range(6):
            assert text_of(await modern.call_tool("cfg__echo", {"text": f"s{i}"})) == f"s{i}"


async def test_sampling_and_elicitation_answers_find_the_replica_that_asked(cluster: GatewayCluster) -> None:
    """An upstream asks the client (sampling, elicitation) during a tool call; the client's answer is
    a new POST that round-robin hands to any replica: it reaches the one waiting, every time."""
    asked: list[str] = []

    async def sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        prompt = params.messages[0].content
        asked.append(prompt.text)
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text=f"ada answers {prompt.text}"), model="t"
        )

    async def elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"name": "ada"})

    before = len(cluster.proxy.routed())
    async with mcp_session(cluster.proxy.base, sampling_callback=sampling, elicitation_callback=elicit) as session:
        for i in range(6):
            result = await session.call_tool("proto__ask_llm", {"prompt": f"q{i}"})
            assert text_of(result) == f"proto:ada answers q{i}"
        assert text_of(await session.call_tool("proto__ask_user", {"question": "who?"})) == "accept:ada"
    assert asked == [f"q{i}" for i in range(6)]
    posts = {addr for method, path, _, addr in cluster.proxy.routed()[before:] if (method, path) == ("POST", "/mcp")}
    assert len(posts) == 3  # the answers really went round the replicas


async def test_a_resource_update_reaches_the_subscribed_client_on_whichever_replica_holds_its_stream(
    cluster: GatewayCluster,
) -> None:
    """subscribe lands on one replica, the client's GET stream sits on another, and the upstream's
    resources/updated (sent on its own, not with a call's answer) still reaches the client."""
    updates: list[str] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updates.append(str(message.params.uri))

    async with mcp_session(cluster.proxy.base, on_message) as session:
        async def listed() -> bool:
            return any(str(r.uri) == "watch://doc" for r in (await session.list_resources()).resources)

        await poll(listed, "the watched resource (its server may still be starting)")
        uri = "watch://doc"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # subscribe is deprecated in 2026-07-28 only
            await session.subscribe_resource(uri)
        for i in range(1, 7):  # touch lands on each replica in turn; only the subscribed one notifies
            assert text_of(await session.call_tool("watch__touch", {})).startswith("v")
        await async_wait_for(lambda: len(updates) >= 2, what="resource updates through another replica")
        assert set(updates) == {uri}


async def test_a_legacy_sse_client_works_through_nginx(cluster: GatewayCluster) -> None:
    """The legacy SSE transport keeps its session in one replica's memory: the shipped nginx
    locations pin /sse and /messages/ by client address, so its POSTs find their stream."""
    from mcp.client.sse import sse_client

    async with sse_client(cluster.proxy.base + "/sse") as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        for i in range(6):
            assert text_of(await session.call_tool("cfg__echo", {"text": f"e{i}"})) == f"e{i}"


async def test_concurrent_first_requests_for_a_session_on_another_replica(cluster: GatewayCluster) -> None:
    """A client's first requests after initialize come together (initialized, its GET stream, a
    call); on a replica that has not seen the session yet they all get served, none trips over
    the session being brought back."""
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    a, b, c = cluster.replicas
    async with httpx.AsyncClient(timeout=30, headers=headers) as http:
        for target in (b, c):
            init = await http.post(a.base + "/mcp", json={"jsonrpc": "2.0", "id": 0, "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
            session = {"Mcp-Session-Id": init.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-06-18"}
            statuses: list[int] = []

            async def call(n: int, target: Any = target, session: Any = session, statuses: Any = statuses) -> None:
                body = {"jsonrpc": "2.0", "id": n + 1, "method": "tools/call",
                        "params": {"name": "cfg__echo", "arguments": {"text": f"x{n}"}}}
                answer = await http.post(target.base + "/mcp", headers=session, json=body)
                statuses.append(answer.status_code)
                assert f"x{n}" in answer.text

            async with anyio.create_task_group() as tg:
                for n in range(12):
                    tg.start_soon(call, n)
            assert statuses == [200] * 12


async def test_a_change_that_was_never_announced_is_caught_up_by_the_periodic_reconcile(
    cluster: GatewayCluster, upstream: str
) -> None:
    """The safety net under LISTEN/NOTIFY: a server written to the store with no event (as if the
    event were lost) still goes live on every replica, and goes away again, by the periodic check."""
    from manifold.store import Store

    config = {"mcp_server_type": "streamable_http", "server_url": upstream}
    async with Store(cluster.db).open() as store, mcp_session(cluster.replicas[2].base) as on_c:
        record = await store.create_server("quiet", config)  # no NOTIFY: only the reconcile sees it
        await poll(lambda: _has(on_c, "quiet__whoami", "nothing"), "the unannounced server", timeout=30)
        assert text_of(await on_c.call_tool("quiet__whoami", {})) == "remote"
        await store.delete_server(record.id)
        await poll(lambda: _gone(on_c, "quiet__whoami"), "the unannounced delete", timeout=30)
