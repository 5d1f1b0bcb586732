"""The store on a real SQLite file and on PostgreSQL: ids, uniqueness, persistence, concurrent writers."""

import contextlib
import re
import subprocess
import textwrap
from pathlib import Path

import anyio
import pytest

from support import PYTHON, async_wait_for, subprocess_env

from manifold.store import NameTaken, NotFound, Stale, Store, tool_json_schema

pytestmark = pytest.mark.anyio

SERVER_ID = re.compile(r"^mcp_server-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
TOOL_ID = re.compile(r"^tool-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

STDIO = {"mcp_server_type": "stdio", "command": "python", "args": ["-m", "x"], "env": {"TOKEN": "s3cret"}}
HTTP = {"mcp_server_type": "streamable_http", "server_url": "http://127.0.0.1:1/mcp"}


def tool(name: str, description: str = "d", schema: dict | None = None) -> dict:
    return {
        "name": name,
        "description": description,
        "inputSchema": schema or {"type": "object", "properties": {}},
    }


def sqlite_file(url: str) -> Path | None:
    return Path(url.split("///", 1)[1]) if url.startswith("sqlite") else None


async def test_ids_and_crud(db_url: str) -> None:
    async with Store(db_url).open() as store:
        a = await store.create_server("alpha", STDIO)
        assert SERVER_ID.match(a.id)
        assert a.source == "api" and a.config == STDIO  # secrets stored as given
        assert (await store.get_server(a.id)) is not None
        assert (await store.get_server_by_name("alpha")).id == a.id
        assert await store.get_server("mcp_server-nope") is None

        b = await store.create_server("beta", HTTP)
        assert [s.server_name for s in await store.list_servers()] == ["alpha", "beta"]

        renamed = await store.update_server(b.id, server_name="gamma", config={**HTTP, "timeout": 5})
        assert renamed.id == b.id and renamed.server_name == "gamma" and renamed.config["timeout"] == 5

        with pytest.raises(NotFound):
            await store.update_server("mcp_server-nope", server_name="x")

        deleted = await store.delete_server(a.id)
        assert deleted is not None and deleted.server_name == "alpha"
        assert await store.delete_server(a.id) is None
        assert [s.server_name for s in await store.list_servers()] == ["gamma"]
    path = sqlite_file(db_url)
    assert path is None or path.exists()  # parent directory created


async def test_names_are_unique_and_rename_never_deletes(db_url: str) -> None:
    async with Store(db_url).open() as store:
        a = await store.create_server("alpha", STDIO)
        b = await store.create_server("beta", HTTP)
        with pytest.raises(NameTaken) as info:
            await store.create_server("alpha", HTTP)
        assert info.value.existing is not None and info.value.existing.id == a.id
        with pytest.raises(NameTaken):
            await store.update_server(b.id, server_name="alpha")
        servers = {s.server_name: s for s in await store.list_servers()}
        assert set(servers) == {"alpha", "beta"}
        assert servers["alpha"].config == STDIO and servers["beta"].config == HTTP


async def test_tool_sync_keeps_ids_and_reports_diff(db_url: str) -> None:
    async with Store(db_url).open() as store:
        server = await store.create_server("alpha", STDIO)
        diff = await store.sync_tools(server.id, [tool("a"), tool("b"), tool("c"), tool("a", "duplicate")])
        assert diff.as_dict() == {"deleted": [], "updated": [], "added": ["a", "b", "c"]}
        first = {t.name: t for t in await store.list_tools(server.id)}
        assert len(first) == 3 and all(TOOL_ID.match(t.id) for t in first.values())
        assert first["a"].description == "d"  # the first of two same-named tools wins
        assert first["a"].json_schema == tool_json_schema(tool("a"))

        same = await store.sync_tools(server.id, [tool("a"), tool("b"), tool("c")])
        assert not same

        schema = {"type": "object", "properties": {"x": {"type": "string"}}}
        diff = await store.sync_tools(server.id, [tool("a", schema=schema), tool("c"), tool("d")])
        assert diff.as_dict() == {"deleted": ["b"], "updated": ["a"], "added": ["d"]}
        second = {t.name: t for t in await store.list_tools(server.id)}
        assert second["a"].id == first["a"].id and second["c"].id == first["c"].id
        assert second["a"].json_schema["parameters"] == schema
        assert await store.get_tool(server.id, second["a"].id) == second["a"]

        other = await store.create_server("beta", HTTP)
        await store.sync_tools(other.id, [tool("a")])  # same tool name on another server: its own row
        assert await store.get_tool(other.id, second["a"].id) is None
        assert (await store.count_tools()) == {server.id: 3, other.id: 1}

        await store.delete_server(server.id)
        assert await store.list_tools(server.id) == []
        with pytest.raises(NotFound):
            await store.sync_tools(server.id, [tool("a")])


async def test_everything_survives_reopen(db_url: str) -> None:
    async with Store(db_url).open() as store:
        server = await store.create_server("alpha", STDIO)
        await store.sync_tools(server.id, [tool(f"t{i}") for i in range(300)])
        tool_ids = {t.name: t.id for t in await store.list_tools(server.id)}
        config_row, before = await store.upsert_config_server("fromfile", HTTP)
        assert before is None and config_row.source == "config"
    async with Store(db_url).open() as store:
        again = await store.get_server(server.id)
        assert again is not None and again.config == STDIO
        assert {t.name: t.id for t in await store.list_tools(server.id)} == tool_ids
        row, before = await store.upsert_config_server("fromfile", {**HTTP, "timeout": 3})
        assert row.id == config_row.id and before == "config" and row.config["timeout"] == 3
        # A config-file server takes over an API row of the same name, keeping its id.
        taken, before = await store.upsert_config_server("alpha", HTTP)
        assert taken.id == server.id and before == "api" and taken.source == "config"


async def test_concurrent_writers_lose_nothing(db_url: str) -> None:
    """Many tasks (each on its own connection) racing for names: one winner per name, no lost row."""
    async with Store(db_url).open() as store:
        outcomes: list[str] = []

        async def create(name: str) -> None:
            try:
                await store.create_server(name, HTTP)
                outcomes.append("ok")
            except NameTaken:
                outcomes.append("taken")

        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(create, f"s{i % 10}")
        assert outcomes.count("ok") == 10 and outcomes.count("taken") == 30
        servers = await store.list_servers()
        assert sorted(s.server_name for s in servers) == sorted(f"s{i}" for i in range(10))

        # Concurrent renames onto one name: exactly one wins, every row survives.
        results: list[str] = []

        async def rename(server_id: str) -> None:
            try:
                await store.update_server(server_id, server_name="target")
                results.append("ok")
            except NameTaken:
                results.append("taken")

        async with anyio.create_task_group() as tg:
            for server in servers:
                tg.start_soon(rename, server.id)
        assert results.count("ok") == 1
        assert len(await store.list_servers()) == 10

        # Concurrent syncs of one server never duplicate or lose tool rows.
        target = await store.get_server_by_name("target")
        assert target is not None
        async with anyio.create_task_group() as tg:
            for n in range(10):
                tg.start_soon(store.sync_tools, target.id, [tool(f"t{i}") for i in range(20 + n % 2)])
        names = [t.name for t in await store.list_tools(target.id)]
        assert len(names) == len(set(names)) and len(names) in (20, 21)


# Cancelled the moment its transaction has begun, a tool sync still commits, and the
# process then exits: cancelling aiosqlite mid-operation used to leave SQLAlchemy's
# shielded close waiting forever on a worker thread already stopped, hanging asyncio's
# shutdown (seen as `manifold serve` not exiting on SIGINT).
CANCELLED_WRITE = """
import asyncio, sys
import anyio
from sqlalchemy import event
from manifold.store import Store

async def main(url):
    async with Store(url).open() as store:
        server = await store.create_server("s", {"mcp_server_type": "stdio", "command": "x"})
        begun = anyio.Event()
        event.listen(store.engine.sync_engine, "begin", lambda conn: begun.set())
        tools = [{"name": f"t{i}", "inputSchema": {"type": "object"}} for i in range(20)]
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.sync_tools, server.id, tools)
            await begun.wait()
            tg.cancel_scope.cancel()
        print(len(await store.list_tools(server.id)))
    left = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    print(len(left))

anyio.run(main, sys.argv[1])
"""


def test_a_cancelled_sqlite_write_commits_and_the_process_exits(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    script = textwrap.dedent(CANCELLED_WRITE)
    for _ in range(5):  # the hang came in some runs only; the lost write in every one
        done = subprocess.run([PYTHON, "-c", script, url], capture_output=True, text=True, timeout=60, env=subprocess_env())
        assert done.returncode == 0, done.stderr
        assert done.stdout.split()[-2:] == ["20", "0"], "the cancelled sync lost its tools or left tasks behind"
        (tmp_path / "store.db").unlink()


async def test_two_stores_on_one_file(db_url: str) -> None:
    """Two gateways sharing one database file (separate engines) race safely."""
    async with Store(db_url).open() as one, Store(db_url).open() as two:
        results: list[str] = []

        async def create(store: Store) -> None:
            try:
                await store.create_server("shared", HTTP)
                results.append("ok")
            except NameTaken:
                results.append("taken")

        async with anyio.create_task_group() as tg:
            for store in (one, two, one, two):
                tg.start_soon(create, store)
        assert sorted(results) == ["ok", "taken", "taken", "taken"]
        assert [s.server_name for s in await two.list_servers()] == ["shared"]


async def test_an_update_computed_from_a_stale_read_is_refused(db_url: str) -> None:
    async with Store(db_url).open() as store:
        read = await store.create_server("alpha", HTTP)
        await store.update_server(read.id, config={**HTTP, "timeout": 1}, expect=read)  # fresh: applied
        with pytest.raises(Stale):  # computed from `read`, but the row changed since
            await store.update_server(read.id, config={**HTTP, "timeout": 2}, expect=read)
        current = await store.get_server(read.id)
        assert current is not None and current.config["timeout"] == 1


async def test_replicas_opening_one_new_database_at_once_migrate_once(pg_cluster: object) -> None:
    """Five stores open one empty PostgreSQL database together: one creates the schema, all work."""
    url = pg_cluster.create_database()  # type: ignore[attr-defined]
    stores = [Store(url) for _ in range(5)]
    async with contextlib.AsyncExitStack() as stack:

        async def open_one(store: Store) -> None:
            await stack.enter_async_context(store.open())

        async with anyio.create_task_group() as tg:
            for store in stores:
                tg.start_soon(open_one, store)
        created = await stores[0].create_server("alpha", HTTP)
        for store in stores:
            assert [s.id for s in await store.list_servers()] == [created.id]


async def test_events_reach_every_listening_store(pg_cluster: object) -> None:
    """What one store publishes, every store on the database hears (and a SQLite store has no channel)."""
    url = pg_cluster.create_database()  # type: ignore[attr-defined]
    heard: dict[int, list[str | None]] = {0: [], 1: []}
    async with Store(url).open() as one, Store(url).open() as two, anyio.create_task_group() as tg:
        assert one.shared and two.shared
        for index, store in enumerate((one, two)):
            tg.start_soon(store.listen, heard[index].append)
        await async_wait_for(lambda: heard[0] == [None] and heard[1] == [None], what="both listening")
        await one.notify("server:mcp_server-1")
        await two.notify("server:mcp_server-2")
        for index in heard:
            await async_wait_for(
                lambda index=index: heard[index] == [None, "server:mcp_server-1", "server:mcp_server-2"],
                what=f"store {index} to hear both events",
            )
        tg.cancel_scope.cancel()


async def test_a_sqlite_store_is_not_shared(tmp_path: Path) -> None:
    async with Store(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}").open() as store:
        assert not store.shared
        await store.notify("ignored")  # no channel: nothing happens, nothing fails
        with anyio.move_on_after(0.05) as scope:
            await store.listen(lambda payload: pytest.fail(f"heard {payload!r}"))
        assert scope.cancelled_caught
