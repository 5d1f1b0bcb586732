"""The REST face: Letta's `/v1/mcp-servers` management API.

Bodies and shapes are Letta's (letta-client 1.12.1 works unmodified): the
nested `{server_name, config}` create body, the flattened server object,
Letta's Tool and ToolExecutionResult, `{deleted, updated, added}` from
refresh, 204 on delete. The routes only translate: the Registry does the work
and its exceptions become status codes here.

Guarded, because registering a stdio server runs a command on this host: with
a token configured every request needs `Authorization: Bearer <token>`;
without one only loopback clients (by address and Host header) are served.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, create_model

from manifold.config import (
    SERVER_CONFIG,
    ServerConfig,
    SseServerConfig,
    StdioServerConfig,
    StreamableHttpServerConfig,
)
from manifold.logging import MASK
from manifold.registry import (
    InvalidConfig,
    NameConflict,
    ReadOnlyServer,
    Registry,
    RegistryError,
    ServerDisabled,
    ServerNotFound,
    ServerView,
    StdioForbidden,
    ToolNotFound,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from manifold.store import ServerRecord, ToolRecord
from manifold.upstream.connection import State

RETURN_CHAR_LIMIT = 50000
TRUNCATION_MARKER = "\n... [truncated by Manifold: {total} characters, return_char_limit {limit}]"
EMPTY_RESPONSE = "Empty response from tool"

_NAME_PATTERN = r"^[^\x00-\x1f\x7f]+$"  # any printable name; the MCP face sanitizes what it shows
ServerName = Annotated[
    str, Field(min_length=1, max_length=255, pattern=_NAME_PATTERN, description="The name of the MCP server")
]


@dataclass
class ApiSettings:
    token: str | None = None
    """Bearer token every request must carry; None serves loopback clients only."""
    show_secrets: bool = False
    """Show auth tokens, env values and header values unmasked (so does `gateway.show_secrets`)."""


# --- request bodies -----------------------------------------------------------------


class CreateMcpServerRequest(BaseModel):
    """Letta's `CreateMCPServerRequest`: a name and one server config, `mcp_server_type` required."""

    model_config = ConfigDict(extra="forbid")

    server_name: ServerName
    config: ServerConfig = Field(description="The MCP server configuration (Stdio, SSE, or Streamable HTTP)")


def _partial(model: type[BaseModel], name: str, doc: str) -> type[BaseModel]:
    """`model` with every field optional (default None), constraints and descriptions kept.

    Built from the config models so a new per-server key is accepted in PATCH
    bodies the moment it exists in `config.py`.
    """
    fields: dict[str, Any] = {}
    for key, info in model.model_fields.items():
        annotation: Any = info.annotation
        if info.metadata:
            annotation = Annotated[(annotation, *info.metadata)]
        fields[key] = (Optional[annotation], Field(None, description=info.description))  # noqa: UP045
    partial: type[BaseModel] = create_model(
        name, __config__=ConfigDict(extra="forbid"), __doc__=doc, **fields
    )
    return partial


_KEEPS = "Keys left out keep their stored value; a secret sent back as '****' keeps the stored secret."
UpdateStdioMcpServer = _partial(
    StdioServerConfig,
    "UpdateStdioMcpServer",
    f"Update schema for Stdio MCP server - all fields optional. {_KEEPS}",
)
UpdateSseMcpServer = _partial(
    SseServerConfig, "UpdateSseMcpServer", f"Update schema for SSE MCP server - all fields optional. {_KEEPS}"
)
UpdateStreamableHTTPMcpServer = _partial(
    StreamableHttpServerConfig,
    "UpdateStreamableHTTPMcpServer",
    f"Update schema for Streamable HTTP MCP server - all fields optional. {_KEEPS}",
)


def _update_tag(value: Any) -> str | None:
    """Pick the update model by `mcp_server_type`, or by its keys when it is left out."""
    if isinstance(value, BaseModel):
        value = value.model_dump(exclude_unset=True)
    if not isinstance(value, dict):
        return None
    kind = value.get("mcp_server_type")
    if kind is None:
        return "stdio" if any(k in value for k in ("command", "args", "env")) else "streamable_http"
    return kind if kind in ("stdio", "sse", "streamable_http") else None


