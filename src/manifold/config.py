"""The config file and the per-server config shared with the management API.

One model serves both edges: a server entry in the YAML file and the `config`
body of `POST /v1/mcp-servers/` are the same thing (Letta's field names plus
Manifold's own keys), so they are validated by the same code.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

SEPARATOR_RE = re.compile(r"^[a-zA-Z0-9_-]{1,8}$")
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


class ConfigError(Exception):
    """A config that cannot be used; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class ToolShaping(BaseModel):
    """Which of a server's tools are exposed, and under what name and description."""

    model_config = ConfigDict(extra="forbid")

    allow: list[str] | None = Field(None, description="Glob patterns; when set, only matching tools are exposed.")
    deny: list[str] = Field(default_factory=list, description="Glob patterns of tools never exposed.")
    rename: dict[str, str] = Field(default_factory=dict, description="Upstream tool name -> exposed tool name.")
    descriptions: dict[str, str] = Field(default_factory=dict, description="Upstream tool name -> description.")

    def exposes(self, name: str) -> bool:
        if self.allow is not None and not any(fnmatchcase(name, pattern) for pattern in self.allow):
            return False
        return not any(fnmatchcase(name, pattern) for pattern in self.deny)


class ManifoldOptions(BaseModel):
    """Manifold's own per-server keys, beside the Letta fields."""

    model_config = ConfigDict(extra="forbid")

    prefix: bool = True
    timeout: float = Field(60.0, gt=0, description="Seconds one request to this server may take.")
    connect_timeout: float = Field(15.0, gt=0, description="Seconds to start and initialize the server.")
    enabled: bool = True
    tools: ToolShaping | None = Field(None, description="Filter, rename and re-describe this server's tools.")
    lazy: bool = Field(
        False,
        description="stdio only: start the server on its first request, list it from the store until then, "
        "and stop it after idle_timeout seconds without requests.",
    )
    idle_timeout: float | None = Field(
        None, gt=0, description="Seconds a lazy server may sit idle before it is stopped (default: gateway.idle_timeout)."
    )

    def secrets(self) -> list[str]:
        """Values that must never reach a log line or an unmasked response."""
        return []


class StdioServerConfig(ManifoldOptions):
    mcp_server_type: Literal["stdio"] = "stdio"
    command: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] | None = None

    def secrets(self) -> list[str]:
        return [v for v in (self.env or {}).values() if len(v) >= 4]


class _HttpServerConfig(ManifoldOptions):
    server_url: str
    auth_header: str | None = None
    auth_token: str | None = None
    custom_headers: dict[str, str] | None = None

    @field_validator("server_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL with a host, got {value!r}")
        return value

    @model_validator(mode="after")
    def _check_auth(self) -> _HttpServerConfig:
        if self.auth_header is not None and self.auth_token is None:
            raise ValueError("auth_header is set but auth_token is missing")
        if self.lazy:
            raise ValueError("lazy is for stdio servers only (an HTTP server has no process to start and stop)")
        return self

    def headers(self) -> dict[str, str]:
        """Headers sent to the upstream, exactly as configured.

        Unlike Letta, the header name is kept and the token survives next to
        custom headers; the auth header wins over a custom one of the same name.
        """
        headers = dict(self.custom_headers or {})
        if self.auth_token is not None:
            headers[self.auth_header or "Authorization"] = self.auth_token
        return headers

    def secrets(self) -> list[str]:
        values = list((self.custom_headers or {}).values())
        if self.auth_token:
            values.append(self.auth_token)
            if self.auth_token.lower().startswith("bearer "):
                values.append(self.auth_token[7:])
        return [v for v in values if len(v) >= 4]


class SseServerConfig(_HttpServerConfig):
    mcp_server_type: Literal["sse"] = "sse"


class StreamableHttpServerConfig(_HttpServerConfig):
    mcp_server_type: Literal["streamable_http"] = "streamable_http"


ServerConfig = Annotated[
    StdioServerConfig | SseServerConfig | StreamableHttpServerConfig,
    Field(discriminator="mcp_server_type"),
]
SERVER_CONFIG = TypeAdapter(ServerConfig)
SERVER_TYPES = ("stdio", "sse", "streamable_http")


class GatewaySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    separator: str = "__"
    catalog_mode: Literal["full", "search", "auto"] = Field(
        "full", description="full: list every tool; search: list a search tool instead; auto: search past a size."
    )
    search_threshold_tokens: int = Field(20000, gt=0, description="Estimated tools/list tokens at which auto searches.")
    pinned: list[str] = Field(default_factory=list, description="Globs of exposed tool names always listed directly.")
    idle_timeout: float = Field(
        300.0, gt=0, description="Seconds a lazy server may sit without requests before it is stopped."
    )
    search_ranker: Literal["lexical", "semantic", "hybrid"] = Field(
        "lexical",
        description="How search mode ranks tools: lexical (BM25, built in), semantic or hybrid (the `semantic` extra).",
    )
    allow_stdio_api: bool = Field(
        True, description="Whether the management API may register stdio servers (commands run on this host)."
    )
    show_secrets: bool = Field(
        False, description="Show auth tokens, env values and header values unmasked in API responses."
    )

    @field_validator("search_ranker")
    @classmethod
    def _check_ranker(cls, value: str) -> str:
        if value != "lexical":
            from manifold.search import ranker_available

            problem = ranker_available(value)
            if problem is not None:
                raise ValueError(problem)
        return value

    @field_validator("separator")
    @classmethod
    def _check_separator(cls, value: str) -> str:
        if not SEPARATOR_RE.match(value):
            raise ValueError("must be 1-8 characters from [a-zA-Z0-9_-]")
        return value


