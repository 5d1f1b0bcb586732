"""The MCP face: one MCP server whose handlers ask the Gateway.

The SDK's low-level server does the protocol (handshake, versions, framing);
the handlers here only translate names and hand raw result dicts back, so an
upstream's result reaches the client as the upstream wrote it.
"""

from __future__ import annotations

import base64
import json
import warnings
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import anyio
import mcp_types as types
import structlog
from mcp.server.caching import CACHEABLE_METHODS, CacheHint
from mcp.server.connection import Connection
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp_types import INVALID_PARAMS, INVALID_REQUEST
from mcp_types.methods import serialize_server_result
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from manifold import __version__, tracing
from manifold.callers import CURRENT_CALLER
from manifold.catalog import Catalog
from manifold.faces import lean
from manifold.faces.disclosure import META_NAMES, MODES, Disclosure
from manifold.gateway import Gateway
from manifold.upstream.connection import Upstream

log = structlog.get_logger("manifold.mcp")

NOTIFY_DEBOUNCE = 0.05
NOTIFY_TIMEOUT = 2.0


# The 2026-07-28 envelope describes the client's hop to Manifold, not Manifold's hop
# upstream (which has its own session and version): it is never forwarded.
_ENVELOPE_KEYS = frozenset(
    {
        types.PROTOCOL_VERSION_META_KEY,
        types.CLIENT_INFO_META_KEY,
        types.CLIENT_CAPABILITIES_META_KEY,
        types.LOG_LEVEL_META_KEY,
    }
)


def _raw_meta(ctx: ServerRequestContext[Any, Any]) -> dict[str, Any] | None:
    meta = (ctx.params or {}).get("_meta")
    if not isinstance(meta, dict):
        return None
    return {key: value for key, value in meta.items() if key not in _ENVELOPE_KEYS} or None


class _ConnectionTracker:
    """Remembers every live client connection so catalogue changes reach them all."""

    def __init__(self) -> None:
        self.connections: weakref.WeakSet[Connection] = weakref.WeakSet()
        self.sse_sessions: Any = None
        """Where a legacy SSE session's connection is known by its session id (faces/lean_sse.py)."""

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        connection = ctx.session._connection  # noqa: SLF001 - the SDK exposes no public accessor
        if connection not in self.connections:
            self.connections.add(connection)
            connection.exit_stack.callback(self.connections.discard, connection)
            query = getattr(ctx.request, "query_params", None)
            session_id = query.get("session_id") if query is not None else None
            if session_id and self.sse_sessions is not None:
                self.sse_sessions[session_id] = connection
        if ctx.request_id is None:  # a notification causes no upstream requests to attribute
            return await call_next(ctx)
        token = CURRENT_CALLER.set(ctx)
        try:
            return await call_next(ctx)
        finally:
            CURRENT_CALLER.reset(token)


class _FastToolCall:
    """tools/call straight to the gateway, skipping the SDK's per-version model round trips.

    The SDK validates a request's params against the protocol models, builds
    the typed params, then validates and re-serialises the result. For a
    well-formed call the gateway needs none of that: it forwards the params
    it was given and returns the upstream's result as written. Anything
    unusual (not yet initialised, odd params, a search-mode tool) takes the
    normal path, so its errors are the SDK's own.
    """

    def __init__(self, face: McpFace) -> None:
        self.face = face

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        params = ctx.params
        if (
            ctx.method != "tools/call"
            or params is None
            or not isinstance(name := params.get("name"), str)
            or name in META_NAMES
            or not isinstance(arguments := params.get("arguments", {}), dict)
            or not ctx.session._connection.initialize_accepted  # noqa: SLF001
            or ctx.protocol_version in MODERN_PROTOCOL_VERSIONS  # its results need the SDK's envelope
        ):
            return await call_next(ctx)
        return await self.face.call_tool(ctx, name, arguments)


class ListedPage(NamedTuple):
    """One tools/list page as it goes on the wire: the result and its JSON."""

    result: dict[str, Any]
    encoded: bytes


