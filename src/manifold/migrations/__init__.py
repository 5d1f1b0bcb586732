"""Schema migrations of the store: Alembic, driven through its API (no alembic.ini, no env.py).

`upgrade(conn)` brings a database to the newest revision in `versions/`. The
store calls it on open, inside the transaction that (on PostgreSQL) holds the
advisory lock, so one replica migrates while the others wait and then find
the head already there.

Revisions are forward-only and frozen: each file spells its tables and
constraint names out instead of importing `manifold.store`, so a later change
to the metadata cannot rewrite history. Each `upgrade(op)` is handed its own
`Operations` rather than using the global `alembic.op` proxy, which two stores
migrating at once in one process would overwrite. An ALTER that SQLite cannot
do goes through `op.batch_alter_table` (the table recreated by copy, drop and
rename); the store runs migrations on SQLite with foreign keys off, so that
drop cascades nowhere, and checks them before it commits.

To add a revision: a new `versions/NNNN_what.py` with `revision`,
`down_revision` = the previous head and `upgrade(op)`, then the change to
`manifold.store.metadata`; `tests/test_migrations.py` fails until both agree.

Databases made before migrations existed (tables created by `create_all`, no
version table) are recognised by their tables and stamped with the revision
they match, then upgraded like any other. An empty database is built from the
store's metadata and stamped at head, as Alembic's own recipe for a new
database goes, without importing Alembic at all (a first start is ~0.5 s
faster); tests/test_migrations.py holds that metadata to the revisions.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, Connection, MetaData, PrimaryKeyConstraint, String, Table, inspect, text

if TYPE_CHECKING:  # Alembic is imported only when a database is not at HEAD already
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

# Not Alembic's default name: a database shared with another Alembic-managed application
# keeps both version tables apart (their "0001" is not ours).
VERSION_TABLE = "manifold_alembic_version"

HEAD = "0002"
"""The newest revision in `versions/` (tests/test_migrations.py holds it to Alembic's view): a
database already there is opened without importing Alembic (~10 MB and ~0.1 s per start)."""

# What a database from before migrations holds, newest first: the tables that
# mark a revision. Frozen, like the revisions themselves.
_UNVERSIONED = (("0002", {"mcp_servers", "tools", "server_listings"}), ("0001", {"mcp_servers", "tools"}))


class SchemaTooNew(Exception):
    """The database is at a revision this version does not know: a newer Manifold made it."""

    def __init__(self, revision: str, head: str) -> None:
        self.revision = revision
        self.head = head
        super().__init__(f"schema revision {revision} is newer than head {head}")


@cache
def script() -> ScriptDirectory:
    """The revisions shipped in this package (`versions/`)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(Path(__file__).parent))


def head() -> str:
    revision = script().get_current_head()
    assert revision is not None
    return revision


def known(revision: str) -> bool:
    """Whether `revision` is one of ours (else a newer Manifold wrote it)."""
    return any(s.revision == revision for s in script().walk_revisions())


def _context(conn: Connection, **opts: Any) -> MigrationContext:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn, opts={"script": script(), "version_table": VERSION_TABLE, **opts})


def unversioned_revision(conn: Connection) -> str | None:
    """For a database with our tables but no version table: the revision its tables match."""
    tables = set(inspect(conn).get_table_names())
    if VERSION_TABLE in tables:
        return None
    for revision, marks in _UNVERSIONED:
        if marks <= tables:
            return revision
    return None


def current(conn: Connection) -> str | None:
    """The revision the database is at (from its tables if it predates migrations); None if empty."""
    heads = _context(conn).get_current_heads()
    if heads:
        return heads[0]
    return unversioned_revision(conn)


def _recorded(conn: Connection) -> str | None:
    """The one revision the version table holds, read without Alembic; None otherwise."""
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    return rows[0] if len(rows) == 1 else None


def _version_table() -> Table:
    """The version table as Alembic creates it (a later Alembic upgrade reads and moves it)."""
    return Table(
        VERSION_TABLE,
        MetaData(),
        Column("version_num", String(32), nullable=False),
        PrimaryKeyConstraint("version_num", name=f"{VERSION_TABLE}_pkc"),
    )


def _create_at_head(conn: Connection, schema: MetaData) -> bool:
    """An empty database (none of our tables, no version table): `schema` created, stamped at HEAD."""
    if set(inspect(conn).get_table_names()) & {VERSION_TABLE, *schema.tables}:
        return False
    schema.create_all(conn)
    version = _version_table()
    version.create(conn)
    conn.execute(version.insert().values(version_num=HEAD))
    return True


def upgrade(conn: Connection, schema: MetaData | None = None) -> tuple[str | None, str]:
    """Bring the database to head in the caller's transaction; returns (revision before, head).

    `schema` is the store's metadata at HEAD: an empty database is created from
    it directly. Raises `SchemaTooNew`, having changed nothing, if the database
    is at a revision these migrations do not know.
    """
    if _recorded(conn) == HEAD:
        return HEAD, HEAD
    if schema is not None and _create_at_head(conn, schema):
        return None, HEAD
    from alembic.operations import Operations

    target = head()
    context = _context(conn)
    before = context.get_current_heads()
    for revision in before:
        if not known(revision):
            raise SchemaTooNew(revision, target)
    if not before:
        stamp = unversioned_revision(conn)
        if stamp is not None:
            context.stamp(script(), stamp)
            before = (stamp,)
    start = before[0] if before else None
    if start == target:
        return start, target

    def steps(heads: Any, _ctx: MigrationContext) -> Any:
        return script()._upgrade_revs(target, heads)  # what `alembic upgrade` itself does

    context = _context(conn, fn=steps)
    context.run_migrations(op=Operations(context))
    return start, target
