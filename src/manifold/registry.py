"""The management layer: servers and tools as the API sees them, kept in step with the Gateway.

The Registry sits between the REST face and Gateway + Store. It owns the
rules of the management API (Letta's semantics, minus its faults):

- servers created through the API are stored, then started in the gateway;
  on start every stored API server is started again and every config-file
  server is recorded by name (so its id, and its tools' ids, never change);
- tool records follow the upstream listings: on every (re)connect or
  list_changed through a gateway listener, and on refresh, which returns
  what changed by tool name;
- a name is taken by one server only: a clash is a `NameConflict`, never a
  deleted server; config-file servers are read-only here;
- updates reconnect with the new settings (the old session and process are
  gone first); deletes disconnect and drop the tool rows.

Nothing here speaks HTTP: errors are exceptions the REST face maps to codes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, INTERNAL_ERROR, REQUEST_TIMEOUT
from pydantic import ValidationError

from manifold.config import SERVER_CONFIG, ManifoldOptions, ServerConfig, StdioServerConfig, describe_errors
from manifold.gateway import Gateway
from manifold.logging import MASK, masker
from manifold.store import NameTaken, NotFound, ServerRecord, Stale, Store, ToolDiff, ToolRecord
from manifold.upstream.connection import State, Upstream

log = structlog.get_logger("manifold.registry")

CREATE_WAIT = 30.0
"""Upper bound (seconds) on how long create/update wait for the first connection."""

LOAD_WAIT = 10.0
"""Upper bound (seconds) a lazy server waits for the store before it is started once to list."""
RECONCILE_INTERVAL = 5.0
"""Seconds between two full comparisons of the running servers with a shared store (the safety net
under LISTEN/NOTIFY: an event lost while the listening connection was down is caught here)."""

# Keys an update may send as null to mean "leave as is" (Letta declares them
# required-but-nullable); any other key sent as null is cleared (back to its default).
_KEEP_IF_NULL = frozenset({"mcp_server_type", "command", "args", "server_url"})
_MANIFOLD_KEYS = tuple(ManifoldOptions.model_fields)


# --- errors (the REST face maps each to a status code) --------------------------------


class RegistryError(Exception):
    def __init__(self, detail: str) -> None:
        self.detail = masker.mask(detail)
        super().__init__(self.detail)


class ServerNotFound(RegistryError):
    pass


class ToolNotFound(RegistryError):
    pass


class NameConflict(RegistryError):
    pass


class ReadOnlyServer(RegistryError):
    pass


class ServerDisabled(RegistryError):
    pass


class StdioForbidden(RegistryError):
    pass


class UpstreamUnavailable(RegistryError):
    pass


class UpstreamTimeout(RegistryError):
    pass


class InvalidConfig(RegistryError):
    """Field errors in pydantic's shape (`loc`, `msg`, `type`), locations relative to `config`."""

    def __init__(self, errors: list[dict[str, Any]], lines: list[str]) -> None:
        self.errors = errors
        super().__init__("; ".join(lines))


# --- views -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerView:
    """A server as the API shows it: its record, its effective config and its live state."""

    record: ServerRecord
    config: ServerConfig | None
    state: str
    last_error: str | None
    restarts: int

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def name(self) -> str:
        return self.record.server_name

    @property
    def source(self) -> str:
        return self.record.source


def dump_config(config: ServerConfig) -> dict[str, Any]:
    """What the store keeps: the fields the user gave (defaults stay defaults), type always."""
    data = config.model_dump(mode="json", exclude_unset=True)
    data["mcp_server_type"] = config.mcp_server_type
    return data