def plain_list(params: Any) -> bool:
    """tools/list params a cached page answers: none, or a cursor and `_meta` of the right types."""
    if params is None:
        return True
    return (
        isinstance(params, Mapping)
        and params.keys() <= {"cursor", "_meta"}
        and isinstance(params.get("cursor"), str | None)
        and isinstance(params.get("_meta"), Mapping | None)
    )


def remember_mode(state: dict[str, Any], query: Mapping[str, str] | None) -> str | None:
    """The mode a client asked for (`/mcp?mode=search`): read from its first request, kept for its session."""
    if "manifold_mode" not in state:
        state["manifold_mode"] = query.get("mode") if query is not None else None
    mode: str | None = state["manifold_mode"]
    return mode


class ToolPages:
    """tools/list pages shaped and encoded once per catalogue, for every path that answers a list.

    The SDK validates, sieves (per protocol version) and encodes every result:
    for a catalogue of 1,000 tools that is most of the CPU a list costs. The
    pages only change with the catalogue (or settings), so each page of each
    (protocol version, requested mode, cursor) is built by the handler's code,
    shaped by the SDK's sieve once, and kept with its JSON: the lean paths
    send the bytes, the SDK's path the dict.
    """

    def __init__(self, face: McpFace) -> None:
        self.face = face
        self._pages: dict[tuple[str, str | None, str | None], ListedPage] = {}
        self._catalog: Catalog | None = None
        self._settings: Any = None

    def get(self, version: str, requested: str | None, cursor: str | None) -> ListedPage | None:
        """The page, built on a miss; None when the SDK must answer (servers still on their first
        connection, a 2026-07-28 client, an unknown mode, a bad cursor: its wait, envelope or error)."""
        gateway = self.face.gateway
        if version in MODERN_PROTOCOL_VERSIONS or (requested is not None and requested not in MODES):
            return None
        if not gateway.settled():
            return None
        catalog, settings = gateway.catalog, gateway.settings
        if catalog is not self._catalog or settings is not self._settings:
            self._pages, self._catalog, self._settings = {}, catalog, settings
        key = (version, requested, cursor)
        page = self._pages.get(key)
        if page is None:
            try:
                page = self._build(version, requested, cursor)
            except (MCPError, ValidationError):
                return None
            if gateway.catalog is catalog and gateway.settings is settings:  # never a page of an older catalogue
                self._pages[key] = page
        return page

    def _build(self, version: str, requested: str | None, cursor: str | None) -> ListedPage:
        face = self.face
        page = face._slice("tools", "tools", cursor, face.disclosure.effective_mode(requested))
        hint = face.server.cache_hints.get("tools/list")
        if hint is not None:  # as the SDK's runner does before its sieve (`ServerRunner._serialize`)
            page = {"ttlMs": hint.ttl_ms, "cacheScope": hint.scope, **page}
        result = serialize_server_result("tools/list", version, page)
        return ListedPage(result, json.dumps(result, separators=(",", ":")).encode())


class _ListCache:
    """tools/list from the face's pages on the SDK's path too (the /sse face, a request the lean
    paths leave alone): the SDK's pipeline copies the cached dict, so the client gets the same."""

    def __init__(self, face: McpFace) -> None:
        self.face = face

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if (
            ctx.method != "tools/list"
            or not lean.ready(ctx.session._connection)  # noqa: SLF001
            or not plain_list(ctx.params)
        ):
            return await call_next(ctx)
        await self.face.gateway.wait_settled()
        cursor = (ctx.params or {}).get("cursor")
        page = self.face.pages.get(ctx.protocol_version, self.face._requested_mode(ctx), cursor)
        return page.result if page is not None else await call_next(ctx)


