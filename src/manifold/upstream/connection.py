"""One supervised, long-lived MCP client session per upstream server.

The supervisor owns the session: it connects, reads the server's lists, waits
for the connection to end, and reconnects with backoff. Requests never open
a connection of their own; they use the session the supervisor holds, or fail
at once with an error that names the server and its state.

A lazy server (`lazy: true`) is the exception to "always connected": its lists
come from a cache (or from one start that only lists), it is started by the
first request routed to it, and stopped again after `idle_timeout` seconds
without requests. A lazy server that fails is not retried on its own: the
next request tries again.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import anyio
import mcp_types as types
import structlog
from mcp.client.session import ClientSession
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, INTERNAL_ERROR, METHOD_NOT_FOUND, REQUEST_TIMEOUT

from manifold import __version__
from manifold.callers import CURRENT_CALLER
from manifold.config import ServerConfig
from manifold.logging import masker
from manifold.upstream.lean_http import HttpChannel
from manifold.upstream.report import TransportReport
from manifold.upstream.transports import open_transport

log = structlog.get_logger("manifold.upstream")

BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
CRASH_LOOP_LIMIT = 6  # consecutive failed connects before the server is parked as failed
PARKED_RETRY = 300.0  # a parked server is tried again this often (a refresh or config change: at once)
STABLE_AFTER = 10.0  # a connection lost sooner than this after its start counts towards a crash loop
LIST_DEBOUNCE = 0.05

ProgressFn = Callable[[float, float | None, str | None], Awaitable[None]]
DEFAULT_IDLE_TIMEOUT = 300.0


class State(StrEnum):
    CONNECTING = "connecting"
    READY = "ready"
    BACKING_OFF = "backing_off"
    FAILED = "failed"
    DISABLED = "disabled"
    IDLE = "idle"  # a lazy server that is not running; its lists are known
    STOPPED = "stopped"


@dataclass
class Listing:
    """What one upstream offers, as raw wire dicts so every field passes through."""

    tools: list[dict[str, Any]] = field(default_factory=list)
    prompts: list[dict[str, Any]] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)
    resource_templates: list[dict[str, Any]] = field(default_factory=list)
    cached: bool = False  # read from the store, not (yet) from the running server

    def to_json(self, capabilities: dict[str, Any], server_info: dict[str, Any]) -> dict[str, Any]:
        """What the store keeps for a lazy server: the lists and the handshake's capabilities."""
        return {
            "tools": self.tools,
            "prompts": self.prompts,
            "resources": self.resources,
            "resource_templates": self.resource_templates,
            "capabilities": capabilities,
            "server_info": server_info,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Listing:
        def items(key: str) -> list[dict[str, Any]]:
            value = data.get(key)
            return [dict(i) for i in value if isinstance(i, dict)] if isinstance(value, list) else []

        return cls(items("tools"), items("prompts"), items("resources"), items("resource_templates"), cached=True)


CacheLoader = Callable[["Upstream"], Awaitable[Mapping[str, Any] | None]]


class UpstreamError(MCPError):
    """An error from or about one upstream; its message always names the server.

    Upstreams echo credentials in their errors ("invalid token abc…"), and this
    message reaches clients and logs, so known secrets are masked here, once.
    """

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(code, masker.mask(message), data)


def _lost_transport(message: str) -> bool:
    """Whether a CONNECTION_CLOSED error is the SDK's own report of a lost transport.

    -32000 is also the code servers use most for their own errors; those must
    reach the client as the upstream wrote them, not as "connection lost".
    """
    return message == "Connection closed" or message.startswith("SSE stream ")


class _WatchedReadStream:
    """Pass-through read stream that reports when the transport ends."""

    def __init__(self, inner: Any, closed: anyio.Event) -> None:
        self._inner = inner
        self._closed = closed

    def __getattr__(self, name: str) -> Any:  # last_context and friends
        return getattr(self._inner, name)

    async def receive(self) -> Any:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._closed.set()
            raise

    def __aiter__(self) -> _WatchedReadStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        self._closed.set()
        await self._inner.aclose()

    async def __aenter__(self) -> _WatchedReadStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Upstream:
    """A registered server: its config, its supervisor state and its live session."""

    def __init__(
        self,
        name: str,
        config: ServerConfig,
        *,
        on_change: Callable[[Upstream], None],
        on_notification: Callable[[Upstream, Any], Awaitable[None]] | None = None,
        on_request: Callable[[Upstream, str, Any, Any], Awaitable[Any]] | None = None,
        load_cached: CacheLoader | None = None,
        idle_default: Callable[[], float] = lambda: DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        self.name = name
        self.config = config
        self.state = State.DISABLED if not config.enabled else State.CONNECTING
        self.last_error: str | None = None
        self.restarts = 0
        self.connects = 0
        self.listing: Listing | None = None
        self.capabilities: dict[str, Any] = {}
        self.server_info: dict[str, Any] = {}
        self._on_change = on_change
        self._on_notification = on_notification
        self._on_request = on_request
        self.callers: list[Any] = []  # the client calls in flight here, for attributing server requests
        self._session: ClientSession | None = None
        self._wake = anyio.Event()
        self._relist = anyio.Event()
        self._probe = anyio.Event()  # set when a request lost its connection: is the server still there?
        self._ready = anyio.Event()
        self._stopping = False
        self._cancel: anyio.CancelScope | None = None
        self.log = log.bind(server=name)
        self.report = TransportReport(name)  # pid, exit status, stderr tail, HTTP status (kept across restarts)
        # Lazy servers: whether a start is wanted now, requests in flight, when the last one ended.
        self._load_cached = load_cached
        self._idle_default = idle_default
        self._wanted = not self.lazy
        self._in_flight = 0
        self._last_used = -math.inf
        self._idle_stop = False
        self._nudge = anyio.Event()
        self._state_event = anyio.Event()

    @property
    def lazy(self) -> bool:
        return bool(getattr(self.config, "lazy", False))

    @property
    def idle_timeout(self) -> float:
        """Seconds a lazy server may sit without requests before it is stopped."""
        own = getattr(self.config, "idle_timeout", None)
        return float(own) if own is not None else float(self._idle_default())

    # --- supervision ---------------------------------------------------------

    async def run(self) -> None:
        """Supervise the connection until cancelled or stopped.

        A crash loop is counted in strikes: attempts that never became ready
        (reset by one that does) plus connections in a row that were lost within
        STABLE_AFTER (reset by one that lasts). Strikes set the backoff; at
        CRASH_LOOP_LIMIT the server is parked as failed.
        """
        failures = 0  # attempts since the last one that became ready
        quick = 0  # ready connections in a row that were lost within STABLE_AFTER
        with anyio.CancelScope() as self._cancel:
            if self.lazy and self.config.enabled:
                await self._load_listing_from_cache()
            while not self._stopping:
                if not self.config.enabled:
                    self._set_state(State.DISABLED)
                    await self._wait_wake()
                    continue
                if self.lazy and not self._wanted:
                    if self.state != State.FAILED:
                        self._set_state(State.IDLE)
                    await self._wait_wake()
                    continue
                self._set_state(State.CONNECTING)
                connects, started = self.connects, anyio.current_time()
                try:
                    await self._connect_and_serve()
                    continue  # a lazy server stopped for being idle: not a failure
                except Exception as exc:  # noqa: BLE001 - any failure is this server's alone
                    if self.connects > connects:  # it was ready, then lost
                        failures = 0
                        quick = quick + 1 if anyio.current_time() - started < STABLE_AFTER else 0
                    else:
                        failures += 1
                    self.last_error = self._failure(exc)
                    self.log.warning("upstream connection failed", error=self.last_error, strikes=failures + quick)
                if self._stopping:
                    break
                self.restarts += 1
                if self.lazy and self.listing is not None:
                    # Its lists are known: wait for the next request rather than retry on a timer.
                    self._wanted = False
                    failures = quick = 0
                    self._set_state(State.FAILED, force=True)
                    continue
                strikes = failures + quick
                if strikes >= CRASH_LOOP_LIMIT:
                    self._set_state(State.FAILED)
                    self.log.error("upstream parked as failed after repeated errors", error=self.last_error)
                    with anyio.move_on_after(PARKED_RETRY) as parked:
                        await self._wait_wake()
                    # Woken (refresh, config change): a full set of attempts. On the
                    # timer: one attempt, then parked again if it fails. A remote
                    # server that was down for a while is thus never given up for good.
                    failures, quick = (CRASH_LOOP_LIMIT - 1 if parked.cancelled_caught else 0), 0
                    continue
                delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(strikes - 1, 0)) * random.uniform(0.8, 1.2)
                self._set_state(State.BACKING_OFF, force=True)  # again if lost: last_error is known now
                with anyio.move_on_after(delay):
                    await self._wait_wake()
        self._set_state(State.STOPPED)

    async def _wait_wake(self) -> None:
        await self._wake.wait()
        self._wake = anyio.Event()

    def wake(self) -> None:
        """Cut a backoff short, or retry a parked server (refresh, a request); start a lazy one."""
        if self.lazy:
            self._wanted = True
            self._last_used = anyio.current_time()
        self._wake.set()

    def sleep_now(self) -> None:
        """Stop a running lazy server as soon as no request is in flight (as if its idle time had passed)."""
        if self.lazy:
            self._last_used = -math.inf
            self._nudge.set()

    async def _load_listing_from_cache(self) -> None:
        """A lazy server's lists from the store; without any, start it once to read them."""
        data = None
        if self._load_cached is not None:
            try:
                data = await self._load_cached(self)
            except Exception as exc:  # noqa: BLE001 - no cache is no reason to fail
                self.log.warning("could not read the cached lists", error=_describe(exc))
        if data:
            self.listing = Listing.from_json(data)
            self.capabilities = dict(data.get("capabilities") or {})
            self.server_info = dict(data.get("server_info") or {})
            self.log.info("lazy server listed from the cache", tools=len(self.listing.tools))
        else:
            self._wanted = True  # first registration: start, list, stop (_last_used is long past)
            self.log.info("lazy server started once to read its lists")

    async def _idle_loop(self, closed: anyio.Event) -> None:
        """Stop a lazy server once it has had no request for its idle timeout."""
        while True:
            remaining = self.idle_timeout
            if self._in_flight == 0:
                remaining = self._last_used + self.idle_timeout - anyio.current_time()
                if remaining <= 0:
                    self._idle_stop = True
                    self._wanted = False
                    self._session = None  # new requests wait for the next start, not this closing session
                    self.log.info("lazy server idle; stopping it", idle_timeout=self.idle_timeout)
                    closed.set()
                    return
            with anyio.move_on_after(remaining):
                await self._nudge.wait()
            self._nudge = anyio.Event()

    def stop(self) -> None:
        self._stopping = True
        if self._cancel is not None:
            self._cancel.cancel()

    async def _connect_and_serve(self) -> None:
        closed = anyio.Event()
        # One scope over the whole connection (anyio scopes must nest): its
        # deadline bounds start-up, then is lifted once the server is ready.
        with anyio.CancelScope(deadline=anyio.current_time() + self.config.connect_timeout) as deadline:
            async with AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(open_transport(self.config, report=self.report))
                session = ClientSession(
                    _WatchedReadStream(read, closed),
                    write,
                    read_timeout_seconds=self.config.connect_timeout,
                    message_handler=self._handle_message,
                    client_info=types.Implementation(name="manifold", version=__version__),
                    sampling_callback=self._sampling,
                    elicitation_callback=self._elicitation,
                    list_roots_callback=self._list_roots,
                    sampling_capabilities=types.SamplingCapability(tools=types.SamplingToolsCapability()),
                )
                await stack.enter_async_context(session)
                init = await session.initialize()
                self.capabilities = init.capabilities.model_dump(by_alias=True, mode="json", exclude_none=True)
                self.server_info = init.server_info.model_dump(by_alias=True, mode="json", exclude_none=True)
                self._session = session
                if isinstance(self.report.raw, HttpChannel):
                    self.report.raw.on_notification = self._handle_message
                try:
                    self.listing = await self._read_listing()
                    deadline.deadline = math.inf
                    self.connects += 1
                    self.last_error = None
                    self._set_state(State.READY)
                    self.log.info("upstream ready", tools=len(self.listing.tools), protocol=init.protocol_version)
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._relist_loop)
                        tg.start_soon(self._probe_loop)
                        if self.lazy:
                            tg.start_soon(self._idle_loop, closed)
                        await closed.wait()
                        tg.cancel_scope.cancel()
                finally:
                    self._session = None
                    self._ready = anyio.Event()
                    if self._idle_stop:
                        self._set_state(State.IDLE)
                    elif self.state == State.READY and not self._stopping:
                        # Lost: say so now, not once the old transport is torn down.
                        self._set_state(State.BACKING_OFF)
        if self._idle_stop:
            self._idle_stop = False
            self.log.info("lazy server stopped")
            return
        if deadline.cancelled_caught:
            raise TimeoutError(f"did not connect within {self.config.connect_timeout:g} s")
        raise ConnectionError("the connection to the server closed")

    def _failure(self, exc: BaseException) -> str:
        """Why a connection ended: how a stdio server's process ended and its last stderr line,
        or the HTTP status an HTTP server answered with."""
        report = self.report
        reason = _describe(exc)
        exit = report.exit_description()
        if exit is not None:
            reason = f"the server process {exit}"
        if report.last_line:
            reason += f" (stderr: {report.last_line})"
        if report.http_error and report.http_error not in reason:
            reason += f" ({report.http_error})"
        return reason

    @property
    def stderr_tail(self) -> list[str]:
        """The last lines a stdio server wrote to stderr, secrets masked; empty for HTTP."""
        return list(self.report.tail)

    def _set_state(self, state: State, *, force: bool = False) -> None:
        if state == self.state and state != State.READY and not force:
            return
        self.state = state
        if state == State.READY:
            self._ready.set()
        changed, self._state_event = self._state_event, anyio.Event()
        changed.set()
        self._on_change(self)

    # --- lists -----------------------------------------------------------------

    async def _read_listing(self) -> Listing:
        caps = self.capabilities
        listing = Listing()
        if "tools" in caps:
            listing.tools = await self._list_all("tools/list", "tools")
        if "prompts" in caps:
            listing.prompts = await self._list_all("prompts/list", "prompts")
        if "resources" in caps:
            listing.resources = await self._list_all("resources/list", "resources")
            listing.resource_templates = await self._list_all("resources/templates/list", "resourceTemplates")
        return listing

    async def _list_all(self, method: str, key: str) -> list[dict[str, Any]]:
        """Follow nextCursor to the end: a large server is never silently cut short."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            result = await self._request(method, {"cursor": cursor} if cursor else None)
            items.extend(result.get(key) or [])
            cursor = result.get("nextCursor")
            if not cursor or cursor in seen:
                return items
            seen.add(cursor)

    async def refresh(self) -> Listing:
        """Re-read the lists now (reconnecting a server that is down)."""
        if self._session is None:
            self.wake()
            with anyio.fail_after(self.config.connect_timeout + 1):
                await self._ready.wait()
            self._last_used = anyio.current_time()
            if self.listing is None:  # pragma: no cover - ready always has a listing
                raise self._not_ready()
            return self.listing
        self._in_flight += 1  # a lazy server is not stopped for idleness halfway through
        try:
            self.listing = await self._read_listing()
        finally:
            self._in_flight -= 1
            self._last_used = anyio.current_time()
        self._on_change(self)
        return self.listing

    async def _probe_loop(self) -> None:
        """After a request lost its connection, ping; a server that does not answer ends the connection.

        A stdio server's exit ends the session by itself, but over streamable
        HTTP a dead server only fails the requests in flight: without this the
        server would stay 'ready' until the next call found it gone.
        """
        self._probe = anyio.Event()  # a loss on the previous connection says nothing of this one
        while True:
            await self._probe.wait()
            self._probe = anyio.Event()
            try:
                await self._request("ping", None, timeout=self.config.connect_timeout)
            except UpstreamError as exc:
                if exc.code != METHOD_NOT_FOUND:  # a server without ping is still a server
                    reason = exc.message.removeprefix(f"server '{self.name}': ")
                    raise ConnectionError(f"the server stopped answering ({reason})") from exc

    async def _relist_loop(self) -> None:
        """Re-read lists after list_changed, coalescing bursts into one read."""
        while True:
            await self._relist.wait()
            await anyio.sleep(LIST_DEBOUNCE)
            self._relist = anyio.Event()
            try:
                self.listing = await self._read_listing()
            except Exception as exc:  # noqa: BLE001
                self.log.warning("re-reading lists failed", error=_describe(exc))
                continue
            self._on_change(self)

    async def _handle_message(self, message: Any) -> None:
        if isinstance(message, Exception):
            self.log.warning("upstream sent an unreadable message", error=_describe(message))
            return
        root = getattr(message, "root", message)
        if isinstance(
            root,
            types.ToolListChangedNotification | types.PromptListChangedNotification | types.ResourceListChangedNotification,
        ):
            self._relist.set()
        if self._on_notification is not None:
            await self._on_notification(self, root)

    # --- requests from the upstream, answered by the client that caused them -----

    async def _ask_client(self, method: str, params: Any) -> Any:
        if self._on_request is None:
            return types.ErrorData(code=INTERNAL_ERROR, message=f"no client can answer {method}")
        return await self._on_request(self, method, params, CURRENT_CALLER.get())

    async def _sampling(self, context: Any, params: types.CreateMessageRequestParams) -> Any:
        return await self._ask_client("sampling/createMessage", params)

    async def _elicitation(self, context: Any, params: types.ElicitRequestParams) -> Any:
        return await self._ask_client("elicitation/create", params)

    async def _list_roots(self, context: Any) -> Any:
        return await self._ask_client("roots/list", None)

    # --- requests ----------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._session is not None

    @property
    def raw_channel(self) -> Any:
        """The live stdio connection's raw channel (frames in, response lines out), or None."""
        return self.report.raw if self._session is not None else None

    def connection_lost(self) -> None:
        """A request lost its connection: have the prober check the server is still there."""
        self._probe.set()

    def _not_ready(self) -> UpstreamError:
        detail = f" ({self.last_error})" if self.last_error else ""
        return UpstreamError(
            CONNECTION_CLOSED, f"server '{self.name}' is not connected (state: {self.state.value}){detail}"
        )

    async def request(
        self,
        method: str,
        params: Mapping[str, Any] | None,
        *,
        timeout: float | None = None,
        on_progress: ProgressFn | None = None,
    ) -> dict[str, Any]:
        """Send one request on the live session and return the raw result dict.

        Raw dicts, not models: the result goes back to the client as the
        upstream wrote it, and nothing is parsed twice on the hot path.
        """
        if self.lazy:
            self._in_flight += 1
            try:
                return await self._lazy_request(method, params, timeout=timeout, on_progress=on_progress)
            finally:
                self._in_flight -= 1
                self._last_used = anyio.current_time()
        return await self._request(method, params, timeout=timeout, on_progress=on_progress)

    async def _lazy_request(
        self,
        method: str,
        params: Mapping[str, Any] | None,
        *,
        timeout: float | None,
        on_progress: ProgressFn | None,
    ) -> dict[str, Any]:
        """Start a sleeping lazy server (its first request's latency includes the start), then send."""
        if self._session is None and self.config.enabled and not self._stopping:
            restarts = self.restarts
            self.wake()
            with anyio.move_on_after(self.config.connect_timeout + 1):
                while self._session is None and self.restarts == restarts and not self._stopping:
                    await self._state_event.wait()
        return await self._request(method, params, timeout=timeout, on_progress=on_progress)

    async def _request(
        self,
        method: str,
        params: Mapping[str, Any] | None,
        *,
        timeout: float | None = None,
        on_progress: ProgressFn | None = None,
    ) -> dict[str, Any]:
        session = self._session
        if session is None:
            raise self._not_ready()
        limit = timeout if timeout is not None else self.config.timeout
        data: dict[str, Any] = {"method": method}
        if params is not None:
            data["params"] = dict(params)
        opts: dict[str, Any] = {"timeout": limit}
        if on_progress is not None:
            opts["on_progress"] = on_progress
        # The session's version stamp (protocol headers on HTTP) without a
        # round trip through the typed request models.
        session._stamp(data, opts)  # noqa: SLF001
        caller = CURRENT_CALLER.get()
        if caller is not None:
            self.callers.append(caller)
        try:
            return await session._dispatcher.send_raw_request(method, data.get("params"), opts)  # noqa: SLF001
        except MCPError as exc:
            if exc.code == REQUEST_TIMEOUT:
                raise UpstreamError(
                    REQUEST_TIMEOUT, f"server '{self.name}' did not answer {method} within {limit:g} s"
                ) from exc
            if exc.code == CONNECTION_CLOSED and _lost_transport(exc.message):
                self._probe.set()
                detail = f" ({exc.message})" if exc.message != "Connection closed" else ""
                raise UpstreamError(
                    CONNECTION_CLOSED, f"server '{self.name}': connection lost during {method}{detail}"
                ) from exc
            raise UpstreamError(exc.code, f"server '{self.name}': {exc.message}", exc.data) from exc
        except Exception as exc:  # transport faults surface as plain exceptions
            raise UpstreamError(INTERNAL_ERROR, f"server '{self.name}': {_describe(exc)}") from exc
        finally:
            if caller is not None:
                self.callers.remove(caller)

    async def notify(self, method: str, params: Mapping[str, Any] | None) -> None:
        session = self._session
        if session is None:
            return
        data: dict[str, Any] = {"method": method, "params": dict(params) if params is not None else None}
        opts: dict[str, Any] = {}
        session._stamp(data, opts)  # noqa: SLF001
        await session._dispatcher.notify(method, data.get("params"), opts)  # noqa: SLF001


def _describe(exc: BaseException) -> str:
    """A one-line reason, unwrapping exception groups down to the first real cause."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError | FileNotFoundError) and not str(exc):
        text = type(exc).__name__
    return text.splitlines()[0] if text else type(exc).__name__
