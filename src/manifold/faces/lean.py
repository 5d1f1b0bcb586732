"""The lean path for tools/call, shared by the stdio and HTTP faces.

A plain tools/call for a tool of a ready upstream skips the SDK on both sides:
the face re-encodes the request with the upstream's tool name and an id of the
upstream channel's own, the channel (a stdio server's pipes, or a
streamable-HTTP server's keep-alive pool) sends it, and the response comes
back as the bytes the server wrote with only its id replaced. What is not
plain (a progress token, extra params, a tool the catalogue does not know yet,
a 2026-07-28 client, tracing on, a server on SSE or behind a proxy) takes the
full path, whose behaviour this one copies: a lean call is a caller (sampling,
elicitation, roots and logs during it reach its client), is cancelled upstream
when its client cancels it, times out like any call, fails at once when its
server goes away, and is counted in the metrics. A plain tools/list is
answered here too, with the face's cached page as it was encoded once
(faces/mcp.py `ToolPages`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import anyio
import mcp_types as types
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from manifold import tracing
from manifold.faces.disclosure import META_NAMES

if TYPE_CHECKING:
    from manifold.gateway import Gateway
    from manifold.upstream.connection import Upstream

HOT = b'"tools/call"'
CANCEL = b'"notifications/cancelled"'
LIST = b'"tools/list"'
_METHODS = frozenset({"tools/call", "notifications/cancelled", "tools/list"})
_IS_ERROR = re.compile(rb'"isError"\s*:\s*true')
_PLAIN_PARAMS = frozenset({"name", "arguments", "_meta"})
ENVELOPE_KEYS = frozenset(
    {
        types.PROTOCOL_VERSION_META_KEY,
        types.CLIENT_INFO_META_KEY,
        types.CLIENT_CAPABILITIES_META_KEY,
        types.LOG_LEVEL_META_KEY,
    }
)
"""The 2026-07-28 envelope describes the client's hop to Manifold: never forwarded."""


def parse(data: bytes) -> dict[str, Any] | None:
    """A JSON-RPC tools/call, tools/list or notifications/cancelled frame, else None (the SDK's to judge)."""
    try:
        frame = json.loads(data)
    except ValueError:
        return None
    if not isinstance(frame, dict) or frame.get("jsonrpc") != "2.0":
        return None
    return frame if frame.get("method") in _METHODS else None


def ready(connection: Any) -> bool:
    """The client's session is past its handshake, on a version whose results need no envelope."""
    return bool(connection.initialize_accepted) and connection.protocol_version not in MODERN_PROTOCOL_VERSIONS


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def result_frame(request_id: int | str, result: bytes) -> bytes:
    """A JSON-RPC answer around an already encoded result (a cached tools/list page)."""
    return b"".join((b'{"jsonrpc":"2.0","id":', json.dumps(request_id).encode(), b',"result":', result, b"}\n"))


Finish = Callable[["LeanCall", bytes, str], None]


class LeanCall:
    """One tools/call on the lean path: the client's id, the upstream's, and the way back."""

    __slots__ = ("request_id", "id_json", "upstream", "channel", "tool", "session", "finish", "uid", "started", "deadline")

    def __init__(self, request_id: int | str, upstream: Upstream, channel: Any, tool: str, session: Any, finish: Finish) -> None:
        self.request_id = request_id
        self.id_json = json.dumps(request_id).encode()
        self.upstream = upstream
        self.channel = channel
        self.tool = tool
        self.session = session
        self.finish = finish
        self.uid = 0
        self.started = time.perf_counter()
        self.deadline = anyio.current_time() + upstream.config.timeout

    # Called by the upstream channel (upstream/stdio.py RawCall).

    def answered(self, line: bytes, id_span: tuple[int, int], is_error: bool) -> None:
        if is_error:
            with suppress(ValueError, AttributeError, TypeError):
                self._error(json.loads(line)["error"])
                return
            self._error({"code": types.INTERNAL_ERROR, "message": "the server sent an unreadable error"})
            return
        line = line.rstrip()
        if b"\n" in line or b"\r" in line:  # JSON indented over lines (an HTTP server's): one line, the same JSON
            line = line.replace(b"\r", b" ").replace(b"\n", b" ")
        start, end = id_span
        frame = b"".join((line[:start], self.id_json, line[end:], b"\n"))
        self.finish(self, frame, "error" if _IS_ERROR.search(line) else "ok")

    def answered_message(self, message: Any) -> None:
        if isinstance(message, types.JSONRPCError):
            self._error(message.error.model_dump(by_alias=True, exclude_none=True))
            return
        result = message.result
        frame = dumps({"jsonrpc": "2.0", "id": self.request_id, "result": result})
        self.finish(self, frame, "error" if isinstance(result, dict) and result.get("isError") else "ok")

    def lost(self) -> None:
        self.upstream.connection_lost()
        self.fail(CONNECTION_CLOSED, f"server '{self.upstream.name}': connection lost during tools/call")

    def failed(self, code: int, message: str, data: Any = None) -> None:
        self.fail(code, f"server '{self.upstream.name}': {message}", data)

    def _error(self, error: dict[str, Any]) -> None:
        self.failed(error.get("code", types.INTERNAL_ERROR), error.get("message", ""), error.get("data"))

    def fail(self, code: int, message: str, data: Any = None) -> None:
        error: dict[str, Any] = {"code": code, "message": message}
        if data is not None:
            error["data"] = data
        self.finish(self, dumps({"jsonrpc": "2.0", "id": self.request_id, "error": error}), "failed")


