"""An upstream with one subscribable resource, `watch://doc`, and a tool that changes it.

    python tests/upstreams/watch_server.py        (stdio)

`touch` sends `notifications/resources/updated` for the resource on its own (not as part of the
call's answer), as a server does when something outside changes the resource: the gateway has
to find the subscribed client's open stream for it.
"""

from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

URI = "watch://doc"
Ctx = ServerRequestContext[Any, Any]


def build() -> Server[Any]:
    subscribed: set[str] = set()
    version = [0]

    async def list_tools(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        schema = {"type": "object", "properties": {}}
        return types.ListToolsResult(tools=[types.Tool(name="touch", description="Change watch://doc.", input_schema=schema)])

    async def call_tool(ctx: Ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        version[0] += 1
        if URI in subscribed:
            await ctx.session.send_resource_updated(URI)
        return types.CallToolResult(content=[types.TextContent(type="text", text=f"v{version[0]}")])

    async def list_resources(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=[types.Resource(uri=URI, name="doc", mime_type="text/plain")])

    async def read_resource(ctx: Ctx, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        contents = types.TextResourceContents(uri=URI, mime_type="text/plain", text=f"v{version[0]}")
        return types.ReadResourceResult(contents=[contents])

    async def list_templates(
        ctx: Ctx, params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=[])

    async def subscribe(ctx: Ctx, params: types.SubscribeRequestParams) -> types.EmptyResult:
        subscribed.add(str(params.uri))
        return types.EmptyResult()

    async def unsubscribe(ctx: Ctx, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        subscribed.discard(str(params.uri))
        return types.EmptyResult()

    return Server(
        "watch",
        version="1.0.0",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_read_resource=read_resource,
        on_list_resource_templates=list_templates,
        on_subscribe_resource=subscribe,
        on_unsubscribe_resource=unsubscribe,
    )


async def main() -> None:
    server = build()
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
