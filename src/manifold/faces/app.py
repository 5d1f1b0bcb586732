"""The HTTP face: streamable HTTP at /mcp, legacy SSE at /sse, health, and the REST API.

One ASGI app whose lifespan runs the gateway, so everything a request can
reach is started before the first request and stopped after the last.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from typing import Any

import anyio
import structlog
from fastapi import FastAPI
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE, TransportSecuritySettings
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from manifold import __version__
from manifold.faces.lean_http import LeanHttp
from manifold.faces.lean_sse import LeanSse
from manifold.faces.mcp import McpFace
from manifold.faces.rest import ApiSettings, create_router
from manifold.faces.sessions import SECRET_ENV, SessionTokens, SharedSessionManager
from manifold.gateway import Gateway
from manifold.logging import masker
from manifold.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from manifold.registry import Registry


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def security_settings(host: str) -> TransportSecuritySettings | None:
    """DNS-rebinding protection whenever the gateway is bound to loopback."""
    if not is_loopback(host):
        return None
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost", "[::1]"],
        allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
    )


def server_health(gateway: Gateway) -> dict[str, Any]:
    servers = {}
    for name, upstream in gateway.upstreams.items():
        listing = upstream.listing
        servers[name] = {
            "state": upstream.state.value,
            "transport": upstream.config.mcp_server_type,
            "lazy": upstream.lazy,
            "tools": len(listing.tools) if listing else 0,
            "prompts": len(listing.prompts) if listing else 0,
            "resources": len(listing.resources) if listing else 0,
            "restarts": upstream.restarts,
            "last_error": masker.mask(upstream.last_error) if upstream.last_error else None,
            "stderr_tail": [masker.mask(line) for line in upstream.stderr_tail],
        }
    return servers


class _App(FastAPI):
    """FastAPI, with `/mcp` and the SSE face's `/messages/` handed to their endpoints before
    routing and middleware.

    Every MCP request is one of these; FastAPI's routing and middleware stack
    cost more CPU per request than the lean tools/call path itself.
    """

    mcp_endpoint: Any = None
    sse_messages: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path == "/mcp" and self.mcp_endpoint is not None:
                await self.mcp_endpoint(scope, receive, send)
                return
            if path.startswith("/messages/") and self.sse_messages is not None:
                await self.sse_messages(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(
    gateway: Gateway,
    *,
    host: str = "127.0.0.1",
    extra_lifespan: Any = None,
    registry: Registry | None = None,
    api: ApiSettings | None = None,
) -> FastAPI:
    face = McpFace(gateway)
    security = security_settings(host)
    tokens, shared_secret = SessionTokens.from_env()
    sessions = SharedSessionManager(app=face.server, security_settings=security, tokens=tokens)
    sessions.lean = LeanHttp(face)
    if registry is not None and registry.store.shared:
        sessions.relay = registry.publish_message
        registry.add_message_listener(sessions.deliver)
    if registry is not None and registry.store.shared and not shared_secret:
        structlog.get_logger("manifold.http").warning(
            f"the store is shared but {SECRET_ENV} is not set: MCP sessions stay on this replica"
        )
    sse = SseServerTransport("/messages/", security_settings=security)
    lean_sse = LeanSse(sessions.lean, sse, security, limit=DEFAULT_MAX_REQUEST_BODY_SIZE)
    face.tracker.sse_sessions = lean_sse.connections

    async def handle_sse(scope: Scope, receive: Receive, send: Send) -> None:
        async with lean_sse.session(scope, receive, send) as (read, write):
            await face.server.run(read, write, face.initialization_options())

    class _SseEndpoint:
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await handle_sse(scope, receive, send)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The registry (store, API servers) runs inside the running gateway.
        managed = registry.running() if registry is not None else nullcontext()
        async with gateway.running(), managed, sessions.run(), anyio.create_task_group() as tg:
            tg.start_soon(face.run_notifier)
            if extra_lifespan is not None:
                async with extra_lifespan(app):
                    yield
            else:
                yield
            tg.cancel_scope.cancel()

    app = _App(
        title="Manifold",
        version=__version__,
        description="One MCP server in front of many; Letta-compatible management API under /v1/mcp-servers.",
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    app.state.face = face

    gateway.metrics.watch(gateway, clients=lambda: len(face.tracker.connections))

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics: calls, errors and latency per server and tool; upstream states."""
        return Response(gateway.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> JSONResponse:
        servers = server_health(gateway)
        ready = sum(1 for s in servers.values() if s["state"] == "ready")
        return JSONResponse({"status": "ok", "version": __version__, "ready": ready, "servers": servers})

    if registry is not None:
        app.state.registry = registry
        app.include_router(create_router(registry, api))

    app.mcp_endpoint = StreamableHTTPASGIApp(sessions)
    app.router.routes.append(Route("/mcp", endpoint=app.mcp_endpoint, include_in_schema=False))
    app.router.routes.append(Route("/sse", endpoint=_SseEndpoint(), methods=["GET"], include_in_schema=False))
    app.sse_messages = lean_sse.post
    app.router.routes.append(Mount("/messages/", app=lean_sse.post))  # served above; routing redirects /messages here

    return app
