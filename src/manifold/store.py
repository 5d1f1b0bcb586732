"""The store: servers registered through the API and every tool record, with stable ids.

SQLAlchemy 2 Core on an async engine; SQLite through `aiosqlite` by default,
PostgreSQL (or anything SQLAlchemy speaks) with another URL. Nothing here is
SQLite-specific except two connection settings guarded by dialect.

Every write is one transaction. Names are unique in the database itself, so
two concurrent writers that race for one name get `NameTaken`, never a lost
row; tool rows are unique per (server, tool name), which is also what keeps
their ids stable across restarts and refreshes.

The schema is Alembic's: on open the store upgrades the database to the
newest revision in `manifold.migrations` (a new database is created, one made
by an earlier Manifold before migrations existed is stamped and upgraded in
place, one made by a newer Manifold is refused untouched). `metadata` below is
what the revisions add up to; a test keeps the two equal, and constraints carry
explicit names (`NAMING_CONVENTION`) so migrations can name what they change.
On PostgreSQL several replicas may open one database at once: the migration
runs in one transaction under a transaction-scoped advisory lock, so exactly
one of them migrates and the others wait, then find the head already there.

On PostgreSQL the store also carries change events between replicas:
`notify` publishes on a channel (LISTEN/NOTIFY) and `listen` delivers what
every replica publishes; other dialects have no channel (both are no-ops).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import structlog
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
    delete,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from manifold import migrations

SERVER_ID_PREFIX = "mcp_server-"
TOOL_ID_PREFIX = "tool-"
SOURCES = ("api", "config")
CHANNEL = "manifold_changes"
MIGRATION_LOCK = 0x6D616E69  # "mani": the advisory lock key for migrations

log = structlog.get_logger("manifold.store")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

mcp_servers = Table(
    "mcp_servers",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("server_name", String(255), nullable=False),
    Column("source", String(16), nullable=False),
    Column("config", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("server_name"),
)

tools = Table(
    "tools",
    metadata,
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

# The last lists a server gave (tools, prompts, resources, capabilities): what a
# lazy server is listed from while it is not running (revision 0002).
server_listings = Table(
    "server_listings",
    metadata,
    Column("server_id", String(64), ForeignKey("mcp_servers.id", ondelete="CASCADE"), primary_key=True),
    Column("listing", JSON, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


class StoreError(Exception):
    pass


class NameTaken(StoreError):
    """Another server already has this name; `existing` is it (None if it vanished meanwhile)."""

    def __init__(self, name: str, existing: ServerRecord | None) -> None:
        self.name = name
        self.existing = existing
        super().__init__(f"an MCP server named {name!r} already exists")


class NotFound(StoreError):
    pass


class Stale(StoreError):
    """The row changed since it was read."""


@dataclass(frozen=True)
class ServerRecord:
    id: str
    server_name: str
    source: str
    config: dict[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ToolRecord:
    id: str
    server_id: str
    name: str
    description: str | None
    json_schema: dict[str, Any]
    raw: dict[str, Any]


@dataclass
class ToolDiff:
    """What a sync changed, by tool name (the body of Letta's refresh response)."""

    deleted: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.deleted or self.updated or self.added)

    def as_dict(self) -> dict[str, list[str]]:
        return {"deleted": self.deleted, "updated": self.updated, "added": self.added}


def new_server_id() -> str:
    return f"{SERVER_ID_PREFIX}{uuid.uuid4()}"


def new_tool_id() -> str:
    return f"{TOOL_ID_PREFIX}{uuid.uuid4()}"


def _now() -> datetime:
    return datetime.now(UTC)


def tool_json_schema(tool: Mapping[str, Any]) -> dict[str, Any]:
    """Letta's `json_schema` for an MCP tool: `{name, description, parameters}`.

    `parameters` is the upstream `inputSchema` as the upstream wrote it (Letta
    rewrites it and adds `request_heartbeat`; a gateway should not).
    """
    parameters = tool.get("inputSchema")
    if not isinstance(parameters, dict):
        parameters = {"type": "object", "properties": {}}
    return {"name": tool.get("name"), "description": tool.get("description"), "parameters": parameters}


