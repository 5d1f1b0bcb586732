"""The legacy SSE face's lean path: a plain tools/call POSTed to /messages/ without the SDK's server.

On the SSE transport a client POSTs each message to /messages/?session_id=…
(answered 202) and reads every answer from its one event stream. A plain
tools/call (faces/lean.py) is answered 202 here at once and goes to the
upstream's raw channel; what comes back (log lines, then the answer) is
written to the session's stream as events framed as the SDK's server frames
its own, straight onto the stream's response: not parsed into models for the
SDK's writer to serialise again, two task hops later. Both write whole events
to one response, and the server writes each at once, so events never mix.
The checks the SDK's message endpoint makes come first (Host/Origin, the
session's owner, the body limit); anything else goes to the SDK's endpoint.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs
from uuid import UUID

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, authorization_context
from mcp.server.connection import Connection
from mcp.server.sse import SseServerTransport
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from manifold.faces import lean
from manifold.faces.lean import LeanCall
from manifold.faces.lean_http import LeanHttp, _Exchange, sse_event
from manifold.faces.sessions import _buffer_body

_SESSION_IN_ENDPOINT = re.compile(rb"session_id=([0-9a-f]{32})")


class LeanSse:
    """Lean tools/call for the SSE face's sessions."""

    def __init__(
        self, lean_http: LeanHttp, sse: SseServerTransport, security: TransportSecuritySettings | None, *, limit: int
    ) -> None:
        self.lean = lean_http
        self.sse = sse
        self._security = TransportSecurityMiddleware(security)
        self._limit = limit
        self.streams: dict[str, Send] = {}
        """Each open session's event stream: its response's ASGI send (the SDK's writer sends there too)."""
        self.connections: weakref.WeakValueDictionary[str, Connection] = weakref.WeakValueDictionary()
        """Each session's connection, once its first request went through (faces/mcp.py)."""

    @asynccontextmanager
    async def session(self, scope: Scope, receive: Receive, send: Send) -> AsyncIterator[tuple[Any, Any]]:
        """`sse.connect_sse`, with the session's event stream known here by the session's id
        (read from the endpoint event, the first thing the SDK sends on the stream)."""
        known: list[str] = []

        async def watched(message: Message) -> None:
            if not known and message["type"] == "http.response.body":
                found = _SESSION_IN_ENDPOINT.search(message.get("body", b""))
                if found is not None:
                    known.append(found.group(1).decode())
                    self.streams[known[0]] = send
            await send(message)

        try:
            async with self.sse.connect_sse(scope, receive, watched) as (read, write):
                yield read, write
        finally:
            if known:
                self.streams.pop(known[0], None)

    async def post(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The /messages/ endpoint: lean when it can be, the SDK's otherwise."""
        if scope["method"] == "POST" and self._small(scope):
            session_id = _session_id(scope)
            stream = self.streams.get(session_id) if session_id else None
            connection = self.connections.get(session_id) if session_id else None
            if session_id and stream is not None and connection is not None:
                body, receive = await _buffer_body(receive)
                if (lean.HOT in body or lean.CANCEL in body) and await self._lean(
                    scope, session_id, stream, connection, body, send
                ):
                    return
        await self.sse.handle_post_message(scope, receive, send)

    def _small(self, scope: Scope) -> bool:
        """A body of declared length within the SDK's limit (else its endpoint and limit deal with it)."""
        for name, value in scope["headers"]:
            if name == b"content-length":
                return value.isdigit() and int(value) <= self._limit
        return False

    async def _lean(self, scope: Scope, session_id: str, stream: Send, connection: Connection, body: bytes, send: Send) -> bool:
        if await self._security.validate_request(Request(scope), is_post=True) is not None:
            return False
        user = scope.get("user")
        requestor = authorization_context(user) if isinstance(user, AuthenticatedUser) else None
        if requestor != self.sse._session_owners.get(UUID(hex=session_id)):  # noqa: SLF001
            return False
        frame = lean.parse(body)
        if frame is None:
            return False
        if frame["method"] == "notifications/cancelled":
            return await self.lean.cancel(session_id, frame, lambda: _accepted(send))
        if frame["method"] != "tools/call":
            return False  # a tools/list: the SDK's server answers it here (from the cached pages)

        async def respond(call: LeanCall, exchange: _Exchange) -> None:
            await _accepted(send)
            async for frames, _ in exchange.batches(call):
                events = b"".join(map(sse_event, frames))
                try:
                    await stream({"type": "http.response.body", "body": events, "more_body": True})
                except (RuntimeError, OSError):  # the stream has ended: the client left
                    return

        return await self.lean.call(session_id, connection, frame, respond, get_stream=True, face="sse")


def _session_id(scope: Scope) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("session_id")
    return values[0] if values and len(values[0]) == 32 else None


async def _accepted(send: Send) -> None:
    """202 with no body (the SDK's says "Accepted"): the server then writes it in one go, not two."""
    await send({"type": "http.response.start", "status": 202, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})
