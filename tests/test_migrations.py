"""Schema migrations on a real SQLite file and on PostgreSQL: new, older and newer databases, replicas."""

import contextlib
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    ForeignKey,
    Index,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    inspect,
    insert,
    make_url,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from support import PYTHON, subprocess_env

from manifold import migrations
from manifold.store import MIGRATION_LOCK, Store, StoreError, default_sqlite_path, metadata, tool_json_schema

pytestmark = pytest.mark.anyio

HEAD = migrations.head()
HTTP = {"mcp_server_type": "streamable_http", "server_url": "http://127.0.0.1:1/mcp"}
SERVER_ID = "mcp_server-00000000-0000-4000-8000-000000000001"
TOOL_IDS = {
    "echo": "tool-00000000-0000-4000-8000-000000000001",
    "add": "tool-00000000-0000-4000-8000-000000000002",
}
LISTING = {"tools": [{"name": "echo"}, {"name": "add"}], "prompts": [], "resources": []}


def legacy_metadata(with_listings: bool) -> MetaData:
    """The tables Manifold made with `create_all` before migrations (a frozen copy of its store.py)."""
    old = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    Table(
        "mcp_servers",
        old,
        Column("id", String(64), primary_key=True),
        Column("server_name", String(255), nullable=False),
        Column("source", String(16), nullable=False),
        Column("config", JSON, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
        UniqueConstraint("server_name"),
    )
    Table(
        "tools",
        old,
        Column("id", String(64), primary_key=True),
        Column("server_id", String(64), ForeignKey("mcp_servers.id", ondelete="CASCADE"), nullable=False),
        Column("name", Text, nullable=False),
        Column("description", Text, nullable=True),
        Column("json_schema", JSON, nullable=False),
        Column("raw", JSON, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
        UniqueConstraint("server_id", "name"),
        Index(None, "server_id"),
    )
    if with_listings:
        Table(
            "server_listings",
            old,
            Column(
                "server_id", String(64), ForeignKey("mcp_servers.id", ondelete="CASCADE"), primary_key=True
            ),
            Column("listing", JSON, nullable=False),
            Column("updated_at", DateTime(timezone=True), nullable=False),
        )
    return old


@contextlib.asynccontextmanager
async def connect(url: str) -> Any:
    """A plain connection beside the store (no migration), committed on exit."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            yield conn
    finally:
        await engine.dispose()


async def make_legacy_database(url: str, with_listings: bool) -> None:
    """A database as an earlier Manifold left it: its tables, one server with two tools, no version table."""
    old = legacy_metadata(with_listings)
    now = datetime.now(UTC)
    path = default_sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    async with connect(url) as conn:
        await conn.run_sync(old.create_all)
        await conn.execute(
            insert(old.tables["mcp_servers"]).values(
                id=SERVER_ID, server_name="alpha", source="api", config=HTTP, created_at=now, updated_at=now
            )
        )
        for name, tool_id in TOOL_IDS.items():
            tool = {"name": name, "description": name, "inputSchema": {"type": "object", "properties": {}}}
            await conn.execute(
                insert(old.tables["tools"]).values(
                    id=tool_id,
                    server_id=SERVER_ID,
                    name=name,
                    description=name,
                    json_schema=tool_json_schema(tool),
                    raw=tool,
                    created_at=now,
                    updated_at=now,
                )
            )
        if with_listings:
            listings = old.tables["server_listings"]
            await conn.execute(insert(listings).values(server_id=SERVER_ID, listing=LISTING, updated_at=now))


async def versions(url: str) -> list[str]:
    async with connect(url) as conn:
        query = text(f"SELECT version_num FROM {migrations.VERSION_TABLE}")
        return list((await conn.execute(query)).scalars())


async def differences(url: str, target: MetaData = metadata) -> list[Any]:
    """What Alembic's autogenerate finds between the database and `target` (empty: they agree)."""
    async with connect(url) as conn:
        return await conn.run_sync(
            lambda sync: compare_metadata(
                MigrationContext.configure(sync, opts={"version_table": migrations.VERSION_TABLE}), target
            )
        )


async def snapshot(url: str) -> dict[str, Any]:
    """Every table with its columns and every row: what "untouched" is checked against."""

    def read(sync: Any) -> dict[str, Any]:
        tables = sorted(inspect(sync).get_table_names())
        return {
            table: (
                [c["name"] for c in inspect(sync).get_columns(table)],
                sorted(map(tuple, sync.execute(text(f"SELECT * FROM {table}")))),
            )
            for table in tables
        }

    async with connect(url) as conn:
        return await conn.run_sync(read)


async def test_a_new_database_reaches_head_and_works(db_url: str) -> None:
    assert await Store(db_url).revision() == (None, HEAD)
    async with Store(db_url).open() as store:
        server = await store.create_server("alpha", HTTP)
        await store.sync_tools(server.id, [{"name": "echo"}])
        await store.save_listing(server.id, LISTING)
        assert await store.get_listing(server.id) == LISTING
    assert await versions(db_url) == [HEAD]
    assert await Store(db_url).revision() == (HEAD, HEAD)
    async with Store(db_url).open() as store:  # a second open finds head and changes nothing
        assert [s.id for s in await store.list_servers()] == [server.id]
    assert await versions(db_url) == [HEAD]


async def test_a_new_database_is_created_at_head_without_importing_alembic(db_url: str) -> None:
    """A first start builds the tables from the metadata and stamps head (Alembic's recipe for a
    new database) instead of importing Alembic and replaying every revision; Alembic reads it."""
    script = (
        "import sys, anyio\n"
        "from manifold.store import Store\n"
        "async def main():\n"
        "    async with Store(sys.argv[1]).open() as store:\n"
        "        await store.create_server('alpha', {'mcp_server_type': 'streamable_http', 'server_url': 'http://127.0.0.1:1/mcp'})\n"
        "anyio.run(main)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))\n"
    )
    done = subprocess.run([PYTHON, "-c", script, db_url], env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"  # (structlog, not set up here, logs to stdout before it)
    async with connect(db_url) as conn:
        assert await conn.run_sync(lambda sync: MigrationContext.configure(
            sync, opts={"version_table": migrations.VERSION_TABLE}).get_current_heads()) == (HEAD,)
    assert await differences(db_url) == []
    async with Store(db_url).open() as store:
        assert [s.server_name for s in await store.list_servers()] == ["alpha"]


async def test_a_missing_sqlite_file_is_not_created_by_asking_its_revision(tmp_path: Any) -> None:
    path = tmp_path / "none" / "m.db"
    assert await Store(f"sqlite+aiosqlite:///{path}").revision() == (None, HEAD)
    assert not path.parent.exists()


async def test_the_migrations_at_head_match_the_metadata(db_url: str) -> None:
    """A change to `store.metadata` without a migration (or the reverse) fails here; so does a new
    revision without `migrations.HEAD` (the fast path that skips Alembic) moved to it."""
    assert migrations.HEAD == migrations.head()
    path = default_sqlite_path(db_url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    async with connect(db_url) as conn:  # the revisions alone, not the shortcut a new store takes
        assert await conn.run_sync(migrations.upgrade) == (None, HEAD)
    assert await differences(db_url) == []
    # The comparison does see a difference: the metadata with one more column than the migrations.
    changed = MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.sorted_tables:
        table.to_metadata(changed)
    changed.tables["tools"].append_column(Column("extra", Text, nullable=True))
    assert [d[0] for d in await differences(db_url, changed)] == ["add_column"]


@pytest.mark.parametrize("with_listings", [False, True], ids=["0001-era", "0002-era"])
async def test_a_database_from_before_migrations_is_upgraded_in_place(
    db_url: str, with_listings: bool
) -> None:
    await make_legacy_database(db_url, with_listings)
    era = "0002" if with_listings else "0001"
    assert await Store(db_url).revision() == (era, HEAD)
    async with Store(db_url).open() as store:
        servers = [(s.id, s.server_name, s.config) for s in await store.list_servers()]
        assert servers == [(SERVER_ID, "alpha", HTTP)]
        assert {t.name: t.id for t in await store.list_tools(SERVER_ID)} == TOOL_IDS
        # The constraints still hold: the same listing again keeps every id, and changes nothing.
        empty = {"type": "object", "properties": {}}
        same = [{"name": n, "description": n, "inputSchema": empty} for n in TOOL_IDS]
        assert not await store.sync_tools(SERVER_ID, same)
        assert await store.get_listing(SERVER_ID) == (LISTING if with_listings else None)
        await store.save_listing(SERVER_ID, {"tools": []})  # server_listings is there either way
        assert await store.get_listing(SERVER_ID) == {"tools": []}
    assert await versions(db_url) == [HEAD]
    assert await differences(db_url) == []


@pytest.mark.parametrize("legacy", [False, True], ids=["new", "before-migrations"])
async def test_replicas_opening_one_database_at_once_migrate_it_once(pg_cluster: Any, legacy: bool) -> None:
    """Five stores open one PostgreSQL database together: all wait for the lock, one migrates, all work."""
    url = pg_cluster.create_database()
    if legacy:
        await make_legacy_database(url, with_listings=False)
    holder = create_async_engine(url, isolation_level="AUTOCOMMIT")
    stores = [Store(url) for _ in range(5)]
    try:
        async with holder.connect() as lock, contextlib.AsyncExitStack() as stack:
            await lock.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})

            async def open_one(store: Store) -> None:
                await stack.enter_async_context(store.open())

            async with anyio.create_task_group() as tg:
                for store in stores:
                    tg.start_soon(open_one, store)
                # Every store is queued on the migration lock before any of them may migrate.
                with anyio.fail_after(20):
                    while await waiting_for_lock(lock) < len(stores):
                        await anyio.sleep(0.02)
                assert migrations.VERSION_TABLE not in await tables(url)  # nobody migrated meanwhile
                await lock.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
            assert await versions(url) == [HEAD]
            expected = [SERVER_ID] if legacy else []
            for store in stores:
                assert [s.id for s in await store.list_servers()] == expected
            created = await stores[0].create_server("beta", HTTP)
            for store in stores:
                assert [s.id for s in await store.list_servers()] == [*expected, created.id]
    finally:
        await holder.dispose()


async def waiting_for_lock(conn: AsyncConnection) -> int:
    """How many sessions of this database wait for an advisory lock."""
    query = text(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        "WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()"
    )
    return int((await conn.execute(query)).scalar_one())


async def tables(url: str) -> list[str]:
    async with connect(url) as conn:
        return await conn.run_sync(lambda sync: inspect(sync).get_table_names())


async def test_a_database_from_a_newer_manifold_is_refused_untouched(db_url: str) -> None:
    async with Store(db_url).open() as store:
        await store.create_server("alpha", HTTP)
    async with connect(db_url) as conn:  # what a newer Manifold would have left
        await conn.execute(text("UPDATE manifold_alembic_version SET version_num = '0999'"))
        await conn.execute(text("CREATE TABLE future_things (id INTEGER PRIMARY KEY)"))
    before = await snapshot(db_url)
    url = db_url
    if make_url(db_url).get_backend_name() == "postgresql":  # trust auth: any password is accepted
        url = make_url(db_url).set(password="hunter2").render_as_string(hide_password=False)
    shown = make_url(url).render_as_string(hide_password=True)
    with pytest.raises(StoreError) as refused:
        async with Store(url).open():
            pytest.fail("a newer database was opened")
    assert str(refused.value) == (
        f"the database at {shown} is at schema revision 0999, newer than this Manifold knows "
        f"(head {HEAD}): upgrade Manifold"
    )
    assert "hunter2" not in str(refused.value)
    assert await snapshot(db_url) == before
    assert await Store(url).revision() == ("0999", HEAD)


def manifold(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "manifold", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=subprocess_env(),
        stdin=subprocess.DEVNULL,
        check=False,
    )


async def test_db_verbs_report_and_upgrade_ahead_of_serve(tmp_path: Any) -> None:
    """`manifold db current` changes nothing; `manifold db upgrade` migrates an older database once."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    await make_legacy_database(url, with_listings=False)
    before = await snapshot(url)
    current = await anyio.to_thread.run_sync(manifold, "db", "current", "--db", url)
    assert current.returncode == 0, current.stderr
    behind = f"at revision 0001, behind head {HEAD}: `manifold db upgrade` migrates it"
    assert current.stdout.strip() == f"{url}: {behind}"
    assert await snapshot(url) == before
    upgraded = await anyio.to_thread.run_sync(manifold, "db", "upgrade", "--db", url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.strip() == f"{url}: upgraded from revision 0001 to {HEAD} (head)"
    again = await anyio.to_thread.run_sync(manifold, "db", "upgrade", "--db", url)
    assert again.stdout.strip() == f"{url}: at revision {HEAD} (head), nothing to do"
    assert await versions(url) == [HEAD]
    async with connect(url) as conn:
        await conn.execute(text("UPDATE manifold_alembic_version SET version_num = '0999'"))
    newer = await anyio.to_thread.run_sync(manifold, "db", "current", "--db", url)
    assert newer.returncode == 1
    assert newer.stdout.strip() == f"{url}: at revision 0999, newer than this Manifold knows (head {HEAD})"
    refused = await anyio.to_thread.run_sync(manifold, "db", "upgrade", "--db", url)
    assert refused.returncode == 1 and "newer than this Manifold knows" in refused.stderr


RECREATE_SERVERS = '''
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"


def upgrade(op):
    with op.batch_alter_table("mcp_servers", recreate="always") as batch:
        batch.add_column(sa.Column("note", sa.Text(), nullable=True))
'''

ORPHAN_TOOLS = '''
revision = "0003"
down_revision = "0002"


def upgrade(op):
    op.execute("DELETE FROM mcp_servers")
'''


def with_revision_0003(monkeypatch: pytest.MonkeyPatch, folder: Any, source: str) -> None:
    """The shipped revisions plus a 0003 of the test's own, as the store's migrations."""
    shipped = migrations.script()
    (folder / "versions").mkdir(parents=True)
    for revision in shipped.walk_revisions():
        (folder / "versions" / Path(revision.path).name).write_text(Path(revision.path).read_text())
    (folder / "versions" / "0003_test.py").write_text(source)
    monkeypatch.setattr(migrations, "script", lambda: ScriptDirectory(str(folder)))
    monkeypatch.setattr(migrations, "HEAD", "0003")  # as the release that ships 0003 says


async def test_a_sqlite_batch_migration_of_the_servers_keeps_their_tools(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recreating `mcp_servers` (SQLite's ALTER) must not cascade-delete its tools and listings."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    await make_legacy_database(url, with_listings=True)
    with_revision_0003(monkeypatch, tmp_path / "migrations", RECREATE_SERVERS)
    async with Store(url).open() as store:
        assert {t.name: t.id for t in await store.list_tools(SERVER_ID)} == TOOL_IDS
        assert await store.get_listing(SERVER_ID) == LISTING
        async with store.engine.connect() as conn:  # and foreign keys are back on afterwards
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar_one() == 1
    assert await versions(url) == ["0003"]
    assert "note" in [c for c in (await snapshot(url))["mcp_servers"][0]]


async def test_a_sqlite_migration_that_orphans_rows_is_rolled_back(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    async with Store(url).open() as store:
        server = await store.create_server("alpha", HTTP)
        await store.sync_tools(server.id, [{"name": "echo"}])
    before = await snapshot(url)
    with_revision_0003(monkeypatch, tmp_path / "migrations", ORPHAN_TOOLS)
    with pytest.raises(StoreError, match="the migration to 0003 leaves rows of tools with no parent"):
        async with Store(url).open():
            pytest.fail("opened")
    assert await snapshot(url) == before


async def test_another_applications_alembic_version_is_left_alone(db_url: str) -> None:
    """A database shared with another Alembic-managed application: its version table is not ours."""
    path = default_sqlite_path(db_url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    async with connect(db_url) as conn:
        await conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
        await conn.execute(text("INSERT INTO alembic_version VALUES ('0001')"))
    async with Store(db_url).open() as store:
        await store.create_server("alpha", HTTP)
    assert await versions(db_url) == [HEAD]
    async with connect(db_url) as conn:
        theirs = await conn.execute(text("SELECT version_num FROM alembic_version"))
        assert list(theirs.scalars()) == ["0001"]
