"""Progressive disclosure: in `search` mode the face lists a few tools that find the rest.

Instead of every schema of every server, a client sees the pinned tools and
three of Manifold's own: search the catalogue, describe named tools, call any
tool by its exposed name. The call goes through the same routing, errors,
progress and cancellation as a direct call.
"""

from __future__ import annotations

import json
from fnmatch import fnmatchcase
from typing import Any


from manifold.gateway import Gateway
from manifold.search import estimate_tokens
from manifold.upstream.connection import ProgressFn

MODES = ("full", "search", "auto")
SEARCH, DESCRIBE, CALL = "manifold__search_tools", "manifold__describe_tools", "manifold__call_tool"

META_TOOLS: list[dict[str, Any]] = [
    {
        "name": SEARCH,
        "title": "Search tools",
        "description": (
            "Search every tool this gateway can call, by what you want to do. Returns the best matches "
            "(exposed name, server, one-line description), best first. Then use manifold__describe_tools "
            "for their parameters and manifold__call_tool to call one."
        ),
        "inputSchema": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "What you want to do, in plain words."},
                "limit": {"type": "integer", "minimum": 1, "maximum": 50, "default": 8},
            },
            "required": ["query"],
        },
        "annotations": {"readOnlyHint": True},
    },
    {
        "name": DESCRIBE,
        "title": "Describe tools",
        "description": "Full definitions (description and input schema) of tools named by manifold__search_tools.",
        "inputSchema": {
            "type": "object",
            "properties": {"names": {"type": "array", "items": {"type": "string"}, "minItems": 1}},
            "required": ["names"],
        },
        "annotations": {"readOnlyHint": True},
    },
    {
        "name": CALL,
        "title": "Call a tool",
        "description": "Call any tool of this gateway by its exposed name, with arguments matching its input schema.",
        "inputSchema": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "The exposed tool name, e.g. github__create_issue."},
                "arguments": {"type": "object", "description": "The tool's arguments.", "default": {}},
            },
            "required": ["name"],
        },
    },
]
META_NAMES = frozenset(t["name"] for t in META_TOOLS)


def _text(payload: Any, *, error: bool = False) -> dict[str, Any]:
    result: dict[str, Any] = {"content": [{"type": "text", "text": json.dumps(payload, indent=1)}]}
    if isinstance(payload, dict):
        result["structuredContent"] = payload
    if error:
        result["isError"] = True
    return result


class Disclosure:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def effective_mode(self, requested: str | None) -> str:
        settings = self.gateway.settings
        mode = requested if requested in MODES else settings.catalog_mode
        if mode == "auto":
            return "search" if estimate_tokens(self.gateway.catalog.tools) > settings.search_threshold_tokens else "full"
        return mode

    def listed_tools(self, mode: str) -> list[dict[str, Any]]:
        tools = self.gateway.catalog.tools
        if mode != "search":
            return tools
        pinned = self.gateway.settings.pinned
        return [t for t in tools if any(fnmatchcase(t["name"], p) for p in pinned)] + META_TOOLS

    async def call(
        self, name: str, arguments: dict[str, Any], meta: dict[str, Any] | None, on_progress: ProgressFn | None
    ) -> dict[str, Any]:
        catalog = self.gateway.catalog
        if name == SEARCH:
            query = str(arguments.get("query", ""))
            limit = max(1, min(int(arguments.get("limit") or 8), 50))
            hits = await self.gateway.search_tools(query, limit)
            return _text({"results": [{"name": h.name, "server": h.server, "description": h.description} for h in hits]})
        if name == DESCRIBE:
            wanted = [str(n) for n in arguments.get("names") or []]
            by_name = {t["name"]: t for t in catalog.tools}
            found = [by_name[n] for n in wanted if n in by_name]
            missing = [n for n in wanted if n not in by_name]
            return _text({"tools": found, "unknown": missing}, error=bool(missing) and not found)
        target = str(arguments.get("name", ""))
        args = arguments.get("arguments") or {}
        tool = next((t for t in catalog.tools if t["name"] == target), None)
        if tool is None:
            return _text({"error": f"unknown tool '{target}'; use {SEARCH} to find one"}, error=True)
        import jsonschema  # only search mode validates (3 MB of a gateway's memory otherwise)

        try:
            jsonschema.validate(args, tool.get("inputSchema") or {"type": "object"})
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "(arguments)"
            return _text({"error": f"invalid arguments for '{target}' at {where}: {exc.message}"}, error=True)
        return await self.gateway.call_tool(target, args, meta=meta, on_progress=on_progress)