@dataclass
class GatewayConfig:
    """A validated config file: gateway settings and servers by name, in file order."""

    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    servers: dict[str, ServerConfig] = field(default_factory=dict)
    path: Path | None = None


# --- ${VAR} expansion -------------------------------------------------------


def expand_vars(value: Any, environ: Mapping[str, str], missing: list[str]) -> Any:
    """Expand `${VAR}` and `${VAR:-default}` in every string; record unset names in `missing`."""
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            missing.append(name)
            return ""

        return _VAR_RE.sub(replace, value)
    if isinstance(value, dict):
        return {k: expand_vars(v, environ, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_vars(v, environ, missing) for v in value]
    return value


# --- client-style `mcpServers` entries ----------------------------------------

_CLIENT_TYPES = {
    "stdio": "stdio",
    "sse": "sse",
    "http": "streamable_http",
    "streamable_http": "streamable_http",
    "streamable-http": "streamable_http",
    "streamablehttp": "streamable_http",
}


def from_client_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a Claude Desktop / Cursor / VS Code `mcpServers` entry into Letta fields.

    Manifold's own keys pass through; anything unknown is left for validation
    to reject with a clear message.
    """
    entry = dict(entry)
    kind = entry.pop("type", None) or entry.pop("transport", None)
    if entry.pop("disabled", False) is True:
        entry["enabled"] = False
    if "url" in entry:
        url = entry.pop("url")
        headers = entry.pop("headers", None)
        mapped = _CLIENT_TYPES.get(str(kind or "http").lower().replace(" ", ""), kind)
        out: dict[str, Any] = {"mcp_server_type": mapped, "server_url": url}
        if headers:
            out["custom_headers"] = headers
        return out | entry
    mapped = _CLIENT_TYPES.get(str(kind).lower(), kind) if kind else "stdio"
    return {"mcp_server_type": mapped} | entry


# --- validation ------------------------------------------------------------------


def describe_errors(exc: ValidationError, where: str) -> list[str]:
    """One line per pydantic error, naming the server and the field."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        # Drop the discriminator tag pydantic puts first ("stdio", ...).
        if loc and loc[0] in SERVER_TYPES:
            loc = loc[1:]
        kind = err["type"]
        if kind == "union_tag_invalid":
            tag = err.get("input", {}).get("mcp_server_type") if isinstance(err.get("input"), dict) else None
            lines.append(
                f"{where}: field 'mcp_server_type': unknown type {tag!r} (expected one of {', '.join(SERVER_TYPES)})"
            )
            continue
        if kind == "union_tag_not_found":
            lines.append(f"{where}: field 'mcp_server_type': required (one of {', '.join(SERVER_TYPES)})")
            continue
        field_name = ".".join(loc) or "(entry)"
        if kind == "extra_forbidden":
            lines.append(f"{where}: field '{field_name}': unknown key")
        elif kind == "missing":
            lines.append(f"{where}: field '{field_name}': required")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{where}: field '{field_name}': {msg}")
    return lines


def parse_server(name: str, raw: Any, environ: Mapping[str, str] | None = None) -> tuple[ServerConfig | None, list[str]]:
    """Validate one server entry (already in Letta field names)."""
    where = f"server '{name}'"
    if not isinstance(raw, dict):
        return None, [f"{where}: expected a mapping of fields, got {type(raw).__name__}"]
    missing: list[str] = []
    expanded = expand_vars(raw, os.environ if environ is None else environ, missing)
    problems = [f"{where}: environment variable '{var}' is not set and has no default" for var in dict.fromkeys(missing)]
    try:
        config = SERVER_CONFIG.validate_python(expanded)
    except ValidationError as exc:
        return None, problems + describe_errors(exc, where)
    return (None if problems else config), problems


def parse_config(data: Any, *, environ: Mapping[str, str] | None = None, path: Path | None = None) -> GatewayConfig:
    """Validate a whole config document; raise ConfigError listing every problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"config: expected a mapping at the top level, got {type(data).__name__}"])
    problems: list[str] = []
    unknown = set(data) - {"gateway", "mcp_servers", "mcpServers"}
    problems += [f"config: unknown top-level key '{key}'" for key in sorted(unknown)]

    gateway = GatewaySettings()
    try:
        gateway = GatewaySettings.model_validate(data.get("gateway") or {})
    except ValidationError as exc:
        problems += describe_errors(exc, "gateway")

    entries: list[tuple[str, Any]] = []
    for section, convert in (("mcp_servers", None), ("mcpServers", from_client_entry)):
        block = data.get(section) or {}
        if not isinstance(block, dict):
            problems.append(f"config: '{section}' must be a mapping of server name to settings")
            continue
        for name, raw in block.items():
            entries.append((str(name), convert(raw) if convert and isinstance(raw, dict) else raw))

    servers: dict[str, ServerConfig] = {}
    seen: set[str] = set()
    for name, raw in entries:
        if name in seen:
            problems.append(f"server '{name}': defined more than once")
            continue
        seen.add(name)
        if not name.strip():
            problems.append("config: a server has an empty name")
            continue
        config, errs = parse_server(name, raw, environ)
        problems += errs
        if config is not None:
            servers[name] = config
    if problems:
        raise ConfigError(problems)
    return GatewayConfig(gateway=gateway, servers=servers, path=path)


def load_config(path: str | Path, *, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read and validate a YAML or JSON config file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"config: cannot read {path}: {exc.strerror or exc}"]) from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError([f"config: {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}"]) from exc
    return parse_config(data, environ=environ, path=path)