class Plan:
    """Where a plain tools/call goes: the upstream, its raw channel, and the params to send."""

    __slots__ = ("upstream", "channel", "tool", "params")

    def __init__(self, upstream: Upstream, channel: Any, tool: str, params: dict[str, Any]) -> None:
        self.upstream = upstream
        self.channel = channel
        self.tool = tool
        self.params = params


def plan(gateway: Gateway, params: Any) -> Plan | None:
    """The route of a plain tools/call, or None when it must take the full path."""
    if tracing.enabled or not isinstance(params, dict) or not params.keys() <= _PLAIN_PARAMS:
        return None
    name = params.get("name")
    arguments = params.get("arguments") or {}
    meta = params.get("_meta")
    if not isinstance(name, str) or name in META_NAMES or not isinstance(arguments, dict):
        return None
    if meta is not None:
        if not isinstance(meta, dict) or "progressToken" in meta:
            return None  # progress is mapped by the SDK's session: the full path
        meta = {key: value for key, value in meta.items() if key not in ENVELOPE_KEYS}
    route = gateway.catalog.route_tool(name)
    if route is None:
        return None  # the full path waits for servers still starting, and has the error
    upstream = gateway.upstreams.get(route.server)
    channel = upstream.raw_channel if upstream is not None else None
    if upstream is None or channel is None:
        return None
    tool = route.name
    shaping = upstream.config.tools
    if shaping is not None and shaping.rename:
        tool = {new: old for old, new in shaping.rename.items()}.get(tool, tool)
    forwarded: dict[str, Any] = {"name": tool, "arguments": arguments}
    if meta:
        forwarded["_meta"] = meta
    return Plan(upstream, channel, tool, forwarded)


def start(route: Plan, request_id: int | str, session: Any, finish: Finish) -> LeanCall | None:
    """Register a call on its channel; None if the channel just closed."""
    call = LeanCall(request_id, route.upstream, route.channel, route.tool, session, finish)
    try:
        call.uid = route.channel.start(call)
    except anyio.BrokenResourceError:
        return None
    route.upstream.callers.append(call)
    return call


async def send(call: LeanCall, params: dict[str, Any]) -> None:
    frame = dumps({"jsonrpc": "2.0", "id": call.uid, "method": "tools/call", "params": params})
    try:
        await call.channel.call(call.uid, frame)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        if call.channel.forget(call.uid) is not None:
            call.lost()


def done(gateway: Gateway, call: LeanCall, outcome: str) -> None:
    """Account for a finished call: no longer a caller of its server, and in the metrics."""
    with suppress(ValueError):
        call.upstream.callers.remove(call)
    gateway.metrics.observe_call(call.upstream.name, call.tool, time.perf_counter() - call.started, outcome)


async def cancel_upstream(call: LeanCall, reason: Any) -> None:
    """Tell the upstream a call is abandoned (cancelled by its client, or timed out)."""
    if call.channel.forget(call.uid) is None:
        return  # already answered or the connection is gone
    notice: dict[str, Any] = {"requestId": call.uid}
    if isinstance(reason, str):
        notice["reason"] = reason
    with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        await call.channel.notify(dumps({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": notice}))


async def time_out(call: LeanCall) -> None:
    """Fail a call past its server's timeout, and tell the server, in the SDK's words."""
    limit = call.upstream.config.timeout
    call.fail(REQUEST_TIMEOUT, f"server '{call.upstream.name}' did not answer tools/call within {limit:g} s")
    await cancel_upstream(call, f"timed out after {limit}s")


def cancelled_id(frame: Any) -> int | str | None:
    """The request id a notifications/cancelled frame names, if it is one."""
    if not isinstance(frame, dict) or frame.get("method") != "notifications/cancelled":
        return None
    params = frame.get("params")
    request_id = params.get("requestId") if isinstance(params, dict) else None
    if isinstance(request_id, bool) or not isinstance(request_id, int | str):
        return None
    return request_id