UpdateConfig = Annotated[
    Annotated[UpdateStdioMcpServer, Tag("stdio")]
    | Annotated[UpdateSseMcpServer, Tag("sse")]
    | Annotated[UpdateStreamableHTTPMcpServer, Tag("streamable_http")],
    Discriminator(
        _update_tag,
        custom_error_type="invalid_server_type",
        custom_error_message="mcp_server_type must be one of 'stdio', 'sse', 'streamable_http'",
    ),
]


class UpdateMcpServerRequest(BaseModel):
    """Letta's `UpdateMCPServerRequest`: keys left out keep their stored value."""

    model_config = ConfigDict(extra="forbid")

    server_name: ServerName | None = None
    config: UpdateConfig = Field(
        description="The MCP server configuration updates (Stdio, SSE, or Streamable HTTP)"
    )


class ToolExecuteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    args: dict[str, Any] = Field(default_factory=dict, description="Arguments to pass to the tool")


# --- responses ------------------------------------------------------------------------


class ErrorResponse(BaseModel):
    detail: str


class _ServerOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str = Field(description="The human-friendly ID of the Mcp_server (mcp_server-<uuid4>)")
    server_name: str = Field(description="The name of the MCP server")
    prefix: bool = True
    timeout: float = 60.0
    connect_timeout: float = 15.0
    enabled: bool = True
    source: Literal["api", "config"] = Field(
        description="Created through the API, or read from the config file."
    )
    status: State = Field(description="The gateway's connection to this server.")
    last_error: str | None = Field(None, description="Why the last connection attempt failed.")
    restarts: int = Field(0, description="Reconnections since the server was started.")


class StdioMcpServer(_ServerOut):
    """A Stdio MCP server"""

    mcp_server_type: Literal["stdio"]
    command: str
    args: list[str]
    env: dict[str, str] | None = None


class _HttpServerOut(_ServerOut):
    server_url: str
    auth_header: str | None = None
    auth_token: str | None = None
    custom_headers: dict[str, str] | None = None


class SseMcpServer(_HttpServerOut):
    """An SSE MCP server"""

    mcp_server_type: Literal["sse"]


class StreamableHTTPMcpServer(_HttpServerOut):
    """A Streamable HTTP MCP server"""

    mcp_server_type: Literal["streamable_http"]


McpServer = Annotated[
    StdioMcpServer | SseMcpServer | StreamableHTTPMcpServer, Field(discriminator="mcp_server_type")
]