class McpFace:
    """Builds the low-level server and broadcasts list_changed to every client."""

    def __init__(self, gateway: Gateway, *, page_size: int = 2000) -> None:
        self.gateway = gateway
        self.page_size = page_size
        self.tracker = _ConnectionTracker()
        self._changed: set[str] = set()
        self._wake = anyio.Event()
        self.subscriptions: dict[str, weakref.WeakSet[Connection]] = {}
        self.disclosure = Disclosure(gateway)
        self.pages = ToolPages(self)
        self.server = self._build()
        gateway.add_listener(self._on_catalog_change)
        gateway.bridge = self

    def initialization_options(self) -> InitializationOptions:
        return self.server.create_initialization_options(
            NotificationOptions(prompts_changed=True, resources_changed=True, tools_changed=True)
        )

    # --- list_changed ----------------------------------------------------------

    def _on_catalog_change(self, old: Catalog, new: Catalog) -> None:
        for kind, before, after in (
            ("tools", old.tools, new.tools),
            ("prompts", old.prompts, new.prompts),
            ("resources", (old.resources, old.resource_templates), (new.resources, new.resource_templates)),
        ):
            if before != after:
                self._changed.add(kind)
        if self._changed:
            self._wake.set()

    async def run_notifier(self) -> None:
        """Send one list_changed per kind per burst of changes, to every client."""
        while True:
            await self._wake.wait()
            await anyio.sleep(NOTIFY_DEBOUNCE)  # coalesce a burst (a reconnect relists everything)
            self._wake = anyio.Event()
            kinds, self._changed = self._changed, set()
            for connection in list(self.tracker.connections):
                with anyio.move_on_after(NOTIFY_TIMEOUT):
                    if "tools" in kinds:
                        await connection.send_tool_list_changed()
                    if "prompts" in kinds:
                        await connection.send_prompt_list_changed()
                    if "resources" in kinds:
                        await connection.send_resource_list_changed()


    async def call_tool(self, ctx: ServerRequestContext[Any, Any], name: str, arguments: dict[str, Any]) -> Any:
        meta = _raw_meta(ctx)
        token = meta.get("progressToken") if meta else None
        on_progress = None
        if token is not None:

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                await ctx.session.send_progress_notification(
                    token, progress, total, message, related_request_id=ctx.request_id
                )

        if name in META_NAMES:
            return await self.disclosure.call(name, arguments, meta, on_progress)
        return await self.gateway.call_tool(name, arguments, meta=meta, on_progress=on_progress)

    def _requested_mode(self, ctx: ServerRequestContext[Any, Any]) -> str | None:
        """The mode this client asked for (`/mcp?mode=search`), if any."""
        return remember_mode(ctx.session._connection.state, getattr(ctx.request, "query_params", None))  # noqa: SLF001

    def lean_list(
        self, connection: Connection, frame: dict[str, Any], query: Mapping[str, str] | None, face: str
    ) -> bytes | None:
        """The whole answer to a plain tools/list frame, from the cached page; None leaves it to the SDK.

        `query` is the request's query string (HTTP), read as `_requested_mode` reads it.
        """
        request_id, params = frame.get("id"), frame.get("params")
        if isinstance(request_id, bool) or not isinstance(request_id, int | str):
            return None
        if tracing.enabled or not lean.ready(connection) or not plain_list(params):
            return None
        cursor = (params or {}).get("cursor")
        page = self.pages.get(connection.protocol_version, remember_mode(connection.state, query), cursor)
        if page is None:
            return None
        self.gateway.metrics.lean_lists.labels(face).inc()
        return lean.result_frame(request_id, page.encoded)

    def _mode(self, ctx: ServerRequestContext[Any, Any]) -> str:
        """The catalogue mode of this client: `/mcp?mode=search` overrides the gateway's."""
        return self.disclosure.effective_mode(self._requested_mode(ctx))

    # --- the way back: upstream requests and notifications to clients ---------------

    def _attribute(self, upstream: Upstream, caller: Any) -> Any:
        """The client request that caused `upstream` to ask, or the only client there is."""
        if caller is not None:
            return caller
        distinct = {id(c.session._connection): c for c in upstream.callers}  # noqa: SLF001
        if len(distinct) == 1:
            return next(iter(distinct.values()))
        if not distinct and len(self.tracker.connections) == 1:
            return next(iter(self.tracker.connections))
        return None

    async def server_request(self, upstream: Upstream, method: str, params: Any, caller: Any) -> Any:
        target = self._attribute(upstream, caller)
        if target is None:
            reason = "several clients have calls in flight" if upstream.callers else "no client call is in flight"
            return types.ErrorData(code=INVALID_REQUEST, message=f"cannot route {method} from server '{upstream.name}': {reason}")
        connection = target if isinstance(target, Connection) else target.session._connection  # noqa: SLF001
        capability = _CAPABILITY[method]
        if not connection.check_capability(capability):
            return types.ErrorData(
                code=INVALID_REQUEST,
                message=f"server '{upstream.name}' asked for {method}, which the connected client does not support",
            )
        request, result_type = _request_model(method, params)
        try:
            if isinstance(target, Connection):
                return await target.send_request(request)
            return await target.session.send_request(
                request, result_type, metadata=ServerMessageMetadata(related_request_id=target.request_id)
            )
        except MCPError as exc:
            return exc.error

    async def server_notification(self, upstream: Upstream, notification: Any) -> None:
        if isinstance(notification, types.LoggingMessageNotification):
            params = notification.params
            logger = upstream.name if not params.logger else f"{upstream.name}/{params.logger}"
            distinct = {id(c.session._connection): c for c in upstream.callers}  # noqa: SLF001
            if len(distinct) == 1:
                caller = next(iter(distinct.values()))
                await caller.session.send_log_message(
                    params.level, params.data, logger, related_request_id=caller.request_id
                )
                return
            for connection in list(self.tracker.connections):
                with anyio.move_on_after(NOTIFY_TIMEOUT):
                    await connection.log(params.level, params.data, logger)
        elif isinstance(notification, types.ResourceUpdatedNotification):
            uri = self.gateway.catalog.exposed_uri(upstream.name, str(notification.params.uri))
            for connection in list(self.subscriptions.get(uri, ())):
                with anyio.move_on_after(NOTIFY_TIMEOUT):
                    await connection.send_resource_updated(uri)

    async def _subscribe(self, ctx: ServerRequestContext[Any, Any], uri: str) -> None:
        upstream, route = await self.gateway.route_resource(uri)
        subscribers = self.subscriptions.setdefault(uri, weakref.WeakSet())
        if not subscribers:
            await upstream.request("resources/subscribe", {"uri": route.name})
        subscribers.add(ctx.session._connection)  # noqa: SLF001

    async def _unsubscribe(self, ctx: ServerRequestContext[Any, Any], uri: str) -> None:
        subscribers = self.subscriptions.get(uri)
        if subscribers is None:
            return
        subscribers.discard(ctx.session._connection)  # noqa: SLF001
        if not subscribers:
            del self.subscriptions[uri]
            upstream, route = await self.gateway.route_resource(uri)
            await upstream.request("resources/unsubscribe", {"uri": route.name})

    # --- handlers ----------------------------------------------------------------

    async def _page(self, kind: str, key: str, params: types.PaginatedRequestParams | None, mode: str = "full") -> dict[str, Any]:
        # The first lists wait for servers still making their first connection
        # (bounded by their connect timeout): clients that list once at start-up
        # and ignore list_changed still see everything that came up.
        await self.gateway.wait_settled()
        return self._slice(kind, key, params.cursor if params else None, mode)

    def _slice(self, kind: str, key: str, cursor: str | None, mode: str = "full") -> dict[str, Any]:
        """The page of `kind` at `cursor` (MCPError for a cursor this face did not hand out)."""
        items: Sequence[dict[str, Any]] = (
            self.disclosure.listed_tools(mode) if kind == "tools" else getattr(self.gateway.catalog, kind)
        )
        start = _decode_cursor(cursor) if cursor else 0
        end = start + self.page_size
        result: dict[str, Any] = {key: list(items[start:end])}
        if end < len(items):
            result["nextCursor"] = _encode_cursor(end)
        return result

    def _build(self) -> Server[Any]:
        gateway = self.gateway

        def era(handler: Any) -> Any:
            """Results are upstream dicts; a 2026-07-28 client needs `resultType` on each."""

            async def wrapped(ctx: ServerRequestContext[Any, Any], params: Any) -> Any:
                result = await handler(ctx, params)
                if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS and isinstance(result, dict):
                    result.setdefault("resultType", "complete")
                return result

            return wrapped

        async def list_tools(ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None) -> Any:
            return await self._page("tools", "tools", params, self._mode(ctx))

        async def call_tool(ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> Any:
            return await self.call_tool(ctx, params.name, params.arguments or {})

        async def list_prompts(ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None) -> Any:
            return await self._page("prompts", "prompts", params)

        async def get_prompt(ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams) -> Any:
            return await gateway.get_prompt(params.name, params.arguments, meta=_raw_meta(ctx))

        async def list_resources(ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None) -> Any:
            return await self._page("resources", "resources", params)

        async def list_templates(ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None) -> Any:
            return await self._page("resource_templates", "resourceTemplates", params)

        async def read_resource(ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams) -> Any:
            return await gateway.read_resource(params.uri, meta=_raw_meta(ctx))

        async def complete(ctx: ServerRequestContext[Any, Any], params: types.CompleteRequestParams) -> Any:
            return await gateway.complete(dict(ctx.params or {}))

        async def subscribe(ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams) -> Any:
            await self._subscribe(ctx, params.uri)
            return {}

        async def unsubscribe(ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams) -> Any:
            await self._unsubscribe(ctx, params.uri)
            return {}

        async def set_level(ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams) -> Any:
            await gateway.fan_out("logging/setLevel", {"level": params.level}, capability="logging")
            return {}

        async def roots_changed(ctx: ServerRequestContext[Any, Any], params: Any) -> None:
            await gateway.notify_all("notifications/roots/list_changed")

        with warnings.catch_warnings():
            # Logging and roots are deprecated in 2026-07-28 but alive in every handshake version.
            warnings.simplefilter("ignore")
            server: Server[Any] = Server(
            "manifold",
            version=__version__,
            # 2026-07-28 results must say how long they stay fresh. The catalogue
            # changes whenever an upstream does (and search mode is per client),
            # so lists are never cached and never shared across clients.
            cache_hints={method: CacheHint(ttl_ms=0, scope="private") for method in CACHEABLE_METHODS},
            on_list_tools=era(list_tools),
            on_call_tool=era(call_tool),
            on_list_prompts=era(list_prompts),
            on_get_prompt=era(get_prompt),
            on_list_resources=era(list_resources),
            on_list_resource_templates=era(list_templates),
            on_read_resource=era(read_resource),
            on_completion=era(complete),
            on_subscribe_resource=era(subscribe),
            on_unsubscribe_resource=era(unsubscribe),
            on_set_logging_level=era(set_level),
            on_roots_list_changed=roots_changed,
            )
        server.middleware.insert(0, self.tracker)
        server.middleware.append(_ListCache(self))
        server.middleware.append(_FastToolCall(self))  # innermost: tracing still wraps it
        return server


_CAPABILITY = {
    "sampling/createMessage": types.ClientCapabilities(sampling=types.SamplingCapability()),
    "elicitation/create": types.ClientCapabilities(elicitation=types.ElicitationCapability()),
    "roots/list": types.ClientCapabilities(roots=types.RootsCapability()),
}


def _request_model(method: str, params: Any) -> tuple[Any, Any]:
    if method == "sampling/createMessage":
        result = types.CreateMessageResultWithTools if params.tools else types.CreateMessageResult
        return types.CreateMessageRequest(params=params), result
    if method == "elicitation/create":
        return types.ElicitRequest(params=params), types.ElicitResult
    return types.ListRootsRequest(), types.ListRootsResult


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode()


def _decode_cursor(cursor: str) -> int:
    try:
        offset = json.loads(base64.urlsafe_b64decode(cursor.encode()))["o"]
        if isinstance(offset, int) and offset >= 0:
            return offset
    except (ValueError, KeyError, TypeError):
        pass
    raise MCPError(INVALID_PARAMS, "invalid cursor")
