"""Streamable-HTTP sessions that any replica can serve.

The SDK's session manager keeps sessions in memory: a request whose
`Mcp-Session-Id` was minted by another replica gets 404. Behind a plain
round-robin load balancer that is every other request. Here the session id
itself carries what a session needs after its handshake — the negotiated
protocol version and the client's `initialize` params (capabilities, info) —
compressed and signed with a secret the replicas share
(`MANIFOLD_SESSION_SECRET`):

    m1.<base64url(zlib(json))>.<base64url(HMAC-SHA256 prefix)>

A replica that meets an id it does not hold checks the signature and, if it
is good, re-creates the session as already initialised, then serves the
request. Nothing is written per session, and a forged or altered id is a 404
like any unknown one. What stays per replica is listed in deploy/README.md.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import uuid
import zlib
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, Self

import anyio
import structlog
from anyio.abc import TaskStatus
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, authorization_context
from mcp.server.connection import Connection
from mcp.server.runner import serve_connection
from mcp.server.streamable_http import (
    GET_STREAM_KEY,
    MCP_SESSION_ID_HEADER,
    StreamableHTTPServerTransport,
    check_accept_headers,
)
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecurityMiddleware
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher, coerce_request_id
from mcp.shared.message import SessionMessage
from mcp_types import ErrorData, InitializeRequestParams, JSONRPCNotification
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION
from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from manifold.faces import lean
from manifold.faces.lean_http import LeanHttp

log = structlog.get_logger("manifold.sessions")

SECRET_ENV = "MANIFOLD_SESSION_SECRET"
PREFIX = "m1"
MAX_ID_LENGTH = 4096
"""Longer ids (huge client capabilities) are not minted: such a session stays on its replica."""
_SIG_BYTES = 16
RELAY_LIMIT = 7900
"""Largest relayed answer in bytes (PostgreSQL's NOTIFY payload limit is 8000)."""
RELAYED_NOTIFICATIONS = frozenset({"notifications/resources/updated"})
"""Session notifications with no request to ride on, sent by the replica that holds the subscription."""
_ID_SPACE = 2**52  # JSON-safe integers; a random base per session makes ids unique across replicas

_minted: ContextVar[str | None] = ContextVar("manifold_minted_session_id", default=None)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionTokens:
    """Mints and reads signed session ids."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    @classmethod
    def from_env(cls) -> tuple[SessionTokens, bool]:
        """The shared secret from the environment, else a random one (then sessions stay on this process)."""
        value = os.environ.get(SECRET_ENV)
        if value:
            return cls(value.encode()), True
        return cls(secrets.token_bytes(32)), False

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._secret, body.encode("ascii"), hashlib.sha256).digest()[:_SIG_BYTES])

    def mint(self, protocol_version: str, params: dict[str, Any]) -> str | None:
        state = {"n": uuid.uuid4().hex, "v": protocol_version, "p": params}
        raw = json.dumps(state, separators=(",", ":"), sort_keys=True).encode()
        body = f"{PREFIX}.{_b64(zlib.compress(raw, 9))}"
        session_id = f"{body}.{self._sign(body)}"
        return session_id if len(session_id) <= MAX_ID_LENGTH else None

    def read(self, session_id: str) -> tuple[str, InitializeRequestParams] | None:
        """(protocol version, initialize params) from a genuine id; None for anything else."""
        if len(session_id) > MAX_ID_LENGTH or not session_id.startswith(PREFIX + "."):
            return None
        body, _, signature = session_id.rpartition(".")
        if not hmac.compare_digest(signature, self._sign(body)):
            return None
        try:
            state = json.loads(zlib.decompress(_unb64(body.split(".", 1)[1])))
            version = state["v"]
            params = InitializeRequestParams.model_validate(state["p"], by_name=False)
        except (ValueError, KeyError, TypeError, zlib.error, ValidationError):
            return None
        if version not in HANDSHAKE_PROTOCOL_VERSIONS:
            return None
        return version, params


def negotiate(params: dict[str, Any]) -> str:
    """The version the SDK's handshake agrees to for these `initialize` params."""
    requested = params.get("protocolVersion")
    return requested if requested in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION


async def _buffer_body(receive: Receive) -> tuple[bytes, Receive]:
    """Read the whole request body; a `receive` that replays it, then carries on with the original."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            replay: list[Message] = [message]
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            replay = []
            break
    body = b"".join(chunks)
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}, *replay]

    async def replaying() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return body, replaying


def _initialize_params(body: bytes) -> dict[str, Any] | None:
    try:
        message = json.loads(body)
    except ValueError:
        return None
    if not isinstance(message, dict) or message.get("method") != "initialize":
        return None
    params = message.get("params")
    return params if isinstance(params, dict) else None


class SharedSessionManager(StreamableHTTPSessionManager):
    """The SDK's manager, with session ids any replica holding the secret can bring back to life."""

    def __init__(self, *args: Any, tokens: SessionTokens, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tokens = tokens
        self.recovered = 0
        self.relayed = 0
        self.relay: Callable[[dict[str, Any]], Awaitable[None]] | None = None
        self._dispatchers: dict[str, JSONRPCDispatcher[Any]] = {}
        self._writers: dict[str, Any] = {}
        self._connections: dict[str, Connection] = {}
        self.lean: LeanHttp | None = None
        self._security = TransportSecurityMiddleware(self.security_settings)

    def _has_stream(self, session_id: str) -> bool:
        transport = self._server_instances.get(session_id)
        return transport is not None and GET_STREAM_KEY in transport._request_streams

    def deliver(self, message: dict[str, Any]) -> None:
        """Session traffic another replica relayed: an answer to a request sent here, or a
        notification for a session whose GET stream is here."""
        if "notify" in message:
            self._deliver_notification(message)
            return
        session_id, reply = message.get("reply"), message.get("m")
        if not isinstance(session_id, str) or not isinstance(reply, dict):
            return
        dispatcher = self._dispatchers.get(session_id)
        if dispatcher is None or not _waits_for(dispatcher, reply.get("id")):
            return
        if "result" in reply:
            dispatcher._resolve_pending(reply["id"], reply["result"])
        else:
            try:
                error = ErrorData.model_validate(reply.get("error"))
            except ValidationError:
                return
            dispatcher._resolve_pending(reply["id"], error)

    def _deliver_notification(self, message: dict[str, Any]) -> None:
        session_id = message.get("notify")
        if not isinstance(session_id, str) or not self._has_stream(session_id):
            return
        writer = self._writers.get(session_id)
        try:
            notification = JSONRPCNotification.model_validate(message.get("m"))
        except ValidationError:
            return
        if writer is not None and self._task_group is not None and notification.method in RELAYED_NOTIFICATIONS:
            self._task_group.start_soon(_send_quietly, writer, SessionMessage(notification))

    async def _outgoing(self, session_id: str, writer: Any, item: SessionMessage) -> None:
        """Every message a session sends: a stray session notification goes to the replica with the stream."""
        message = item.message
        if (
            isinstance(message, JSONRPCNotification)
            and message.method in RELAYED_NOTIFICATIONS
            and getattr(item.metadata, "related_request_id", None) is None
            and self.relay is not None
            and not self._has_stream(session_id)
        ):
            dumped = message.model_dump(mode="json", by_alias=True, exclude_none=True)
            if len(json.dumps(dumped)) <= RELAY_LIMIT:
                await self.relay({"notify": session_id, "m": dumped})
                return
        await writer.send(item)

    async def _relayed(self, session_id: str, scope: Scope, body: bytes, send: Send) -> bool:
        """Relay the client's answer to a request another replica sent; True if it was (202 sent).

        Only for a request the SDK itself would accept: the session's own credential, and the
        transport's Host/Origin checks passed (anything else takes the SDK's path and its error).
        """
        if self.relay is None or len(body) > RELAY_LIMIT:
            return False
        if _requestor(scope) != self._session_owners.get(session_id):
            return False
        if await self._security.validate_request(Request(scope), is_post=True) is not None:
            return False
        try:
            message = json.loads(body)
        except ValueError:
            return False
        if not isinstance(message, dict) or "method" in message or "id" not in message:
            return False
        if not ("result" in message or "error" in message):
            return False
        dispatcher = self._dispatchers.get(session_id)
        if dispatcher is not None and _waits_for(dispatcher, message["id"]):
            return False  # ours: the SDK delivers it
        await self.relay({"reply": session_id, "m": message})
        self.relayed += 1
        await send({"type": "http.response.start", "status": 202, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return True

    async def _handle_stateful_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        session_id = _header(scope, MCP_SESSION_ID_HEADER)
        if session_id is None and scope.get("method") == "POST":
            body, receive = await _buffer_body(receive)
            params = _initialize_params(body)
            minted = self.tokens.mint(negotiate(params), _wire_params(params)) if params is not None else None
            token = _minted.set(minted)
            try:
                await super()._handle_stateful_request(scope, receive, send)
            finally:
                _minted.reset(token)
            return
        if session_id is not None and session_id not in self._server_instances:
            state = self.tokens.read(session_id)
            if state is not None:
                await self._recover(session_id, *state, requestor=_requestor(scope))
        if session_id is not None and scope.get("method") == "POST" and session_id in self._server_instances:
            body, receive = await _buffer_body(receive)
            if await self._relayed(session_id, scope, body, send):
                return
            if (lean.HOT in body or lean.CANCEL in body or lean.LIST in body) and await self._lean(
                session_id, scope, body, send
            ):
                return
        await super()._handle_stateful_request(scope, receive, send)

    async def _lean(self, session_id: str, scope: Scope, body: bytes, send: Send) -> bool:
        """Hand a plain tools/call (or its cancellation) or tools/list to the lean path, if the SDK would take it."""
        connection = self._connections.get(session_id)
        transport = self._server_instances[session_id]
        if self.lean is None or connection is None or transport.is_terminated:
            return False
        if _requestor(scope) != self._session_owners.get(session_id):
            return False
        request = Request(scope)
        if await self._security.validate_request(request, is_post=True) is not None:
            return False
        has_json, has_sse = check_accept_headers(request)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not (has_json and (has_sse or self.json_response)) or content_type != "application/json":
            return False
        return await self.lean.handle(
            session_id,
            connection,
            body,
            send,
            get_stream=self._has_stream(session_id),
            query=request.query_params,
            sse=not self.json_response,
        )

    async def _serve_opening_request(
        self, http_transport: StreamableHTTPServerTransport, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """As the SDK does, but the session runs on `_run_session` (its dispatcher known, its ids unique)."""
        session_id = http_transport.mcp_session_id
        assert session_id is not None and self._task_group is not None
        established = False
        try:
            await self._task_group.start(self._run_session, session_id, http_transport, None)
            status: int | None = None

            async def watch(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            await http_transport.handle_request(scope, receive, watch)
            established = status is not None and status < 400
        finally:
            if not established:
                await self._discard_session(session_id, http_transport)

    def _admit_session(self, requestor: Any) -> StreamableHTTPServerTransport | None:
        transport = super()._admit_session(requestor)
        minted = _minted.get()
        if transport is None or minted is None:
            return transport
        # Re-key the session the SDK just registered under the signed id.
        old = transport.mcp_session_id
        assert old is not None
        self._server_instances.pop(old, None)
        owner = self._session_owners.pop(old, None)
        transport.mcp_session_id = minted
        self._server_instances[minted] = transport
        if owner is not None:
            self._session_owners[minted] = owner
        return transport

    async def _recover(
        self, session_id: str, version: str, params: InitializeRequestParams, *, requestor: Any
    ) -> None:
        """Re-create a session another replica (or an earlier process) opened, already initialised."""
        async with self._session_creation_lock:
            if session_id in self._server_instances:
                return
            if self.max_sessions is not None and len(self._server_instances) >= self.max_sessions:
                return  # the SDK answers 404; the client opens a new session
            transport = StreamableHTTPServerTransport(
                mcp_session_id=session_id,
                is_json_response_enabled=self.json_response,
                event_store=self.event_store,
                security_settings=self.security_settings,
                retry_interval=self.retry_interval,
                idle_timeout=self.session_idle_timeout,
            )
            # Registered only once its loop runs: a concurrent request for the same id waits on
            # the lock above instead of meeting a transport that is not connected yet.
            assert self._task_group is not None
            await self._task_group.start(self._run_session, session_id, transport, (version, params))
            self._server_instances[session_id] = transport
            if requestor is not None:
                self._session_owners[session_id] = requestor
        self.recovered += 1
        log.info("session recovered from its id", session=session_id[:16], protocol_version=version)

    async def _run_session(
        self,
        session_id: str,
        transport: StreamableHTTPServerTransport,
        recovered: tuple[str, InitializeRequestParams] | None,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """One session's server loop: a new one (handshake to come) or a recovered one (already initialised)."""
        try:
            async with transport.connect() as (read_stream, write_stream):
                self._writers[session_id] = write_stream
                outgoing = _Outgoing(write_stream, lambda item: self._outgoing(session_id, write_stream, item))
                dispatcher: JSONRPCDispatcher[Any] = JSONRPCDispatcher(
                    read_stream, outgoing, inline_methods=frozenset({"initialize"})
                )
                dispatcher._next_id = secrets.randbelow(_ID_SPACE)
                self._dispatchers[session_id] = dispatcher
                if recovered is None:
                    connection = Connection.for_loop(dispatcher, session_id=session_id)
                else:
                    version, params = recovered
                    connection = Connection.for_loop(
                        dispatcher, session_id=session_id, protocol_version_hint=version
                    )
                    connection.client_params = params
                    connection.protocol_version = version
                    connection.initialized.set()
                self._connections[session_id] = connection
                task_status.started()
                idle_scope = transport.idle_scope or anyio.CancelScope()
                with idle_scope:
                    await serve_connection(
                        self.app, dispatcher, connection=connection, lifespan_state=self._lifespan_state
                    )
            if transport.idle_scope is not None and transport.idle_scope.cancelled_caught:
                log.info("session idle timeout", session=session_id[:16])
        except Exception:
            log.exception("session crashed", session=session_id[:16])
        finally:
            self._dispatchers.pop(session_id, None)
            self._writers.pop(session_id, None)
            self._connections.pop(session_id, None)
            await self._discard_session(session_id, transport)


class _Outgoing:
    """A session's write stream whose `send` goes through the manager first."""

    def __init__(self, inner: Any, send: Callable[[SessionMessage], Awaitable[None]]) -> None:
        self._inner = inner
        self.send = send

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def __aenter__(self) -> Self:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> Any:
        return await self._inner.__aexit__(*exc)


async def _send_quietly(writer: Any, item: SessionMessage) -> None:
    try:
        await writer.send(item)
    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
        pass


def _waits_for(dispatcher: JSONRPCDispatcher[Any], request_id: Any) -> bool:
    try:
        return coerce_request_id(request_id) in dispatcher._pending
    except (TypeError, ValueError):
        return False


def _wire_params(params: dict[str, Any]) -> dict[str, Any]:
    """What a session needs of the client's `initialize` params (its protocol version is negotiated)."""
    kept = {k: params[k] for k in ("capabilities", "clientInfo") if k in params}
    kept.setdefault("capabilities", {})
    kept.setdefault("clientInfo", {"name": "unknown", "version": "0"})
    kept["protocolVersion"] = negotiate(params)
    return kept


def _header(scope: Scope, name: str) -> str | None:
    key = name.lower().encode("latin-1")
    for k, v in scope.get("headers", []):
        if k == key:
            return v.decode("latin-1")
    return None


def _requestor(scope: Scope) -> Any:
    user = scope.get("user")
    return authorization_context(user) if isinstance(user, AuthenticatedUser) else None


__all__ = ["SECRET_ENV", "SessionTokens", "SharedSessionManager"]
