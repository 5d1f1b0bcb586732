"""The Gateway: the one thing every face talks to.

It owns the upstream pool (one supervised session per server), keeps the
catalogue in step with what the upstreams offer, routes requests, and tells
listeners when the catalogue changes. It does no wire framing of its own.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Any, Protocol

import anyio
import structlog
from anyio.abc import TaskGroup
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, METHOD_NOT_FOUND, ErrorData

from manifold.catalog import Catalog, Route, ServerListing
from manifold.config import GatewayConfig, GatewaySettings, ServerConfig, ToolShaping
from manifold.logging import masker
from manifold.metrics import Metrics
from manifold.search import Hit, SearchIndex, build_index
from manifold.upstream.connection import ProgressFn, State, Upstream
from manifold.upstream.spawn import stop_untaken

log = structlog.get_logger("manifold.gateway")

ADDING_SERVERS_WAIT = 30.0  # how long a call waits for the servers to be added (the store opened)

ChangeListener = Callable[[Catalog, Catalog], None]


class ClientBridge(Protocol):
    """What the MCP face offers the gateway: a way back to the clients."""

    async def server_request(self, upstream: Upstream, method: str, params: Any, caller: Any) -> Any: ...

    async def server_notification(self, upstream: Upstream, notification: Any) -> None: ...


class ListingCache(Protocol):
    """Where a lazy server's lists are kept while it is not running (the Registry, over the store)."""

    async def load_listing(self, server: str) -> Mapping[str, Any] | None: ...


def shape_tools(tools: list[dict[str, Any]], shaping: ToolShaping | None) -> list[dict[str, Any]]:
    """Apply a server's allow/deny globs, renames and description overrides."""
    if shaping is None:
        return tools
    shaped = []
    for tool in tools:
        name = tool.get("name")
        if not isinstance(name, str) or not shaping.exposes(name):
            continue
        if name in shaping.rename or name in shaping.descriptions:
            tool = dict(tool)
            tool["name"] = shaping.rename.get(name, name)
            if name in shaping.descriptions:
                tool["description"] = shaping.descriptions[name]
        shaped.append(tool)
    return shaped