def merge_update(stored: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """Apply a PATCH `config` body to a stored config (both plain dicts).

    - A key left out keeps its stored value (Letta resets `env`; we don't).
    - `command`, `args` and `server_url` sent as null keep their value (Letta
      declares them required-but-nullable); other keys sent as null are
      cleared, back to their default.
    - A secret sent back masked (`"****"`: `auth_token`, or one value of
      `env` / `custom_headers`) keeps the stored secret.
    - A different `mcp_server_type` starts from scratch (Manifold's keys kept).
    """
    stored_type = stored.get("mcp_server_type")
    new_type = changes.get("mcp_server_type") or stored_type
    if new_type != stored_type:
        merged: dict[str, Any] = {k: stored[k] for k in _MANIFOLD_KEYS if k in stored}
    else:
        merged = dict(stored)
    merged["mcp_server_type"] = new_type
    for key, value in changes.items():
        if key == "mcp_server_type":
            continue
        if value is None:
            if key not in _KEEP_IF_NULL:
                merged.pop(key, None)
            continue
        if key == "auth_token" and value == MASK and stored.get(key) is not None:
            value = stored[key]
        elif key in ("env", "custom_headers") and isinstance(value, dict):
            old = stored.get(key) or {}
            value = {k: (old[k] if v == MASK and k in old else v) for k, v in value.items()}
        merged[key] = value
    return merged


def validate_config(raw: Mapping[str, Any], where: str) -> ServerConfig:
    try:
        return SERVER_CONFIG.validate_python(dict(raw))
    except ValidationError as exc:
        errors = []
        for err in exc.errors(include_url=False):
            loc = list(err["loc"])
            if loc and loc[0] in ("stdio", "sse", "streamable_http"):
                loc = loc[1:]
            # No "input": it may be a secret.
            errors.append({"loc": loc, "msg": err["msg"], "type": err["type"]})
        raise InvalidConfig(errors, describe_errors(exc, where)) from None


# --- the registry -----------------------------------------------------------------------


class Registry:
    def __init__(
        self,
        gateway: Gateway,
        store: Store,
        *,
        allow_stdio: bool | None = None,
        create_wait: float = CREATE_WAIT,
        reconcile_interval: float = RECONCILE_INTERVAL,
    ) -> None:
        self.gateway = gateway
        self.store = store
        self._allow_stdio = allow_stdio  # None: follow gateway.allow_stdio_api (reloadable)
        self.create_wait = create_wait
        self.reconcile_interval = reconcile_interval
        self._stale = anyio.Event()  # set when another process changed the shared store
        self._message_listeners: list[Callable[[dict[str, Any]], None]] = []
        self._by_name: dict[str, str] = {}  # server name -> id, for servers this registry runs
        self._not_started: dict[str, tuple[str, str]] = {}  # id -> (state, reason)
        self._synced: dict[str, Any] = {}  # id -> the listing object last written to the store
        self._server_locks: dict[str, anyio.Lock] = {}
        self._write_lock = anyio.Lock()
        self._pending: set[str] = set()
        self._changed = anyio.Event()
        self._tg: TaskGroup | None = None
        self._loaded = anyio.Event()  # server ids are known: lazy servers may read their cached lists
        gateway.listing_cache = self

    @property
    def config_servers(self) -> Mapping[str, ServerConfig]:
        """The config file's servers, as the gateway has them now (a reload changes them)."""
        return self.gateway.config_servers

    @property
    def config_path(self) -> Path | None:
        return self.gateway.config_path

    @property
    def allow_stdio(self) -> bool:
        if self._allow_stdio is not None:
            return self._allow_stdio
        return bool(getattr(self.gateway.settings, "allow_stdio_api", True))

    # --- lifecycle -------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Registry]:
        """Open the store, record config servers, start stored API servers; run inside `gateway.running()`."""
        async with self.store.open(), anyio.create_task_group() as tg:
            self._tg = tg
            self.gateway.add_state_listener(self._on_state)
            self.gateway.add_reload_listener(self._on_reload)
            try:
                await self._load()
                self._loaded.set()
                if self.store.shared:
                    tg.start_soon(self._follow_store)
                yield self
            finally:
                self._tg = None
                tg.cancel_scope.cancel()

    async def _record_config_server(self, name: str, config: ServerConfig) -> None:
        record, before = await self.store.upsert_config_server(name, dump_config(config))
        if before == "api":
            log.warning(
                "a config-file server replaces the API server of the same name",
                server=name,
                server_id=record.id,
                config_file=str(self.config_path),
            )
        self._by_name[name] = record.id
        self._synced.pop(record.id, None)

    async def _load(self) -> None:
        for name, config in dict(self.config_servers).items():
            await self._record_config_server(name, config)
        for record in await self.store.list_servers():
            if record.source != "api":
                continue
            name = record.server_name
            try:
                config = validate_config(record.config, f"server '{name}'")
            except InvalidConfig as exc:
                self._not_started[record.id] = (State.FAILED.value, f"stored config is invalid: {exc.detail}")
                log.error("stored server not started: invalid config", server=name, error=exc.detail)
                continue
            if isinstance(config, StdioServerConfig) and not self.allow_stdio:
                reason = "stdio servers from the API are not started (gateway.allow_stdio_api: false)"
                self._not_started[record.id] = (State.DISABLED.value, reason)
                log.warning("stored stdio server not started", server=name)
                continue
            if name in self.gateway.upstreams:  # pragma: no cover - names are unique in the store
                continue
            self.gateway.add_server(name, config)
            self._by_name[name] = record.id
        for upstream in list(self.gateway.upstreams.values()):
            self._on_state(upstream)

    async def _on_reload(self, added: list[str], changed: list[str], removed: list[str]) -> None:
        """The config file was reloaded: record new and changed servers (removed ones stay, unlisted)."""
        if self._tg is None:
            return
        async with self._write_lock:
            for name in removed:
                self._by_name.pop(name, None)
            for name in [*added, *changed]:
                config = self.config_servers.get(name)
                upstream = self.gateway.upstreams.get(name)
                if config is None or upstream is None or upstream.config is not config:
                    continue  # e.g. the name belongs to a running API server: the gateway kept that one
                try:
                    await self._record_config_server(name, config)
                except Exception as exc:  # noqa: BLE001 - the reload itself already happened
                    log.error("could not record a reloaded config server", server=name, error=str(exc))
                    continue
                self._on_state(upstream)

    # --- following other replicas (a shared store) -------------------------------------

    async def _follow_store(self) -> None:
        """Apply what other processes write to the shared store: on every event, and periodically."""
        assert self._tg is not None
        self._tg.start_soon(self.store.listen, self._on_store_event)
        while True:
            with anyio.move_on_after(self.reconcile_interval):
                await self._stale.wait()
            self._stale = anyio.Event()
            try:
                await self.reconcile()
            except Exception as exc:  # noqa: BLE001 - the database may be away: next round
                log.warning("could not reconcile with the store", error=str(exc))

    def _on_store_event(self, payload: str | None) -> None:
        if payload is not None and payload.startswith("{"):
            try:
                message = json.loads(payload)
            except ValueError:
                return
            for listener in list(self._message_listeners):
                listener(message)
            return
        self._stale.set()

    def add_message_listener(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Hear the messages other replicas publish on a shared store (e.g. relayed session traffic)."""
        self._message_listeners.append(listener)

    async def publish_message(self, message: dict[str, Any]) -> None:
        """Send a JSON message to every replica on the shared store (this one included)."""
        await self.store.notify(json.dumps(message, separators=(",", ":")))

    async def _publish(self, server_id: str) -> None:
        """Tell the other processes on the store that this server changed (best effort: they also poll)."""
        try:
            await self.store.notify(server_id)
        except Exception as exc:  # noqa: BLE001 - the change itself is stored; reconcile catches up
            log.warning("could not publish a change", server_id=server_id, error=str(exc))

    async def reconcile(self) -> None:
        """Make the running API servers match the store: start new ones, restart changed ones, stop gone ones.

        What another replica created, changed or deleted becomes live here;
        the gateway rebuilds its catalogue and every MCP client gets
        list_changed. Config-file servers are this process's own file's.
        """
        async with self._write_lock:  # read under the lock: a local create is either in the list or not begun
            records = {r.id: r for r in await self.store.list_servers() if r.source == "api"}
            running = {
                server_id: name
                for name, server_id in self._by_name.items()
                if name not in self.config_servers or server_id in records
            }
            for server_id, name in running.items():
                if server_id not in records:
                    self._forget(server_id, name)
                    await self.gateway.remove_server(name)
                    log.info("server deleted on another replica", server=name, server_id=server_id)
            for server_id, record in records.items():
                await self._reconcile_one(record, running.get(server_id))

    def _forget(self, server_id: str, name: str) -> None:
        self._synced.pop(server_id, None)
        self._not_started.pop(server_id, None)
        if self._by_name.get(name) == server_id:
            del self._by_name[name]

    async def _reconcile_one(self, record: ServerRecord, running_name: str | None) -> None:
        name = record.server_name
        try:
            config = validate_config(record.config, f"server '{name}'")
        except InvalidConfig as exc:
            self._not_started[record.id] = (State.FAILED.value, f"stored config is invalid: {exc.detail}")
            return
        upstream = self.gateway.upstreams.get(running_name) if running_name else None
        if upstream is not None and running_name == name and _same(upstream.config, config):
            return
        if isinstance(config, StdioServerConfig) and not self.allow_stdio:
            self._not_started[record.id] = (
                State.DISABLED.value,
                "stdio servers from the API are not started (gateway.allow_stdio_api: false)",
            )
            if running_name is not None:
                self._forget(record.id, running_name)
                await self.gateway.remove_server(running_name)
            return
        holder = self.gateway.upstreams.get(name)
        if holder is not None and self._by_name.get(name) != record.id:
            return  # the name is still held here by a server that goes in a later round
        async with self._lock(record.id):
            self._synced.pop(record.id, None)
            self._not_started.pop(record.id, None)
            if running_name is not None:
                self._by_name.pop(running_name, None)
                await self.gateway.replace_server(running_name, config, name)
                what = "changed"
            else:
                self.gateway.add_server(name, config)
                what = "created"
            self._by_name[name] = record.id
        log.info(f"server {what} on another replica", server=name, server_id=record.id)

    # --- keeping tool records in step ----------------------------------------------------

    def _on_state(self, upstream: Upstream) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()
        if self._tg is None or self.gateway.upstreams.get(upstream.name) is not upstream:
            return
        server_id = self._by_name.get(upstream.name)
        if server_id is None or upstream.listing is None or self._synced.get(server_id) is upstream.listing:
            return
        if server_id not in self._pending:
            self._pending.add(server_id)
            self._tg.start_soon(self._sync_in_background, server_id, upstream)

    def _lock(self, server_id: str) -> anyio.Lock:
        return self._server_locks.setdefault(server_id, anyio.Lock())

    async def _sync_in_background(self, server_id: str, upstream: Upstream) -> None:
        try:
            async with self._lock(server_id):
                self._pending.discard(server_id)
                if self.gateway.upstreams.get(upstream.name) is upstream:
                    await self._sync(server_id, upstream)
        except NotFound:
            pass  # deleted meanwhile
        except Exception as exc:  # noqa: BLE001 - a failed write must not take the registry down
            log.error("could not record tools", server=upstream.name, error=str(exc))

    async def load_listing(self, server: str) -> Mapping[str, Any] | None:
        """The lists a lazy server gave the last time it ran (None: it must be started once to list)."""
        with anyio.move_on_after(LOAD_WAIT):
            await self._loaded.wait()
        server_id = self._by_name.get(server)
        if server_id is None:
            return None
        return await self.store.get_listing(server_id)

    async def _sync(self, server_id: str, upstream: Upstream) -> ToolDiff:
        """Write the upstream's current listing to the store (caller holds the server's lock)."""
        listing = upstream.listing
        if listing is None or self._synced.get(server_id) is listing:
            return ToolDiff()
        diff = await self.store.sync_tools(server_id, listing.tools)
        if not listing.cached:  # read from the server: what a lazy server is listed from next time
            await self.store.save_listing(server_id, listing.to_json(upstream.capabilities, upstream.server_info))
        self._synced[server_id] = listing
        if diff:
            log.info(
                "tool records updated",
                server=upstream.name,
                added=len(diff.added),
                updated=len(diff.updated),
                deleted=len(diff.deleted),
            )
        return diff

    async def _wait(self, done: Any, limit: float) -> None:
        with anyio.move_on_after(limit):
            while not done():
                await self._changed.wait()

    async def _settle(self, server_id: str, upstream: Upstream) -> None:
        """Wait for the first connection attempt to end, then record the tools it listed."""

        def settled() -> bool:
            return not (
                upstream.state == State.CONNECTING and upstream.connects == 0 and upstream.restarts == 0
            )

        await self._wait(settled, min(upstream.config.connect_timeout + 1, self.create_wait))
        if upstream.listing is not None:
            async with self._lock(server_id):
                try:
                    await self._sync(server_id, upstream)
                except NotFound:
                    pass

    async def _ensure_connected(self, upstream: Upstream) -> None:
        """Connect a server that is down now (cutting its backoff short), or raise."""
        if upstream.ready:
            return
        if upstream.state in (State.DISABLED, State.STOPPED):
            raise ServerDisabled(f"server '{upstream.name}' is {upstream.state.value}; enable it to use it")
        restarts = upstream.restarts
        upstream.wake()
        await self._wait(
            lambda: upstream.ready or upstream.restarts > restarts or upstream.state == State.STOPPED,
            upstream.config.connect_timeout + 1,
        )
        if not upstream.ready:
            reason = f": {upstream.last_error}" if upstream.last_error else ""
            raise UpstreamUnavailable(f"could not connect to MCP server '{upstream.name}'{reason}")

    # --- reading ---------------------------------------------------------------------

    def _visible(self, record: ServerRecord) -> bool:
        # Config rows of servers no longer in (this gateway's) file stay stored, unlisted.
        return record.source == "api" or record.server_name in self.config_servers

    def _view(self, record: ServerRecord) -> ServerView:
        name = record.server_name
        upstream = self.gateway.upstreams.get(name)
        if record.source == "config":
            config: ServerConfig | None = self.config_servers.get(name)
        elif upstream is not None and self._by_name.get(name) == record.id:
            config = upstream.config
        else:
            try:
                config = SERVER_CONFIG.validate_python(record.config)
            except ValidationError:
                config = None
        if upstream is not None and self._by_name.get(name) == record.id:
            last_error = masker.mask(upstream.last_error) if upstream.last_error else None
            return ServerView(record, config, upstream.state.value, last_error, upstream.restarts)
        state, reason = self._not_started.get(record.id, (State.STOPPED.value, None))
        return ServerView(record, config, state, reason, 0)

    async def _record(self, server_id: str) -> ServerRecord:
        record = await self.store.get_server(server_id)
        if record is None or not self._visible(record):
            raise ServerNotFound(f"MCPServer not found with id={server_id}")
        return record

    async def list_servers(self) -> list[ServerView]:
        return [self._view(r) for r in await self.store.list_servers() if self._visible(r)]

    async def get_server(self, server_id: str) -> ServerView:
        return self._view(await self._record(server_id))

    async def list_tools(self, server_id: str) -> tuple[ServerRecord, list[ToolRecord]]:
        record = await self._record(server_id)
        return record, await self.store.list_tools(server_id)

    async def get_tool(self, server_id: str, tool_id: str) -> tuple[ServerRecord, ToolRecord]:
        record = await self._record(server_id)
        tool = await self.store.get_tool(server_id, tool_id)
        if tool is None:
            raise ToolNotFound(f"Tool not found with id={tool_id} on MCP server {server_id}")
        return record, tool

    async def search_tools(self, query: str, limit: int) -> list[dict[str, Any]]:
        """The catalogue ranked for `query`: exposed name, server (name and id), description, score."""
        return [
            {
                "name": hit.name,
                "server": hit.server,
                "server_id": self._by_name.get(hit.server),
                "description": hit.description,
                "score": hit.score,
            }
            for hit in await self.gateway.search_tools(query, limit)
        ]

    def exposed_tool_name(self, server_name: str, tool_name: str) -> str | None:
        """The name the MCP face shows for this tool (None while it is not listed)."""
        try:
            return self.gateway.catalog.exposed_tool_name(server_name, tool_name)
        except AttributeError:  # pragma: no cover - older catalogue
            return None

    # --- writing ---------------------------------------------------------------------

    def _check_stdio(self, config: ServerConfig) -> None:
        if isinstance(config, StdioServerConfig) and not self.allow_stdio:
            raise StdioForbidden(
                "registering stdio servers through the API is disabled on this gateway "
                "(gateway.allow_stdio_api: false); use an sse or streamable_http server, "
                "or add the server to the config file"
            )

    def _read_only(self, record: ServerRecord) -> ReadOnlyServer:
        where = f"the config file {self.config_path}" if self.config_path else "the config file"
        return ReadOnlyServer(
            f"MCP server '{record.server_name}' is defined in {where}; change it there "
            "(it is read-only through the API)"
        )

    async def _claim_name(self, exc: NameTaken) -> bool:
        """A name held by a stale config row (a server no longer in the file) may be reused."""
        existing = exc.existing
        if existing is None or existing.source != "config" or existing.server_name in self.config_servers:
            return False
        await self.store.delete_server(existing.id)
        log.info("reusing the name of a server no longer in the config file", server=existing.server_name)
        return True

    def _conflict(self, name: str, exc: NameTaken) -> NameConflict:
        other = f" (id {exc.existing.id})" if exc.existing is not None else ""
        return NameConflict(f"an MCP server named '{name}' already exists{other}")

    async def create_server(self, name: str, config: ServerConfig) -> ServerView:
        self._check_stdio(config)
        async with self._write_lock:
            for attempt in range(2):
                try:
                    record = await self.store.create_server(name, dump_config(config))
                    break
                except NameTaken as exc:
                    if attempt or not await self._claim_name(exc):
                        raise self._conflict(name, exc) from None
            try:
                upstream = self.gateway.add_server(name, config)
            except ValueError:
                await self.store.delete_server(record.id)
                raise NameConflict(f"an MCP server named '{name}' already exists") from None
            self._by_name[name] = record.id
        await self._publish(record.id)
        log.info("server created", server=name, server_id=record.id, transport=config.mcp_server_type)
        await self._settle(record.id, upstream)
        return self._view(record)

    async def update_server(
        self, server_id: str, *, server_name: str | None, changes: Mapping[str, Any] | None
    ) -> ServerView:
        async with self._write_lock:
            for _ in range(5):  # another process may write the row between our read and write
                try:
                    record, upstream, old_name = await self._update_once(
                        server_id, server_name, changes or {}
                    )
                    break
                except Stale:
                    continue
            else:  # pragma: no cover - five lost races in a row
                raise NameConflict(f"MCP server {server_id} keeps changing; try again")
        await self._publish(server_id)
        if upstream is None:
            return self._view(record)
        renamed = old_name if old_name != record.server_name else None
        log.info("server updated", server=record.server_name, server_id=server_id, renamed_from=renamed)
        await self._settle(server_id, upstream)
        return self._view(record)

    async def _update_once(
        self, server_id: str, server_name: str | None, changes: Mapping[str, Any]
    ) -> tuple[ServerRecord, Upstream | None, str]:
        """One read-merge-write; the upstream it restarted (None if nothing needed a restart)."""
        record = await self._record(server_id)
        if record.source == "config":
            raise self._read_only(record)
        old_name = record.server_name
        new_name = server_name if server_name and server_name != old_name else None
        config = validate_config(merge_update(record.config, changes), f"server '{new_name or old_name}'")
        self._check_stdio(config)
        running = self.gateway.upstreams.get(old_name) if self._by_name.get(old_name) == server_id else None
        if new_name is None and running is not None and _same(running.config, config):
            if dump_config(config) != record.config:  # e.g. a default now spelled out: store, no restart
                record = await self.store.update_server(server_id, config=dump_config(config), expect=record)
            return record, None, old_name
        async with self._lock(server_id):
            for attempt in range(2):
                try:
                    written = await self.store.update_server(
                        server_id, server_name=new_name, config=dump_config(config), expect=record
                    )
                    break
                except NameTaken as exc:
                    if attempt or not await self._claim_name(exc):
                        raise self._conflict(new_name or old_name, exc) from None
                except NotFound:
                    raise ServerNotFound(f"MCPServer not found with id={server_id}") from None
            self._synced.pop(server_id, None)
            self._not_started.pop(server_id, None)
            if running is not None:
                self._by_name.pop(old_name, None)
                upstream = await self.gateway.replace_server(old_name, config, new_name)
            else:
                upstream = self.gateway.add_server(written.server_name, config)
            self._by_name[written.server_name] = server_id
        return written, upstream, old_name

    async def delete_server(self, server_id: str) -> None:
        async with self._write_lock:
            record = await self._record(server_id)
            if record.source == "config":
                raise self._read_only(record)
            async with self._lock(server_id):
                await self.store.delete_server(server_id)
                self._synced.pop(server_id, None)
                self._not_started.pop(server_id, None)
                name = record.server_name
                if self._by_name.get(name) == server_id:
                    del self._by_name[name]
                    await self.gateway.remove_server(name)
            self._server_locks.pop(server_id, None)
        await self._publish(server_id)
        log.info("server deleted", server=record.server_name, server_id=server_id)

    # --- talking to the upstream -----------------------------------------------------

    def _running_upstream(self, record: ServerRecord) -> Upstream:
        upstream = self.gateway.upstreams.get(record.server_name)
        if upstream is None or self._by_name.get(record.server_name) != record.id:
            state, reason = self._not_started.get(record.id, (State.STOPPED.value, "it is not running"))
            raise UpstreamUnavailable(f"MCP server '{record.server_name}' is not running: {reason}")
        return upstream

    async def refresh_server(self, server_id: str) -> ToolDiff:
        """Re-read the upstream's tools now and make the store match; returns the change by name."""
        record = await self._record(server_id)
        upstream = self._running_upstream(record)
        async with self._lock(server_id):
            if upstream.ready:
                try:
                    await self.gateway.refresh_server(record.server_name)
                except MCPError as exc:
                    raise _upstream_error(exc) from None
                except TimeoutError:
                    raise UpstreamTimeout(
                        f"MCP server '{record.server_name}' did not answer in time"
                    ) from None
            else:
                await self._ensure_connected(upstream)
            try:
                return await self._sync(server_id, upstream)
            except NotFound:
                raise ServerNotFound(f"MCPServer not found with id={server_id}") from None

    async def run_tool(self, server_id: str, tool_id: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """Call a stored tool on its server; the raw CallToolResult.

        An error the upstream answers with (JSON-RPC error) comes back as an
        isError result, as Letta does; an unreachable or silent upstream raises.
        """
        record, tool = await self.get_tool(server_id, tool_id)
        upstream = self._running_upstream(record)
        await self._ensure_connected(upstream)
        try:
            return await self.gateway.call_upstream_tool(record.server_name, tool.name, args)
        except MCPError as exc:
            error = _upstream_error(exc)
            if isinstance(error, UpstreamTimeout | UpstreamUnavailable):
                raise error from None
            return {"content": [{"type": "text", "text": masker.mask(exc.message)}], "isError": True}


def _same(a: ServerConfig, b: ServerConfig) -> bool:
    return bool(SERVER_CONFIG.dump_python(a) == SERVER_CONFIG.dump_python(b))


def _upstream_error(exc: MCPError) -> RegistryError:
    if exc.code == REQUEST_TIMEOUT:
        return UpstreamTimeout(exc.message)
    if exc.code == CONNECTION_CLOSED:
        return UpstreamUnavailable(exc.message)
    if exc.code == INTERNAL_ERROR and not isinstance(exc.__cause__, MCPError):
        return UpstreamUnavailable(exc.message)  # a transport fault, not an answer
    return RegistryError(exc.message)