class Tool(BaseModel):
    """Letta's Tool for an MCP tool (`tool_type: external_mcp`)."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(description="tool-<uuid4>, stable across restarts and refreshes")
    tool_type: Literal["external_mcp"] = "external_mcp"
    name: str = Field(description="The upstream tool name")
    description: str | None = None
    source_type: str | None = None
    source_code: str | None = None
    tags: list[str] = Field(default_factory=list)
    json_schema: dict[str, Any] = Field(
        description="{name, description, parameters}; parameters is the upstream inputSchema"
    )
    args_json_schema: dict[str, Any] | None = None
    return_char_limit: int = RETURN_CHAR_LIMIT
    pip_requirements: list[Any] | None = None
    npm_requirements: list[Any] | None = None
    default_requires_approval: bool | None = None
    enable_parallel_execution: bool | None = False
    created_by_id: str | None = None
    last_updated_by_id: str | None = None
    metadata_: dict[str, Any] | None = None
    project_id: str | None = None


class ToolExecutionResult(BaseModel):
    status: Literal["success", "error"]
    func_return: str | None = None
    agent_state: None = None
    stdout: list[str] | None = None
    stderr: list[str] | None = None
    sandbox_config_fingerprint: str | None = None
    structured_content: dict[str, Any] | None = Field(
        None, description="The upstream's structuredContent, when it sent one (Manifold extension)."
    )


class ToolSearchResult(BaseModel):
    """One tool of the merged catalogue, ranked for a query (Manifold extension)."""

    name: str = Field(description="The exposed name (what MCP clients call it by)")
    server: str = Field(description="The server's name")
    server_id: str | None = Field(None, description="The server's id (mcp_server-<uuid4>)")
    description: str = Field(description="The first line of the tool's description")
    score: float = Field(description="Relevance; higher is better, results come best first")


SEARCH_LIMIT_MAX = 50


class RefreshResult(BaseModel):
    deleted: list[str] = Field(description="Tool names removed (gone upstream)")
    updated: list[str] = Field(description="Tool names whose description or schema changed")
    added: list[str] = Field(description="Tool names new upstream")


# --- shaping -----------------------------------------------------------------------------


def mask_config(data: dict[str, Any]) -> dict[str, Any]:
    """Secrets out of a flattened config: the token, env values, header values."""
    out = dict(data)
    if out.get("auth_token") is not None:
        out["auth_token"] = MASK
    for key in ("env", "custom_headers"):
        if isinstance(out.get(key), dict):
            out[key] = {k: MASK for k in out[key]}
    return out


def server_body(view: ServerView, *, show_secrets: bool) -> dict[str, Any]:
    if view.config is not None:
        data = SERVER_CONFIG.dump_python(view.config, mode="json")
    else:
        data = dict(view.record.config)
    if not show_secrets:
        data = mask_config(data)
    data.update(
        id=view.id,
        server_name=view.name,
        source=view.source,
        status=view.state,
        last_error=view.last_error,
        restarts=view.restarts,
    )
    return data


def tool_body(tool: ToolRecord, server: ServerRecord, exposed_name: str | None = None) -> dict[str, Any]:
    mcp: dict[str, Any] = {"server_name": server.server_name, "server_id": server.id}
    if exposed_name is not None:
        mcp["exposed_name"] = exposed_name
    return {
        "id": tool.id,
        "tool_type": "external_mcp",
        "name": tool.name,
        "description": tool.description,
        "source_type": "python",
        "source_code": None,
        "tags": [f"mcp:{server.server_name}"],
        "json_schema": tool.json_schema,
        "args_json_schema": None,
        "return_char_limit": RETURN_CHAR_LIMIT,
        "pip_requirements": None,
        "npm_requirements": None,
        "default_requires_approval": None,
        "enable_parallel_execution": False,
        "created_by_id": None,
        "last_updated_by_id": None,
        "metadata_": {"mcp": mcp},
        "project_id": None,
    }


def _summarize_binary(block: dict[str, Any], key: str) -> dict[str, Any]:
    value = block.get(key)
    if isinstance(value, str):
        return {**block, key: f"<{len(value)} base64 characters>"}
    return block


def render_block(block: Any) -> str:
    """One content block as text: text as is, anything else as JSON (binary data summarized)."""
    if not isinstance(block, dict):
        return json.dumps(block, ensure_ascii=False, default=str)
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind in ("image", "audio"):
        block = _summarize_binary(block, "data")
    elif kind == "resource" and isinstance(block.get("resource"), dict):
        resource = block["resource"]
        if isinstance(resource.get("text"), str):
            return resource["text"]
        block = {**block, "resource": _summarize_binary(resource, "blob")}
    return json.dumps(block, ensure_ascii=False, default=str)


def execution_result(result: Mapping[str, Any], *, limit: int = RETURN_CHAR_LIMIT) -> dict[str, Any]:
    """A raw CallToolResult as Letta's ToolExecutionResult."""
    content = result.get("content") or []
    structured = result.get("structuredContent")
    if content:
        text = " ".join(render_block(block) for block in content)
    elif structured is not None:
        text = json.dumps(structured, ensure_ascii=False, default=str)
    else:
        text = EMPTY_RESPONSE
    if len(text) > limit:
        marker = TRUNCATION_MARKER.format(total=len(text), limit=limit)
        text = text[: max(0, limit - len(marker))] + marker
    body: dict[str, Any] = {
        "status": "error" if result.get("isError") else "success",
        "func_return": text,
        "agent_state": None,
        "stdout": None,
        "stderr": None,
        "sandbox_config_fingerprint": None,
    }
    if isinstance(structured, dict):
        body["structured_content"] = structured
    return body


# --- access --------------------------------------------------------------------------------