class Gateway:
    def __init__(self, config: GatewayConfig | None = None, *, reload: bool = False, watch: bool = True) -> None:
        config = config or GatewayConfig()
        self.settings: GatewaySettings = config.gateway
        self.config_path = config.path
        self.reload = reload  # reload the config file on SIGHUP ...
        self.watch = watch  # ... and whenever it changes
        self.config_servers = dict(config.servers)
        self.upstreams: dict[str, Upstream] = {}
        self.catalog = Catalog.build([], separator=self.settings.separator)
        self._built_from: dict[str, int] = {}
        self._listeners: list[ChangeListener] = []
        self._state_listeners: list[Callable[[Upstream], None]] = []
        self._reload_listeners: list[Callable[[list[str], list[str], list[str]], Any]] = []
        self._done: dict[str, anyio.Event] = {}
        self._tg: TaskGroup | None = None
        self._state_changed = anyio.Event()
        self._servers_added = anyio.Event()
        self._servers_added.set()
        self.bridge: ClientBridge | None = None
        self.listing_cache: ListingCache | None = None
        self.metrics = Metrics()
        self._index: tuple[Catalog, str, SearchIndex] | None = None

    # --- lifecycle -----------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Gateway]:
        """Start every configured server concurrently; stop them all on exit."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            for name, config in self.config_servers.items():
                self.add_server(name, config)
            tg.start_soon(self._stop_untaken_spawns)
            if self.reload and self.config_path is not None:
                from manifold.reload import watch_config

                tg.start_soon(partial(watch_config, self, self.config_path, files=self.watch))
            try:
                yield self
            finally:
                for upstream in self.upstreams.values():
                    upstream.stop()
                tg.cancel_scope.cancel()
                self._tg = None

    async def _stop_untaken_spawns(self) -> None:
        """Processes started early for servers that turned out not to want them (see upstream/spawn.py)."""
        await self.wait_settled()
        await stop_untaken()

    @contextmanager
    def adding_servers(self) -> Iterator[None]:
        """While the body runs, servers are still being added: a call that finds no route waits.

        Lets a face answer `initialize` before the servers are even added (the
        stdio face does, so start-up work never delays it), without a first call
        failing as unknown meanwhile.
        """
        self._servers_added = anyio.Event()
        try:
            yield
        finally:
            self._servers_added.set()
            self._state_changed.set()

    async def wait_settled(self, timeout: float | None = None) -> None:
        """Wait until every server is added and none is still on its first connection attempt.

        Bounded by the slowest server's connect timeout, so a dead server
        delays nobody for longer than its own limit.
        """
        if not self._servers_added.is_set():
            with anyio.move_on_after(timeout if timeout is not None else ADDING_SERVERS_WAIT):
                await self._servers_added.wait()
        limit = timeout if timeout is not None else max((u.config.connect_timeout for u in self.upstreams.values()), default=0) + 1
        with anyio.move_on_after(limit):
            while self._starting():
                self._state_changed = anyio.Event()
                await self._state_changed.wait()

    def settled(self) -> bool:
        """Whether `wait_settled` would return at once (a face that must not wait checks this)."""
        return not self._starting()

    def _starting(self) -> bool:
        if not self._servers_added.is_set():
            return True
        return any(u.state == State.CONNECTING and u.connects == 0 and u.restarts == 0 for u in self.upstreams.values())

    def add_listener(self, listener: ChangeListener) -> Callable[[], None]:
        """Call `listener(old, new)` whenever the catalogue changes; returns an unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def add_state_listener(self, listener: Callable[[Upstream], None]) -> None:
        self._state_listeners.append(listener)

    # --- the server set ------------------------------------------------------

    def add_server(self, name: str, config: ServerConfig) -> Upstream:
        if self._tg is None:
            raise RuntimeError("the gateway is not running")
        if name in self.upstreams:
            raise ValueError(f"server '{name}' already exists")
        masker.add(config.secrets())
        upstream = Upstream(
            name,
            config,
            on_change=self._on_upstream_change,
            on_notification=self._on_upstream_notification,
            on_request=self._on_upstream_request,
            load_cached=self._load_cached,
            idle_default=lambda: self.settings.idle_timeout,
        )
        self.upstreams[name] = upstream
        done = self._done[name] = anyio.Event()

        async def supervise() -> None:
            try:
                await upstream.run()
            finally:
                done.set()

        self._tg.start_soon(supervise, name=f"upstream:{name}")
        self._rebuild()
        return upstream

    async def _load_cached(self, upstream: Upstream) -> Mapping[str, Any] | None:
        if self.listing_cache is None and not self._servers_added.is_set():
            await self._servers_added.wait()  # the store may still be opening (see adding_servers)
        if self.listing_cache is None:
            return None  # no store (a one-shot CLI command): the lazy server is started once to list
        return await self.listing_cache.load_listing(upstream.name)

    async def remove_server(self, name: str) -> None:
        """Stop a server and wait until its session (and process) is gone."""
        upstream = self.upstreams.pop(name, None)
        if upstream is None:
            return
        upstream.stop()
        with anyio.move_on_after(10):
            await self._done.pop(name).wait()
        self._rebuild()

    async def replace_server(self, name: str, config: ServerConfig, new_name: str | None = None) -> Upstream:
        await self.remove_server(name)
        return self.add_server(new_name or name, config)

    async def apply_config(self, config: GatewayConfig) -> dict[str, list[str]]:
        """Move the config-file servers to `config`, touching only what changed."""
        old, new = self.config_servers, dict(config.servers)
        added = [name for name in new if name not in old]
        removed = [name for name in old if name not in new]
        changed = [name for name in new if name in old and new[name] != old[name]]
        self.config_servers = new
        separator_changed = config.gateway.separator != self.settings.separator
        self.settings = config.gateway
        for name in removed:
            await self.remove_server(name)
        for name in changed:
            await self.replace_server(name, new[name])
        for name in added:
            if name in self.upstreams:  # an API server of that name is already running
                log.warning("config server name taken by an API server; skipped", server=name)
                continue
            self.add_server(name, new[name])
        if separator_changed:
            self._rebuild()
        for listener in list(self._reload_listeners):
            await listener(added, changed, removed)
        return {"added": added, "changed": changed, "removed": removed}

    def add_reload_listener(self, listener: Callable[[list[str], list[str], list[str]], Any]) -> None:
        """Awaited after a config reload with the added, changed and removed server names."""
        self._reload_listeners.append(listener)

    async def refresh_server(self, name: str) -> Upstream:
        upstream = self._upstream(name)
        await upstream.refresh()
        return upstream

    def _upstream(self, name: str) -> Upstream:
        try:
            return self.upstreams[name]
        except KeyError:
            raise MCPError(INVALID_PARAMS, f"unknown server '{name}'") from None

    async def _on_upstream_notification(self, upstream: Upstream, notification: Any) -> None:
        if self.bridge is not None:
            await self.bridge.server_notification(upstream, notification)

    async def _on_upstream_request(self, upstream: Upstream, method: str, params: Any, caller: Any) -> Any:
        if self.bridge is None:
            return ErrorData(code=METHOD_NOT_FOUND, message=f"no client is connected to answer {method}")
        return await self.bridge.server_request(upstream, method, params, caller)

    async def fan_out(self, method: str, params: Mapping[str, Any] | None, *, capability: str | None = None) -> None:
        """Send one request to every ready server (that has `capability`), concurrently.

        A server that fails is logged and skipped: one upstream never fails
        a request meant for all of them.
        """

        async def one(upstream: Upstream) -> None:
            try:
                await upstream.request(method, params)
            except MCPError as exc:
                upstream.log.info("fan-out request failed", method=method, error=exc.message)

        async with anyio.create_task_group() as tg:
            for upstream in list(self.upstreams.values()):
                if upstream.ready and (capability is None or capability in upstream.capabilities):
                    tg.start_soon(one, upstream)

    async def notify_all(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        for upstream in list(self.upstreams.values()):
            with anyio.move_on_after(2):
                await upstream.notify(method, params)

    # --- catalogue -----------------------------------------------------------

    def _on_upstream_change(self, upstream: Upstream) -> None:
        self._state_changed.set()
        for listener in list(self._state_listeners):
            listener(upstream)
        if self._built_from.get(upstream.name) != id(upstream.listing):
            self._rebuild()

    def _rebuild(self) -> None:
        listings = []
        built_from = {}
        for name, upstream in self.upstreams.items():
            built_from[name] = id(upstream.listing)
            if upstream.listing is None:
                continue
            listing = upstream.listing
            listings.append(
                ServerListing(
                    server=name,
                    prefix=upstream.config.prefix,
                    tools=shape_tools(listing.tools, upstream.config.tools),
                    prompts=listing.prompts,
                    resources=listing.resources,
                    resource_templates=listing.resource_templates,
                )
            )
        old, self.catalog = self.catalog, Catalog.build(listings, separator=self.settings.separator)
        self._built_from = built_from
        for line in self.catalog.clashes:
            log.warning("name clash resolved", detail=line)
        for listener in list(self._listeners):
            listener(old, self.catalog)

    def search_index(self, ranker: str | None = None) -> SearchIndex:
        """The catalogue's search index (the configured ranker unless told), rebuilt after a change."""
        catalog, ranker = self.catalog, ranker or self.settings.search_ranker
        cached = self._index
        if cached is None or cached[0] is not catalog or cached[1] != ranker:
            cached = self._index = (catalog, ranker, build_index(catalog.tools, catalog.server_of_tool, ranker))
        return cached[2]

    async def search_tools(self, query: str, limit: int = 10) -> list[Hit]:
        """Rank the catalogue's tools for a plain-words query (lazy servers included, never started).

        An embedding ranker takes milliseconds to seconds (a whole catalogue on
        the first search after a change): it runs off the event loop.
        """
        if self.settings.search_ranker == "lexical":
            return self.search_index().search(query, limit)
        return await anyio.to_thread.run_sync(lambda: self.search_index().search(query, limit))

    # --- routing -------------------------------------------------------------

    async def _route(self, kind: str, key: str) -> Route | None:
        """Find a route; if none, wait for servers still on their first connection, then look again.

        `kind` names the catalogue method, looked up afresh: waiting replaces the catalogue.
        """
        route = getattr(self.catalog, kind)(key)
        if route is None and self._starting():
            await self.wait_settled()
            route = getattr(self.catalog, kind)(key)
        return route

    async def route_tool(self, name: str) -> tuple[Upstream, Route]:
        """The server and the upstream's own tool name for an exposed name."""
        route = await self._route("route_tool", name)
        if route is None:
            raise MCPError(INVALID_PARAMS, f"unknown tool '{name}'")
        upstream = self._upstream(route.server)
        shaping = upstream.config.tools
        if shaping is not None and shaping.rename:
            original = {new: old for old, new in shaping.rename.items()}.get(route.name, route.name)
            route = Route(route.server, original)
        return upstream, route

    async def call_tool(
        self,
        name: str,
        arguments: Mapping[str, Any] | None,
        *,
        meta: Mapping[str, Any] | None = None,
        on_progress: ProgressFn | None = None,
    ) -> dict[str, Any]:
        upstream, route = await self.route_tool(name)
        params: dict[str, Any] = {"name": route.name, "arguments": dict(arguments or {})}
        if meta:
            params["_meta"] = {k: v for k, v in meta.items() if k != "progressToken"}
        started = time.perf_counter()
        outcome = "failed"
        try:
            result = await upstream.request("tools/call", params, on_progress=on_progress)
            outcome = "error" if result.get("isError") else "ok"
            return result
        finally:
            self.metrics.observe_call(upstream.name, route.name, time.perf_counter() - started, outcome)

    async def call_upstream_tool(self, server: str, tool: str, arguments: Mapping[str, Any] | None) -> dict[str, Any]:
        """Call a tool by its upstream name (the management API's run); filtered-out tools stay uncallable."""
        upstream = self._upstream(server)
        if upstream.config.tools is not None and not upstream.config.tools.exposes(tool):
            raise MCPError(INVALID_PARAMS, f"tool '{tool}' of server '{server}' is not exposed by this gateway")
        return await upstream.request("tools/call", {"name": tool, "arguments": dict(arguments or {})})

    async def get_prompt(
        self, name: str, arguments: Mapping[str, Any] | None, *, meta: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        route = await self._route("route_prompt", name)
        if route is None:
            raise MCPError(INVALID_PARAMS, f"unknown prompt '{name}'")
        params: dict[str, Any] = {"name": route.name}
        if arguments is not None:
            params["arguments"] = dict(arguments)
        if meta:
            params["_meta"] = dict(meta)
        return await self._upstream(route.server).request("prompts/get", params)

    async def route_resource(self, uri: str) -> tuple[Upstream, Route]:
        route = await self._route("route_resource", uri)
        if route is None:
            candidates = self.catalog.resource_candidates(uri)
            if len(candidates) > 1:
                names = ", ".join(sorted({c.server for c in candidates}))
                raise MCPError(INVALID_PARAMS, f"resource '{uri}' is ambiguous between servers: {names}")
            raise MCPError(INVALID_PARAMS, f"unknown resource '{uri}'")
        return self._upstream(route.server), route

    async def read_resource(self, uri: str, *, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
        upstream, route = await self.route_resource(uri)
        params: dict[str, Any] = {"uri": route.name}
        if meta:
            params["_meta"] = dict(meta)
        result = await upstream.request("resources/read", params)
        if route.name != uri:
            # Contents carry the upstream's URI; give the client back the one it asked for.
            for item in result.get("contents") or []:
                if isinstance(item, dict) and item.get("uri") == route.name:
                    item["uri"] = uri
        return result

    async def complete(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Route completion/complete by its reference: a prompt name or a resource (template) URI."""
        ref = dict(params.get("ref") or {})
        if ref.get("type") == "ref/prompt":
            route = await self._route("route_prompt", str(ref.get("name")))
            if route is None:
                raise MCPError(INVALID_PARAMS, f"unknown prompt '{ref.get('name')}'")
            ref["name"] = route.name
        else:
            _, route = await self.route_resource(str(ref.get("uri")))
            ref["uri"] = route.name
        forwarded = {**params, "ref": ref}
        return await self._upstream(route.server).request("completion/complete", forwarded)
