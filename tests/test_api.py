"""The management API (`/v1/mcp-servers`) driven by the official letta-client against a real gateway.

The gateway runs as `python -m manifold serve --transport http --port 0` with a SQLite file;
upstreams are the fixture server over stdio and streamable HTTP (one requiring custom headers).
Error codes are checked with plain HTTP.
"""

import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
import yaml
from letta_client import Letta
from letta_client.types import StdioMcpServer, StreamableHTTPMcpServer
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from support import (
    FIXTURE,
    PYTHON,
    fixture_command,
    running_process,
    start_http_upstream,
    subprocess_env,
    wait_for,
)

TOKEN = "test-token-7d1f"
SERVER_ID = re.compile(r"^mcp_server-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
TOOL_ID = re.compile(r"^tool-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
BASE_TOOLS = {"echo", "whoami", "fail", "slow", "register_tool"}
# The HTTP upstream answers 401 unless both headers arrive: the token under its own header
# name, next to a custom header (Letta turns the first into `Authorization: Bearer` and drops
# the token when custom headers exist).
REQUIRED = ("X-Api-Key=k-secret-42", "X-Team=blue")


def stdio_config(name: str, *extra: str, **keys: Any) -> dict[str, Any]:
    return {"mcp_server_type": "stdio", "command": PYTHON, "args": [FIXTURE, "--name", name, *extra], **keys}


def http_config(url: str, **keys: Any) -> dict[str, Any]:
    return {
        "mcp_server_type": "streamable_http",
        "server_url": url + "/mcp",
        "auth_header": "X-Api-Key",
        "auth_token": "k-secret-42",
        "custom_headers": {"X-Team": "blue"},
        **keys,
    }


@dataclass
class Gateway:
    base: str
    db: str
    config: Path
    proc: subprocess.Popen[str]

    def http(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=30)

    def letta(self) -> Letta:
        return Letta(base_url=self.base, api_key=TOKEN, max_retries=0, timeout=30)


@contextmanager
def run_gateway(tmp: Path, config: dict[str, Any], db: str | None = None, **env: str) -> Iterator[Gateway]:
    path = tmp / "manifold.yaml"
    path.write_text(yaml.safe_dump(config))
    db = db or f"sqlite+aiosqlite:///{tmp / 'manifold.db'}"
    # --no-watch: reloads here come from SIGHUP only (and a file watcher slows shutdown).
    cmd = [
        PYTHON,
        "-m",
        "manifold",
        "serve",
        "--transport",
        "http",
        "--port",
        "0",
        "--config",
        str(path),
        "--db",
        db,
        "--no-watch",
    ]
    environ = subprocess_env({"MANIFOLD_API_TOKEN": TOKEN, **env})
    if "MANIFOLD_SHOW_SECRETS" not in env:
        environ.pop("MANIFOLD_SHOW_SECRETS", None)
    with running_process(cmd, env=environ) as (proc, base):
        yield Gateway(base, db, path, proc)


def pids_with(marker: str) -> set[int]:
    """Live processes whose command line contains `marker` (read from /proc)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
        except OSError:
            continue
        if marker.encode() in args:
            found.add(int(entry))
    return found


def extra(model: Any, key: str) -> Any:
    return (model.model_extra or {}).get(key)


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with start_http_upstream("--name", "remote", *[f"--require-header={h}" for h in REQUIRED]) as url:
        yield url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, upstream: str) -> Iterator[Gateway]:
    """The gateway under test, on each store: a SQLite file, then PostgreSQL (skipped without it)."""
    tmp = tmp_path_factory.mktemp("api")
    db = request.getfixturevalue("pg_cluster").create_database() if request.param == "postgresql" else None
    with run_gateway(tmp, {"mcp_servers": {"cfgsrv": http_config(upstream)}}, db=db) as gw:
        yield gw


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> Iterator[Letta]:
    with gateway.letta() as c:
        yield c


def test_every_endpoint_through_letta_client(client: Letta, gateway: Gateway, upstream: str) -> None:
    local = client.mcp_servers.create(
        server_name="local", config=stdio_config("local", env={"FIXTURE_SECRET": "hush-hush"})
    )
    assert isinstance(local, StdioMcpServer)
    assert SERVER_ID.match(local.id or "") and local.server_name == "local"
    assert local.env == {"FIXTURE_SECRET": "****"}  # masked
    assert extra(local, "status") == "ready" and extra(local, "source") == "api"

    remote = client.mcp_servers.create(server_name="remote", config=http_config(upstream))
    assert isinstance(remote, StreamableHTTPMcpServer)
    assert extra(remote, "status") == "ready", extra(remote, "last_error")  # both headers reached it
    assert remote.auth_header == "X-Api-Key" and remote.auth_token == "****"
    assert remote.custom_headers == {"X-Team": "****"}

    servers = {s.server_name: s for s in client.mcp_servers.list()}
    assert {"cfgsrv", "local", "remote"} <= set(servers)
    assert extra(servers["cfgsrv"], "source") == "config"
    assert client.mcp_servers.retrieve(local.id).id == local.id
    assert isinstance(client.mcp_servers.retrieve(remote.id), StreamableHTTPMcpServer)

    tools = {t.name: t for t in client.mcp_servers.tools.list(local.id)}
    assert set(tools) == BASE_TOOLS
    echo = tools["echo"]
    assert TOOL_ID.match(echo.id)
    assert echo.tool_type == "external_mcp" and echo.tags == ["mcp:local"]
    assert echo.return_char_limit == 50000 and echo.description == "Return the text unchanged."
    assert echo.metadata and echo.metadata["mcp"]["server_name"] == "local"
    assert echo.metadata["mcp"]["server_id"] == local.id
    assert echo.json_schema and echo.json_schema["name"] == "echo"
    assert echo.json_schema["parameters"]["properties"]["text"]["type"] == "string"
    assert client.mcp_servers.tools.retrieve(echo.id, mcp_server_id=local.id).id == echo.id

    result = client.mcp_servers.tools.run(echo.id, mcp_server_id=local.id, args={"text": "hello there"})
    assert result.status == "success" and result.func_return == "hello there"
    assert result.stdout is None and result.stderr is None
    failed = client.mcp_servers.tools.run(tools["fail"].id, mcp_server_id=local.id, args={"message": "boom"})
    assert failed.status == "error" and failed.func_return == "boom"
    # A JSON-RPC error from the upstream (here: bad arguments) is an error result, as in Letta.
    bad = client.mcp_servers.tools.run(echo.id, mcp_server_id=local.id)
    assert bad.status == "error" and bad.func_return

    remote_tools = {t.name: t for t in client.mcp_servers.tools.list(remote.id)}
    whoami = client.mcp_servers.tools.run(remote_tools["whoami"].id, mcp_server_id=remote.id)
    assert whoami.func_return == "remote"

    assert client.mcp_servers.refresh(local.id) == {"deleted": [], "updated": [], "added": []}
    assert client.mcp_servers.refresh(remote.id, agent_id="agent-1") == {
        "deleted": [],
        "updated": [],
        "added": [],
    }

    # A tool registered upstream at run time shows up by itself (list_changed), with a new id.
    client.mcp_servers.tools.run(tools["register_tool"].id, mcp_server_id=local.id, args={"tool_name": "dyn"})
    wait_for(lambda: "dyn" in {t.name for t in client.mcp_servers.tools.list(local.id)}, what="dyn recorded")
    again = {t.name: t.id for t in client.mcp_servers.tools.list(local.id)}
    assert again["echo"] == echo.id

    # Update: the old process is stopped, a new one started with the new settings.
    old_pids = pids_with("local")
    assert old_pids
    updated = client.mcp_servers.update(
        local.id,
        config={
            "mcp_server_type": "stdio",
            "command": None,
            "args": None,
            "env": {"FIXTURE_SECRET": "****", "X": "1"},
        },
    )
    assert isinstance(updated, StdioMcpServer) and updated.env == {"FIXTURE_SECRET": "****", "X": "****"}
    assert extra(updated, "status") == "ready"
    wait_for(lambda: not (pids_with("local") & old_pids), what="the old process to exit")
    assert {t.name: t.id for t in client.mcp_servers.tools.list(local.id)}["echo"] == echo.id

    # Rename: tags and metadata follow the new name; ids stay.
    renamed = client.mcp_servers.update(
        remote.id, server_name="remote2", config={"mcp_server_type": "streamable_http", "server_url": None}
    )
    assert (
        renamed.server_name == "remote2" and renamed.id == remote.id and extra(renamed, "status") == "ready"
    )
    tool = client.mcp_servers.tools.retrieve(remote_tools["echo"].id, mcp_server_id=remote.id)
    assert tool.tags == ["mcp:remote2"] and tool.metadata and tool.metadata["mcp"]["server_name"] == "remote2"

    # Delete: 204, process gone, server and tools gone.
    pids = pids_with("local")
    assert client.mcp_servers.delete(local.id) is None
    wait_for(lambda: not (pids_with("local") & pids), what="the deleted server's process to exit")
    assert local.id not in {s.id for s in client.mcp_servers.list()}
    with gateway.http() as http:
        assert http.get(f"/v1/mcp-servers/{local.id}/tools").status_code == 404
    client.mcp_servers.delete(remote.id)


def test_masked_secrets_round_trip_and_timeouts(client: Letta, gateway: Gateway, upstream: str) -> None:
    server = client.mcp_servers.create(server_name="masked", config=http_config(upstream))
    # Everything sent back as shown (masked) plus a shorter timeout: the stored secrets are kept,
    # so the reconnect still authenticates.
    shown = server.model_dump()
    config = {
        k: shown[k] for k in ("mcp_server_type", "server_url", "auth_header", "auth_token", "custom_headers")
    }
    updated = client.mcp_servers.update(server.id, config={**config, "timeout": 1})
    assert extra(updated, "status") == "ready", extra(updated, "last_error")
    assert updated.auth_token == "****" and extra(updated, "timeout") == 1
    slow = {t.name: t for t in client.mcp_servers.tools.list(server.id)}["slow"]
    with gateway.http() as http:
        response = http.post(
            f"/v1/mcp-servers/{server.id}/tools/{slow.id}/run", json={"args": {"seconds": 5}}
        )
        assert response.status_code == 504, response.text
        assert "masked" in response.json()["detail"]
        # Clearing the token (null) is a real change: the upstream now refuses us.
        response = http.patch(
            f"/v1/mcp-servers/{server.id}", json={"config": {"auth_token": None, "auth_header": None}}
        )
        assert response.status_code == 200 and response.json()["status"] != "ready"
        assert response.json()["auth_token"] is None
        assert "k-secret-42" not in response.text
    client.mcp_servers.delete(server.id)


def test_error_codes(client: Letta, gateway: Gateway, upstream: str) -> None:
    a = client.mcp_servers.create(server_name="err-a", config=http_config(upstream))
    b = client.mcp_servers.create(server_name="err-b", config=http_config(upstream))
    cfg = next(s for s in client.mcp_servers.list() if s.server_name == "cfgsrv")
    a_tool = client.mcp_servers.tools.list(a.id)[0]
    missing = "mcp_server-00000000-0000-4000-8000-000000000000"
    with gateway.http() as http, gateway.http(token=None) as anonymous, gateway.http(token="wrong") as wrong:
        assert anonymous.get("/v1/mcp-servers/").status_code == 401
        assert wrong.get("/v1/mcp-servers/").status_code == 401
        assert wrong.get("/v1/mcp-servers/").headers["www-authenticate"] == "Bearer"

        for method, path in [
            ("GET", f"/v1/mcp-servers/{missing}"),
            ("PATCH", f"/v1/mcp-servers/{missing}"),
            ("DELETE", f"/v1/mcp-servers/{missing}"),
            ("PATCH", f"/v1/mcp-servers/{missing}/refresh"),
            ("GET", f"/v1/mcp-servers/{missing}/tools"),
            ("GET", f"/v1/mcp-servers/{missing}/tools/{a_tool.id}"),
            ("POST", f"/v1/mcp-servers/{missing}/tools/{a_tool.id}/run"),
            ("GET", f"/v1/mcp-servers/{a.id}/tools/tool-nope"),
            ("POST", f"/v1/mcp-servers/{a.id}/tools/tool-nope/run"),
            ("GET", f"/v1/mcp-servers/{b.id}/tools/{a_tool.id}"),  # a tool of another server
        ]:
            body = (
                {"config": {"mcp_server_type": "sse"}} if method == "PATCH" and path.count("/") == 3 else None
            )
            response = http.request(method, path, json=body)
            assert response.status_code == 404, (method, path, response.text)
            assert isinstance(response.json()["detail"], str)

        duplicate = http.post(
            "/v1/mcp-servers/", json={"server_name": "err-a", "config": http_config(upstream)}
        )
        assert duplicate.status_code == 409 and "err-a" in duplicate.json()["detail"]
        rename = http.patch(f"/v1/mcp-servers/{b.id}", json={"server_name": "err-a", "config": {}})
        assert rename.status_code == 409
        names = {s.server_name: s.id for s in client.mcp_servers.list()}
        assert names["err-a"] == a.id and names["err-b"] == b.id  # nobody deleted

        for response in (
            http.patch(f"/v1/mcp-servers/{cfg.id}", json={"config": {"timeout": 3}}),
            http.delete(f"/v1/mcp-servers/{cfg.id}"),
        ):
            assert response.status_code == 409 and str(gateway.config) in response.json()["detail"]

        for body in (
            {"server_name": "x", "config": {"server_url": "http://127.0.0.1:1/mcp"}},  # no mcp_server_type
            {
                "server_name": "x",
                "config": {"mcp_server_type": "sse", "server_url": "http://x/", "type": "sse"},
            },
            {"config": {"mcp_server_type": "sse", "server_url": "http://127.0.0.1:1/"}},
            {"server_name": "x", "config": {"mcp_server_type": "stdio", "args": []}},
            {"server_name": "x", "config": {"mcp_server_type": "sse", "server_url": "ftp://x/"}},
        ):
            response = http.post("/v1/mcp-servers/", json=body)
            assert response.status_code == 422, (body, response.text)
            assert isinstance(response.json()["detail"], list) and response.json()["detail"][0]["loc"]
        for body in (
            {"config": {"timeout": -1}},
            {"config": {"mcp_server_type": "streamable_http", "server_url": "ftp://nowhere"}},
            {"config": {"mcp_server_type": "stdio"}},  # a new type needs its required fields
        ):
            response = http.patch(f"/v1/mcp-servers/{a.id}", json=body)
            assert response.status_code == 422, (body, response.text)
            assert response.json()["detail"][0]["loc"][:2] == ["body", "config"]
        assert (
            http.post(f"/v1/mcp-servers/{a.id}/tools/{a_tool.id}/run", json={"args": {}, "x": 1}).status_code
            == 422
        )

        # An unreachable upstream: stored, with its status; refresh and run answer 502.
        down = http.post(
            "/v1/mcp-servers/",
            json={
                "server_name": "down",
                "config": {
                    "mcp_server_type": "streamable_http",
                    "server_url": "http://127.0.0.1:9/mcp",
                    "connect_timeout": 2,
                },
            },
        )
        assert down.status_code == 200 and down.json()["status"] in ("backing_off", "failed")
        assert down.json()["last_error"]
        assert http.patch(f"/v1/mcp-servers/{down.json()['id']}/refresh").status_code == 502
        assert http.get(f"/v1/mcp-servers/{down.json()['id']}/tools").json() == []
        assert http.delete(f"/v1/mcp-servers/{down.json()['id']}").status_code == 204
    for server in (a, b):
        client.mcp_servers.delete(server.id)


def test_unreachable_at_create_then_refresh(client: Letta, gateway: Gateway) -> None:
    with socket.socket() as probe:  # a free port, left closed for now
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    config = {"mcp_server_type": "streamable_http", "server_url": f"http://127.0.0.1:{port}/mcp"}
    server = client.mcp_servers.create(server_name="later", config=config)
    assert extra(server, "status") != "ready" and client.mcp_servers.tools.list(server.id) == []
    with running_process(
        fixture_command("--transport", "streamable-http", "--name", "later", "--port", port)
    ):
        diff = client.mcp_servers.refresh(server.id)
        assert isinstance(diff, dict) and set(diff) == {"deleted", "updated", "added"}
        tools = {t.name: t for t in client.mcp_servers.tools.list(server.id)}
        assert set(tools) == BASE_TOOLS
        assert set(diff["added"]) in (BASE_TOOLS, set())  # the reconnect may have recorded them first
        assert extra(client.mcp_servers.retrieve(server.id), "status") == "ready"
        result = client.mcp_servers.tools.run(tools["whoami"].id, mcp_server_id=server.id)
        assert result.func_return == "later"
    with gateway.http() as http:  # the upstream is gone again
        response = http.post(f"/v1/mcp-servers/{server.id}/tools/{tools['whoami'].id}/run", json={})
        assert response.status_code == 502, response.text
    client.mcp_servers.delete(server.id)


def test_a_300_tool_server_is_listed_fully(client: Letta) -> None:
    server = client.mcp_servers.create(server_name="big", config=stdio_config("big", "--tools", "300"))
    tools = client.mcp_servers.tools.list(server.id)
    assert len(tools) == 305 and len({t.id for t in tools}) == 305
    assert {f"tool_{i:04d}" for i in range(300)} <= {t.name for t in tools}
    last = next(t for t in tools if t.name == "tool_0299")
    assert (
        client.mcp_servers.tools.run(last.id, mcp_server_id=server.id, args={"value": "v"}).func_return
        == "big:tool_0299:v"
    )
    client.mcp_servers.delete(server.id)


def test_concurrent_creates_and_renames(gateway: Gateway, upstream: str) -> None:
    barrier = threading.Barrier(12)

    def create(i: int) -> tuple[int, str]:
        with gateway.http() as http:
            barrier.wait(10)
            name = f"race-{i % 4}"
            response = http.post(
                "/v1/mcp-servers/", json={"server_name": name, "config": http_config(upstream)}
            )
            return response.status_code, response.json().get("id", "")

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(create, range(12)))
    codes = sorted(code for code, _ in results)
    assert codes == [200] * 4 + [409] * 8, results
    with gateway.http() as http:
        listed = {s["server_name"]: s["id"] for s in http.get("/v1/mcp-servers/").json()}
        created = {server_id for code, server_id in results if code == 200}
        assert {listed[f"race-{i}"] for i in range(4)} == created

        rename_barrier = threading.Barrier(4)

        def rename(server_id: str) -> int:
            with gateway.http() as own:
                rename_barrier.wait(10)
                return own.patch(
                    f"/v1/mcp-servers/{server_id}", json={"server_name": "race-winner", "config": {}}
                ).status_code

        with ThreadPoolExecutor(4) as pool:
            codes = sorted(pool.map(rename, created))
        assert codes == [200, 409, 409, 409]
        after = [s for s in http.get("/v1/mcp-servers/").json() if s["id"] in created]
        assert len(after) == 4 and sum(s["server_name"] == "race-winner" for s in after) == 1
        for server_id in created:
            assert http.delete(f"/v1/mcp-servers/{server_id}").status_code == 204


@pytest.mark.anyio
async def test_the_mcp_face_sees_api_changes_without_restart(gateway: Gateway, upstream: str) -> None:
    async with (
        httpx2.AsyncClient(timeout=30) as hc,
        streamable_http_client(gateway.base + "/mcp", http_client=hc) as (read, write),
    ):
        async with ClientSession(read, write) as session:
            await session.initialize()
            names = {t.name for t in (await session.list_tools()).tools}
            assert "cfgsrv__echo" in names and "live__echo" not in names

            async with httpx.AsyncClient(
                base_url=gateway.base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
            ) as api:
                created = (
                    await api.post(
                        "/v1/mcp-servers/", json={"server_name": "live", "config": http_config(upstream)}
                    )
                ).json()

                async def shows_live(present: bool) -> bool:
                    names = {t.name for t in (await session.list_tools()).tools}
                    return ("live__whoami" in names) == present

                await poll(lambda: shows_live(True), "live tools on the MCP face")
                result = await session.call_tool("live__whoami", {})
                assert result.content[0].text == "remote"
                # The API's tools carry the name the MCP face shows them under.
                tools = (await api.get(f"/v1/mcp-servers/{created['id']}/tools")).json()
                assert "live__whoami" in {t["metadata_"]["mcp"]["exposed_name"] for t in tools}

                assert (await api.delete(f"/v1/mcp-servers/{created['id']}")).status_code == 204
                await poll(lambda: shows_live(False), "live tools gone from the MCP face")


async def poll(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 15.0) -> None:
    """Await `check()` until it is true; TimeoutError past `timeout` (no fixed sleeps as sync)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        await anyio.sleep(0.05)


def test_restart_keeps_servers_and_ids(tmp_path: Path, upstream: str, db_url: str) -> None:
    config = {"mcp_servers": {"filed": http_config(upstream)}}
    with run_gateway(tmp_path, config, db=db_url) as gw, gw.letta() as client:
        created = client.mcp_servers.create(server_name="kept", config=http_config(upstream))
        other = client.mcp_servers.create(server_name="kept-2", config=http_config(upstream, timeout=7))
        before = {s.server_name: s.id for s in client.mcp_servers.list()}
        tools_before = {
            s: {t.name: t.id for t in client.mcp_servers.tools.list(i)} for s, i in before.items()
        }
        assert set(before) == {"filed", "kept", "kept-2"}
        assert all(tools_before.values())
    with run_gateway(tmp_path, config, db=gw.db, MANIFOLD_SHOW_SECRETS="1") as gw2, gw2.letta() as client:
        after = {s.server_name: s for s in client.mcp_servers.list()}
        assert {name: s.id for name, s in after.items()} == before
        wait_for(
            lambda: all(extra(client.mcp_servers.retrieve(i), "status") == "ready" for i in before.values()),
            what="ready",
        )
        assert {
            s: {t.name: t.id for t in client.mcp_servers.tools.list(i)} for s, i in before.items()
        } == tools_before
        # The operator opted in: secrets shown as stored.
        shown = client.mcp_servers.retrieve(created.id)
        assert shown.auth_token == "k-secret-42" and shown.custom_headers == {"X-Team": "blue"}
        assert extra(client.mcp_servers.retrieve(other.id), "timeout") == 7

        # A reloaded config file: a new server is listed (source config), a removed one is not,
        # and one that comes back gets its old id again.
        gw2.config.write_text(yaml.safe_dump({"mcp_servers": {"filed-2": http_config(upstream)}}))
        gw2.proc.send_signal(signal.SIGHUP)

        def reloaded() -> dict[str, Any] | None:
            listed = {s.server_name: s for s in client.mcp_servers.list()}
            return listed if "filed-2" in listed and "filed" not in listed else None

        listed = wait_for(reloaded, what="the reload to show in the API")
        assert extra(listed["filed-2"], "source") == "config" and {"kept", "kept-2"} <= set(listed)
        assert client.mcp_servers.tools.list(listed["filed-2"].id) or wait_for(
            lambda: client.mcp_servers.tools.list(listed["filed-2"].id), what="filed-2 tools"
        )
        gw2.config.write_text(yaml.safe_dump(config))
        gw2.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "filed" in {s.server_name for s in client.mcp_servers.list()}, what="filed back")
        assert {s.server_name: s.id for s in client.mcp_servers.list()}["filed"] == before["filed"]


# --- pure parts: result rendering and PATCH merging (no processes) ------------------------------


def test_execution_results_render_like_letta_without_python_reprs() -> None:
    from manifold.faces.rest import execution_result

    text = {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    assert execution_result(text) == {
        "status": "success",
        "func_return": "a b",
        "agent_state": None,
        "stdout": None,
        "stderr": None,
        "sandbox_config_fingerprint": None,
    }
    error = execution_result({"content": [{"type": "text", "text": "boom"}], "isError": True})
    assert error["status"] == "error" and error["func_return"] == "boom"
    assert execution_result({"content": []})["func_return"] == "Empty response from tool"

    structured = execution_result({"content": [], "structuredContent": {"n": 1}})
    assert structured["func_return"] == '{"n": 1}' and structured["structured_content"] == {"n": 1}

    image = {"type": "image", "mimeType": "image/png", "data": "A" * 1000}
    link = {"type": "resource_link", "uri": "file:///x", "name": "x"}
    embedded = {"type": "resource", "resource": {"uri": "mem://t", "text": "inline text"}}
    rendered = execution_result({"content": [image, link, embedded]})["func_return"]
    assert '"mimeType": "image/png"' in rendered and "<1000 base64 characters>" in rendered
    assert '"uri": "file:///x"' in rendered and rendered.endswith("inline text")
    assert "{'type'" not in rendered  # JSON, never a Python repr

    long = execution_result({"content": [{"type": "text", "text": "x" * 60000}]})["func_return"]
    assert len(long) <= 50000 and "truncated" in long and "60000" in long


def test_patch_merging_keeps_what_is_left_out_and_masked() -> None:
    from manifold.registry import merge_update

    stored = {
        "mcp_server_type": "streamable_http",
        "server_url": "http://a/mcp",
        "auth_header": "X-Key",
        "auth_token": "real-token",
        "custom_headers": {"X-Team": "blue", "X-Other": "o"},
        "timeout": 5,
    }
    same = merge_update(stored, {"auth_token": "****", "custom_headers": {"X-Team": "****", "X-New": "n"}})
    assert same["auth_token"] == "real-token" and same["custom_headers"] == {"X-Team": "blue", "X-New": "n"}
    assert same["server_url"] == "http://a/mcp" and same["timeout"] == 5  # left out: kept
    assert merge_update(stored, {"server_url": None})["server_url"] == "http://a/mcp"  # Letta's null: kept
    cleared = merge_update(stored, {"auth_token": None, "timeout": None})
    assert "auth_token" not in cleared and "timeout" not in cleared  # other nulls: cleared to defaults
    moved = merge_update(stored, {"mcp_server_type": "stdio", "command": "x"})
    assert moved == {"mcp_server_type": "stdio", "command": "x", "timeout": 5}  # new type: fresh start