_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def _is_loopback_address(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _host_name(header: str) -> str:
    header = header.strip().lower()
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def access_guard(settings: ApiSettings) -> Any:
    """The dependency that guards every route.

    With a token the OpenAPI document declares bearer auth; without one it
    declares none (loopback clients need no credentials).
    """
    if settings.token is not None:
        expected = settings.token.encode()
        bearer = HTTPBearer(auto_error=False, description="The gateway's MANIFOLD_API_TOKEN")

        # A default, not an Annotated hint: hints are strings here and `bearer` is a local.
        async def token_guard(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
            given = credentials.credentials.encode() if credentials is not None else b""
            if not hmac.compare_digest(given, expected):
                raise HTTPException(
                    401,
                    "missing or wrong bearer token (Authorization: Bearer <MANIFOLD_API_TOKEN>)",
                    headers={"WWW-Authenticate": "Bearer"},
                )

        return token_guard

    async def loopback_guard(request: Request) -> None:
        client = request.client.host if request.client else None
        host = _host_name(request.headers.get("host", ""))
        if not _is_loopback_address(client) or host not in _LOOPBACK_NAMES:
            raise HTTPException(
                403,
                "the management API serves loopback clients only unless a token is configured "
                "(set MANIFOLD_API_TOKEN or --api-token-file)",
            )

    return loopback_guard


# --- routes -----------------------------------------------------------------------------------

_ERRORS: list[tuple[type[RegistryError], int]] = [
    (ServerNotFound, 404),
    (ToolNotFound, 404),
    (NameConflict, 409),
    (ReadOnlyServer, 409),
    (ServerDisabled, 409),
    (StdioForbidden, 403),
    (UpstreamTimeout, 504),
    (UpstreamUnavailable, 502),
]


def _http_error(exc: RegistryError) -> HTTPException:
    for kind, status in _ERRORS:
        if isinstance(exc, kind):
            return HTTPException(status, exc.detail)
    return HTTPException(502, exc.detail)  # anything else comes from the upstream


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "The body is not valid JSON",
        401: "Missing or wrong bearer token",
        403: "Not allowed (non-loopback client without a token, or stdio registration disabled)",
        404: "Unknown MCP server or tool",
        409: "Name taken, config-file server (read-only), or server disabled",
        502: "The upstream MCP server cannot be reached",
        504: "The upstream MCP server did not answer in time",
    }
    return {code: {"model": ErrorResponse, "description": text[code]} for code in (401, 403, *codes)}


ServerId = Annotated[str, Path(description="The MCP server's id (mcp_server-<uuid4>)")]
ToolId = Annotated[str, Path(description="The tool's id (tool-<uuid4>)")]


def create_router(registry: Registry, settings: ApiSettings | None = None) -> APIRouter:
    settings = settings or ApiSettings()
    router = APIRouter(
        prefix="/v1/mcp-servers", tags=["mcp-servers"], dependencies=[Depends(access_guard(settings))]
    )

    def shown(view: ServerView) -> dict[str, Any]:
        show = settings.show_secrets or bool(getattr(registry.gateway.settings, "show_secrets", False))
        return server_body(view, show_secrets=show)

    @router.post(
        "/",
        response_model=McpServer,
        operation_id="mcp_create_mcp_server",
        summary="Create Mcp Server",
        responses=_responses(400, 409),
    )
    async def create_mcp_server(request: CreateMcpServerRequest) -> Any:
        """Add an MCP server, connect it, and record its tools.

        An unreachable upstream is still stored: its `status` and `last_error` say why,
        and it connects when the upstream comes up or on refresh.
        """
        try:
            return shown(await registry.create_server(request.server_name, request.config))
        except RegistryError as exc:
            raise _http_error(exc) from None

    @router.get(
        "/",
        response_model=list[McpServer],
        operation_id="mcp_list_mcp_servers",
        summary="List Mcp Servers",
        responses=_responses(),
    )
    async def list_mcp_servers() -> Any:
        """Every server: those created through the API and those from the config file."""
        return [shown(view) for view in await registry.list_servers()]

    # Before the `/{mcp_server_id}` routes; "tools" is never a server id (mcp_server-<uuid4>).
    @router.get(
        "/tools/search",
        response_model=list[ToolSearchResult],
        operation_id="mcp_search_tools",
        summary="Search Tools",
        responses=_responses(),
    )
    async def search_tools(
        query: Annotated[
            str, Query(min_length=1, max_length=1000, description="What the tool should do, in plain words")
        ],
        limit: Annotated[int, Query(ge=1, le=SEARCH_LIMIT_MAX, description="How many results at most")] = 10,
    ) -> Any:
        """Rank every tool of every server (lazy servers included, without starting them) for a query.

        A Manifold extension: the gateway's configured ranker, as in the MCP face's search mode.
        """
        if not query.strip():
            raise RequestValidationError(
                [{"loc": ("query", "query"), "msg": "the query is blank", "type": "value_error"}]
            )
        return await registry.search_tools(query, limit)

    @router.get(
        "/{mcp_server_id}",
        response_model=McpServer,
        operation_id="mcp_retrieve_mcp_server",
        summary="Retrieve Mcp Server",
        responses=_responses(404),
    )
    async def retrieve_mcp_server(mcp_server_id: ServerId) -> Any:
        try:
            return shown(await registry.get_server(mcp_server_id))
        except RegistryError as exc:
            raise _http_error(exc) from None

    @router.patch(
        "/{mcp_server_id}",
        response_model=McpServer,
        operation_id="mcp_update_mcp_server",
        summary="Update Mcp Server",
        responses=_responses(400, 404, 409),
    )
    async def update_mcp_server(mcp_server_id: ServerId, request: UpdateMcpServerRequest) -> Any:
        """Change a server's name or settings; it reconnects with them.

        Keys left out keep their value; a secret sent back as `****` keeps the stored one.
        A new name that another server has is a 409 (the other server is untouched).
        """
        changes = request.config.model_dump(exclude_unset=True)
        try:
            view = await registry.update_server(
                mcp_server_id, server_name=request.server_name, changes=changes
            )
        except InvalidConfig as exc:
            raise RequestValidationError(
                [{**err, "loc": ("body", "config", *err["loc"])} for err in exc.errors]
            ) from None
        except RegistryError as exc:
            raise _http_error(exc) from None
        return shown(view)

    @router.delete(
        "/{mcp_server_id}",
        status_code=204,
        response_class=Response,
        operation_id="mcp_delete_mcp_server",
        summary="Delete Mcp Server",
        responses=_responses(404, 409),
    )
    async def delete_mcp_server(mcp_server_id: ServerId) -> Response:
        """Disconnect a server (its process is stopped) and forget it and its tools."""
        try:
            await registry.delete_server(mcp_server_id)
        except RegistryError as exc:
            raise _http_error(exc) from None
        return Response(status_code=204)

    @router.patch(
        "/{mcp_server_id}/refresh",
        response_model=RefreshResult,
        operation_id="mcp_refresh_mcp_server_tools",
        summary="Refresh Mcp Server Tools",
        responses=_responses(404, 409, 502, 504),
    )
    async def refresh_mcp_server_tools(
        mcp_server_id: ServerId,
        agent_id: Annotated[str | None, Query(description="Accepted for compatibility; not used")] = None,
    ) -> Any:
        """Re-read the server's tools now (connecting it if it is down) and return what changed, by name."""
        try:
            diff = await registry.refresh_server(mcp_server_id)
        except RegistryError as exc:
            raise _http_error(exc) from None
        return diff.as_dict()

    @router.get(
        "/{mcp_server_id}/tools",
        response_model=list[Tool],
        operation_id="mcp_list_tools_for_mcp_server",
        summary="List Tools For Mcp Server",
        responses=_responses(404),
    )
    async def list_tools_for_mcp_server(mcp_server_id: ServerId) -> Any:
        """Every recorded tool of the server (never truncated)."""
        try:
            record, tools = await registry.list_tools(mcp_server_id)
        except RegistryError as exc:
            raise _http_error(exc) from None
        return [tool_body(t, record, registry.exposed_tool_name(record.server_name, t.name)) for t in tools]

    @router.get(
        "/{mcp_server_id}/tools/{tool_id}",
        response_model=Tool,
        operation_id="mcp_retrieve_mcp_tool",
        summary="Retrieve Mcp Tool",
        responses=_responses(404),
    )
    async def retrieve_mcp_tool(mcp_server_id: ServerId, tool_id: ToolId) -> Any:
        try:
            record, tool = await registry.get_tool(mcp_server_id, tool_id)
        except RegistryError as exc:
            raise _http_error(exc) from None
        return tool_body(tool, record, registry.exposed_tool_name(record.server_name, tool.name))

    @router.post(
        "/{mcp_server_id}/tools/{tool_id}/run",
        response_model=ToolExecutionResult,
        operation_id="mcp_run_tool",
        summary="Run Mcp Tool",
        responses=_responses(400, 404, 409, 502, 504),
    )
    async def run_mcp_tool(
        mcp_server_id: ServerId, tool_id: ToolId, request: Annotated[ToolExecuteRequest | None, Body()] = None
    ) -> Any:
        """Call the tool on its server. An error result (isError) is `status: "error"` with its text."""
        args = request.args if request is not None else {}
        try:
            result = await registry.run_tool(mcp_server_id, tool_id, args)
        except RegistryError as exc:
            raise _http_error(exc) from None
        return JSONResponse(execution_result(result))

    return router
