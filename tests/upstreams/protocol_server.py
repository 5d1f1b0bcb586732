"""An upstream that talks back: sampling, elicitation, roots, logging, progress, rich content.

    python tests/upstreams/protocol_server.py [--transport stdio|streamable-http|sse] [--port 0] [--name N]

Each tool asks the client something through the gateway, so a test can see that the
question reached the client whose call caused it, and that the answer came back.
"""

import argparse
import base64

import anyio
from fixture_server import serve_http  # same folder: one copy of the ready-line HTTP runner
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp_types import (
    AudioContent,
    CallToolResult,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    SamplingMessage,
    TextContent,
    TextResourceContents,
)
from pydantic import BaseModel

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
WAV = base64.b64encode(b"RIFF0000WAVEfake").decode()


class Answer(BaseModel):
    name: str


def build(name: str) -> MCPServer:
    mcp = MCPServer(name, log_level="WARNING")
    cancelled: list[str] = []

    @mcp.tool(description="Ask the client's LLM (sampling) and return its text.")
    async def ask_llm(prompt: str, ctx: Context) -> str:
        result = await ctx.session.create_message(
            [SamplingMessage(role="user", content=TextContent(type="text", text=prompt))],
            max_tokens=20,
            related_request_id=ctx.request_id,
        )
        content = result.content
        return f"{name}:{content.text if isinstance(content, TextContent) else content}"

    @mcp.tool(description="Ask the user for a name (form elicitation).")
    async def ask_user(question: str, ctx: Context) -> str:
        answer = await ctx.elicit(question, Answer)
        data = getattr(answer, "data", None)
        return f"{answer.action}:{data.name if data else ''}"

    @mcp.tool(description="List the client's roots.")
    async def my_roots(ctx: Context) -> str:
        roots = await ctx.session.list_roots()
        return ",".join(str(root.uri) for root in roots.roots)

    @mcp.tool(description="Log n lines and report progress n times.")
    async def chatty(n: int, ctx: Context) -> str:
        for i in range(n):
            await ctx.info(f"{name} line {i}")
            await ctx.report_progress(i + 1, n, f"step {i + 1}")
        return "done"

    @mcp.tool(description="Wait until cancelled (or the time is up).")
    async def wait(seconds: float, tag: str) -> str:
        try:
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            cancelled.append(tag)
            raise
        return "waited"

    @mcp.tool(description="Tags of the wait calls that were cancelled.")
    def cancelled_tags() -> str:
        return ",".join(cancelled)

    @mcp.tool(description="Every kind of content, with annotations, structured content and _meta.")
    def rich() -> CallToolResult:
        return CallToolResult(
            content=[
                TextContent(type="text", text="hello", annotations={"audience": ["user"], "priority": 0.5}),
                ImageContent(type="image", data=PNG, mime_type="image/png"),
                AudioContent(type="audio", data=WAV, mime_type="audio/wav"),
                EmbeddedResource(
                    type="resource",
                    resource=TextResourceContents(uri="proto://doc", mime_type="text/plain", text="embedded"),
                ),
                ResourceLink(type="resource_link", uri="proto://linked", name="linked"),
            ],
            structured_content={"answer": 42, "nested": {"list": [1, 2]}},
            _meta={"vendor/trace": "abc"},
        )

    return mcp


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transport", default="stdio", choices=["stdio", "streamable-http", "sse"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--name", default="proto")
    args = parser.parse_args()
    mcp = build(args.name)
    if args.transport == "stdio":
        mcp.run("stdio")
        return
    app = mcp.streamable_http_app() if args.transport == "streamable-http" else mcp.sse_app()
    serve_http(app, "127.0.0.1", args.port)


if __name__ == "__main__":
    main()