def default_sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL (None for memory databases and other dialects)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def normalize_url(url: str) -> str:
    """A plain `postgresql://` (or `postgres://`) URL means the async driver, asyncpg."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+asyncpg://" + url[len(plain):]
    return url


def _install_sqlite_hooks(engine: AsyncEngine) -> None:
    """SQLite only: enforce foreign keys and make transactions real.

    Python's sqlite3 module starts transactions lazily (only before DML), so a
    read-then-write would not be atomic. The driver's own handling is switched
    off and every transaction starts with BEGIN IMMEDIATE: writers queue on the
    database lock (bounded by the busy timeout) instead of failing half-way.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_foreign_keys(conn: Any, on: bool) -> None:
    """Switch SQLite's foreign keys on this connection, outside any transaction (on the driver itself)."""
    cursor = conn.connection.dbapi_connection.cursor()
    cursor.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
    cursor.close()


def _server(row: Any) -> ServerRecord:
    return ServerRecord(
        id=row.id,
        server_name=row.server_name,
        source=row.source,
        config=dict(row.config or {}),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _tool(row: Any) -> ToolRecord:
    return ToolRecord(
        id=row.id,
        server_id=row.server_id,
        name=row.name,
        description=row.description,
        json_schema=dict(row.json_schema or {}),
        raw=dict(row.raw or {}),
    )


class Store:
    """Servers and tools in one database; open with `async with Store(url).open()`."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = normalize_url(url)
        self._echo = echo
        self._engine: AsyncEngine | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the store is not open")
        return self._engine

    @property
    def dialect(self) -> str:
        return make_url(self.url).get_backend_name()

    @property
    def shown_url(self) -> str:
        """The URL with its password masked, for messages."""
        return make_url(self.url).render_as_string(hide_password=True)

    @asynccontextmanager
    async def _connected(self) -> AsyncIterator[AsyncEngine]:
        """The engine for this URL (SQLite: its folder made, hooks installed), disposed on exit."""
        path = default_sqlite_path(self.url)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot open the store {self.shown_url}: {exc}") from exc
        kwargs: dict[str, Any] = {"echo": self._echo}
        if self.dialect == "sqlite":
            kwargs["connect_args"] = {"timeout": 30}
        try:
            engine = create_async_engine(self.url, **kwargs)
        except Exception as exc:  # e.g. the driver for this URL is not installed
            raise StoreError(f"cannot open the store {self.shown_url}: {exc}") from exc
        if self.dialect == "sqlite":
            _install_sqlite_hooks(engine)
        try:
            yield engine
        finally:
            with anyio.CancelScope(shield=True):
                await engine.dispose()

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Store]:
        """Connect and bring the schema to head (see the module docstring); closed on exit."""
        async with self._connected() as engine:
            self._engine = engine
            try:
                await self._migrate(engine)
                yield self
            finally:
                self._engine = None

    async def upgrade(self) -> tuple[str | None, str]:
        """Bring the schema to head and close (`manifold db upgrade`); returns (revision before, head)."""
        async with self._connected() as engine:
            return await self._migrate(engine)

    async def _migrate(self, engine: AsyncEngine) -> tuple[str | None, str]:
        """Upgrade to head in one transaction; on PostgreSQL under the advisory lock.

        On SQLite foreign keys are off while it runs (the pragma cannot change
        inside a transaction): a batch migration recreates a table by copy, drop
        and rename, and dropping `mcp_servers` with them on would cascade-delete
        every tool. They are checked before the commit instead.
        """
        try:
            with self._to_the_end():
                async with engine.connect() as conn:
                    if self.dialect != "sqlite":
                        before, head = await self._upgrade_in(conn)
                    else:
                        await conn.run_sync(_sqlite_foreign_keys, False)
                        try:
                            before, head = await self._upgrade_in(conn)
                        finally:
                            await conn.run_sync(_sqlite_foreign_keys, True)
        except migrations.SchemaTooNew as exc:
            raise StoreError(
                f"the database at {self.shown_url} is at schema revision {exc.revision}, newer than this "
                f"Manifold knows (head {exc.head}): upgrade Manifold"
            ) from None
        except Exception as exc:
            raise StoreError(f"cannot open the store {self.shown_url}: {exc}") from exc
        if before != head:
            log.info("store schema upgraded", store=self.shown_url, revision=head, previous=before)
        return before, head

    async def _upgrade_in(self, conn: AsyncConnection) -> tuple[str | None, str]:
        """One transaction: the lock (PostgreSQL), the migrations, the foreign key check (SQLite)."""
        async with conn.begin():
            if self.dialect == "postgresql":
                # One replica migrates; the others wait here until it commits.
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            before, head = await conn.run_sync(migrations.upgrade, metadata)
            if self.dialect == "sqlite":
                broken = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).first()
                if broken is not None:
                    raise StoreError(f"the migration to {head} leaves rows of {broken[0]} with no parent")
        return before, head

    async def revision(self) -> tuple[str | None, str]:
        """(the database's schema revision or None if it has none, this Manifold's head); changes nothing."""
        path = default_sqlite_path(self.url)
        if path is not None and not path.exists():
            return None, migrations.head()
        async with self._connected() as engine:
            try:
                with self._to_the_end():
                    async with engine.connect() as conn:
                        current = await conn.run_sync(migrations.current)
            except Exception as exc:
                raise StoreError(f"cannot open the store {self.shown_url}: {exc}") from exc
        return current, migrations.head()

    # --- change events between processes (PostgreSQL) ----------------------------

    @property
    def shared(self) -> bool:
        """Whether other processes may share this store and hear its events."""
        return self.dialect == "postgresql"

    async def notify(self, payload: str) -> None:
        """Publish `payload` to every process listening on this store (PostgreSQL only)."""
        if not self.shared:
            return
        async with self._tx() as conn:
            await conn.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": CHANNEL, "payload": payload})

    async def listen(self, on_event: Any, *, retry: float = 1.0) -> None:
        """Call `on_event(payload)` for every event published on this store; runs until cancelled.

        Holds one pooled connection with asyncpg's listener on it. When that
        connection is lost it reconnects (every `retry` seconds) and calls
        `on_event(None)`: events may have been missed, the caller reconciles.
        """
        if not self.shared:
            await anyio.sleep_forever()
        while True:
            try:
                async with self.engine.connect() as conn:
                    raw = (await conn.get_raw_connection()).driver_connection
                    lost = anyio.Event()

                    def deliver(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
                        on_event(payload)

                    raw.add_termination_listener(lambda _conn, lost=lost: lost.set())
                    await raw.add_listener(CHANNEL, deliver)
                    on_event(None)
                    try:
                        while not lost.is_set() and not raw.is_closed():
                            with anyio.move_on_after(retry):
                                await lost.wait()
                    finally:
                        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                            if not raw.is_closed():
                                await raw.remove_listener(CHANNEL, deliver)
                    log.warning("store listener connection lost; reconnecting")
            except Exception as exc:  # noqa: BLE001 - the database is away: retry
                log.warning("store listener cannot connect; retrying", error=str(exc))
            await anyio.sleep(retry)

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncConnection]:
        with self._to_the_end():
            async with self.engine.begin() as conn:
                yield conn

    def _to_the_end(self) -> anyio.CancelScope:
        """On SQLite a database operation, once begun, runs to its end even when its caller is cancelled.

        aiosqlite does not take cancellation mid-operation: SQLAlchemy then closes the
        connection from a task of its own that waits forever on the driver's stopped
        thread, and asyncio's shutdown waits for that task (a gateway that did not exit
        on SIGINT). A local operation is short (at worst the busy timeout), so it finishes.
        """
        return anyio.CancelScope(shield=self.dialect == "sqlite")

    # --- servers -------------------------------------------------------------------

    async def list_servers(self) -> list[ServerRecord]:
        async with self._tx() as conn:
            rows = await conn.execute(
                select(mcp_servers).order_by(mcp_servers.c.created_at, mcp_servers.c.id)
            )
            return [_server(r) for r in rows]

    async def get_server(self, server_id: str) -> ServerRecord | None:
        async with self._tx() as conn:
            return await self._get(conn, server_id)

    async def get_server_by_name(self, name: str) -> ServerRecord | None:
        async with self._tx() as conn:
            row = (await conn.execute(select(mcp_servers).where(mcp_servers.c.server_name == name))).first()
            return _server(row) if row else None

    async def _get(self, conn: AsyncConnection, server_id: str, *, lock: bool = False) -> ServerRecord | None:
        query = select(mcp_servers).where(mcp_servers.c.id == server_id)
        if lock:
            query = query.with_for_update()
        row = (await conn.execute(query)).first()
        return _server(row) if row else None

    async def _name_taken(self, name: str) -> NameTaken:
        return NameTaken(name, await self.get_server_by_name(name))

    async def create_server(
        self, name: str, config: Mapping[str, Any], *, source: str = "api"
    ) -> ServerRecord:
        """Insert a server; `NameTaken` if the name is in use (the other row is untouched)."""
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}")
        now = _now()
        values = {
            "id": new_server_id(),
            "server_name": name,
            "source": source,
            "config": dict(config),
            "created_at": now,
            "updated_at": now,
        }
        try:
            async with self._tx() as conn:
                await conn.execute(insert(mcp_servers).values(**values))
        except IntegrityError:
            raise await self._name_taken(name) from None
        return ServerRecord(**values)

    async def update_server(
        self,
        server_id: str,
        *,
        server_name: str | None = None,
        config: Mapping[str, Any] | None = None,
        source: str | None = None,
        expect: ServerRecord | None = None,
    ) -> ServerRecord:
        """Change a server's name, config or source in one transaction.

        With `expect` (the record the change was computed from), `Stale` is
        raised if another writer changed the row meanwhile: the caller reads
        again and recomputes, so no update is lost.
        """
        values: dict[str, Any] = {"updated_at": _now()}
        if server_name is not None:
            values["server_name"] = server_name
        if config is not None:
            values["config"] = dict(config)
        if source is not None:
            if source not in SOURCES:
                raise ValueError(f"source must be one of {SOURCES}")
            values["source"] = source
        try:
            async with self._tx() as conn:
                current = await self._get(conn, server_id, lock=True)
                if current is None:
                    raise NotFound(server_id)
                if expect is not None and (current.server_name, current.config) != (
                    expect.server_name,
                    expect.config,
                ):
                    raise Stale(server_id)
                await conn.execute(update(mcp_servers).where(mcp_servers.c.id == server_id).values(**values))
                record = await self._get(conn, server_id)
        except IntegrityError:
            raise await self._name_taken(server_name or "") from None
        assert record is not None
        return record

    async def delete_server(self, server_id: str) -> ServerRecord | None:
        """Delete a server and its tool rows; returns what was deleted (None if nothing)."""
        async with self._tx() as conn:
            record = await self._get(conn, server_id, lock=True)
            if record is None:
                return None
            await conn.execute(delete(tools).where(tools.c.server_id == server_id))
            await conn.execute(delete(server_listings).where(server_listings.c.server_id == server_id))
            await conn.execute(delete(mcp_servers).where(mcp_servers.c.id == server_id))
            return record

    async def upsert_config_server(
        self, name: str, config: Mapping[str, Any]
    ) -> tuple[ServerRecord, str | None]:
        """Record a config-file server by name, keeping its id across restarts.

        Returns the record and the source it had before (None if it is new):
        a row of source "api" with the same name is taken over by the file.
        """
        for _ in range(3):
            async with self._tx() as conn:
                row = (
                    await conn.execute(
                        select(mcp_servers).where(mcp_servers.c.server_name == name).with_for_update()
                    )
                ).first()
                if row is not None:
                    await conn.execute(
                        update(mcp_servers)
                        .where(mcp_servers.c.id == row.id)
                        .values(config=dict(config), source="config", updated_at=_now())
                    )
                    record = await self._get(conn, row.id)
                    assert record is not None
                    return record, row.source
            try:
                return await self.create_server(name, config, source="config"), None
            except NameTaken:
                continue  # another process inserted it meanwhile: take the update path
        raise StoreError(f"could not record config server {name!r}")  # pragma: no cover

    # --- tools ----------------------------------------------------------------------

    async def list_tools(self, server_id: str) -> list[ToolRecord]:
        async with self._tx() as conn:
            rows = await conn.execute(
                select(tools).where(tools.c.server_id == server_id).order_by(tools.c.created_at, tools.c.name)
            )
            return [_tool(r) for r in rows]

    async def get_tool(self, server_id: str, tool_id: str) -> ToolRecord | None:
        async with self._tx() as conn:
            row = (
                await conn.execute(select(tools).where(tools.c.id == tool_id, tools.c.server_id == server_id))
            ).first()
            return _tool(row) if row else None

    async def count_tools(self) -> dict[str, int]:
        async with self._tx() as conn:
            rows = await conn.execute(select(tools.c.server_id, func.count()).group_by(tools.c.server_id))
            return {server_id: count for server_id, count in rows}

    async def sync_tools(self, server_id: str, listing: Sequence[Mapping[str, Any]]) -> ToolDiff:
        """Make the server's tool rows match an upstream listing, matched by tool name.

        Known names keep their ids; gone names are deleted; a tool whose
        description, schema or raw entry changed is updated. Raises NotFound
        if the server is gone (a sync racing a delete writes nothing).
        """
        wanted: dict[str, dict[str, Any]] = {}
        for tool in listing:
            name = tool.get("name")
            if isinstance(name, str) and name not in wanted:
                wanted[name] = dict(tool)
        diff = ToolDiff()
        try:
            async with self._tx() as conn:
                if await self._get(conn, server_id, lock=True) is None:
                    raise NotFound(server_id)
                rows = await conn.execute(select(tools).where(tools.c.server_id == server_id))
                existing = {row.name: _tool(row) for row in rows}
                now = _now()
                gone = [name for name in existing if name not in wanted]
                if gone:
                    await conn.execute(
                        delete(tools).where(tools.c.server_id == server_id, tools.c.name.in_(gone))
                    )
                    diff.deleted = sorted(gone)
                new_rows = []
                for name, tool in wanted.items():
                    schema = tool_json_schema(tool)
                    description = tool.get("description")
                    if not isinstance(description, str):
                        description = None
                    old = existing.get(name)
                    if old is None:
                        new_rows.append(
                            {
                                "id": new_tool_id(),
                                "server_id": server_id,
                                "name": name,
                                "description": description,
                                "json_schema": schema,
                                "raw": tool,
                                "created_at": now,
                                "updated_at": now,
                            }
                        )
                        diff.added.append(name)
                    elif (old.description, old.json_schema, old.raw) != (description, schema, tool):
                        await conn.execute(
                            update(tools)
                            .where(tools.c.id == old.id)
                            .values(description=description, json_schema=schema, raw=tool, updated_at=now)
                        )
                        diff.updated.append(name)
                if new_rows:
                    await conn.execute(insert(tools), new_rows)
        except IntegrityError as exc:
            # Only a concurrent delete of the server (foreign key) can get here:
            # tool names are unique per server and this transaction holds the row.
            raise NotFound(server_id) from exc
        return diff

    async def delete_tools(self, server_id: str, names: Iterable[str] | None = None) -> None:
        async with self._tx() as conn:
            query = delete(tools).where(tools.c.server_id == server_id)
            if names is not None:
                query = query.where(tools.c.name.in_(list(names)))
            await conn.execute(query)

    # --- cached lists -----------------------------------------------------------------

    async def get_listing(self, server_id: str) -> dict[str, Any] | None:
        """The lists last recorded for a server (None if it never listed)."""
        async with self._tx() as conn:
            row = (
                await conn.execute(select(server_listings.c.listing).where(server_listings.c.server_id == server_id))
            ).first()
            return dict(row.listing) if row and isinstance(row.listing, dict) else None

    async def save_listing(self, server_id: str, listing: Mapping[str, Any]) -> None:
        """Record a server's lists (replacing the last ones); NotFound if the server is gone."""
        values = {"listing": dict(listing), "updated_at": _now()}
        for _ in range(2):
            try:
                async with self._tx() as conn:
                    if await self._get(conn, server_id, lock=True) is None:
                        raise NotFound(server_id)
                    done = await conn.execute(
                        update(server_listings).where(server_listings.c.server_id == server_id).values(**values)
                    )
                    if done.rowcount == 0:
                        await conn.execute(insert(server_listings).values(server_id=server_id, **values))
                return
            except IntegrityError:
                continue  # inserted meanwhile by another writer: update it
        raise StoreError(f"could not record the lists of server {server_id}")  # pragma: no cover
