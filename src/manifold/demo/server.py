"""A small, deterministic MCP server that ships with Manifold.

It lets `config.example.yaml` work offline and gives people something to point a client at:

    python -m manifold.demo                                   # stdio (the default)
    python -m manifold.demo --transport streamable-http --port 0
    python -m manifold.demo --transport sse --port 9001 --name demo2

Over HTTP the server binds its own socket before serving, then prints exactly one line,
`LISTENING http://<host>:<port>`, to stdout once it accepts requests (so `--port 0` can be
discovered by whoever started it). Streamable HTTP is served at `/mcp`, SSE at `/sse`.
Logs go to stderr only; in stdio mode stdout carries nothing but MCP frames.
"""

import argparse
import logging
import re
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Literal

import anyio
import uvicorn
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from pydantic import BaseModel, Field
from starlette.types import ASGIApp

Transport = Literal["stdio", "streamable-http", "sse"]
TRANSPORTS: tuple[Transport, ...] = ("stdio", "streamable-http", "sse")
DEFAULT_NAME = "manifold-demo"
READY_PREFIX = "LISTENING "
MAX_COUNTDOWN = 1000

README = """\
# Manifold demo server

A tiny MCP server bundled with Manifold so the example configuration works offline.

Tools: echo, add, word_count, slugify, countdown.
Prompt: summarize. Resources: demo://NAME/readme and the template demo://NAME/greeting/{name}, under
the server's --name, so two copies behind one gateway do not clash.
"""

log = logging.getLogger("manifold.demo")


class WordCount(BaseModel):
    """Counts for a piece of text (returned as structured content)."""

    words: int = Field(description="Number of whitespace-separated words")
    characters: int = Field(description="Number of characters")
    lines: int = Field(description="Number of lines")


def slugify_text(text: str) -> str:
    """Lower-case ASCII words joined by single hyphens."""
    ascii_text = text.encode("ascii", "ignore").decode("ascii").lower()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text).strip("-")


def build_server(name: str = DEFAULT_NAME, *, log_level: str = "WARNING") -> MCPServer:
    """The demo server: five tools, one prompt, one resource and one resource template."""
    mcp = MCPServer(
        name,
        instructions="Manifold's bundled demo server: deterministic tools for trying a gateway out.",
        log_level=log_level,  # type: ignore[arg-type]
    )

    @mcp.tool(description="Return the text unchanged.")
    def echo(text: str) -> str:
        return text

    @mcp.tool(description="Add two numbers.")
    def add(a: float, b: float) -> float:
        return a + b

    @mcp.tool(description="Count the words, characters and lines of a text.")
    def word_count(text: str) -> WordCount:
        return WordCount(words=len(text.split()), characters=len(text), lines=len(text.splitlines()))

    @mcp.tool(description="Turn a text into a URL slug (lower-case ASCII words joined by hyphens).")
    def slugify(text: str) -> str:
        return slugify_text(text)

    @mcp.tool(description=f"Count down from n (at most {MAX_COUNTDOWN}), reporting progress at every step.")
    async def countdown(n: int, ctx: Context) -> str:
        if not 0 <= n <= MAX_COUNTDOWN:
            raise ValueError(f"n must be between 0 and {MAX_COUNTDOWN}, got {n}")
        for done in range(1, n + 1):
            await ctx.report_progress(done, n, f"{n - done} to go")
            await anyio.sleep(0.001)
        return f"countdown from {n} done"

    @mcp.prompt(description="Ask for a summary of a text.")
    def summarize(text: str, style: str = "short") -> str:
        return f"Summarize the following text. Style: {style}.\n\n{text}"

    @mcp.resource(
        f"demo://{name}/readme", name="readme", description="About this demo server.", mime_type="text/markdown"
    )
    def readme() -> str:
        return README

    @mcp.resource(
        f"demo://{name}/greeting/{{name}}", name="greeting", description="A greeting for name.", mime_type="text/plain"
    )
    def greeting(name: str) -> str:
        return f"Hello, {name}!"

    return mcp


# --- serving over HTTP -------------------------------------------------------------------------


class _ReadyServer(uvicorn.Server):
    """A uvicorn server that calls `on_ready` once it accepts connections."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            self._on_ready()


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket; with port 0 the OS picks a free port (read it from getsockname)."""
    return tcp_listener(host, port)


def socket_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def http_app(mcp: MCPServer, transport: Transport, host: str) -> ASGIApp:
    """The ASGI app for one HTTP transport: streamable HTTP at /mcp, SSE at /sse."""
    if transport == "streamable-http":
        return mcp.streamable_http_app(streamable_http_path="/mcp", host=host)
    if transport == "sse":
        return mcp.sse_app(sse_path="/sse", message_path="/messages/", host=host)
    raise ValueError(f"not an HTTP transport: {transport}")


def serve_http(app: ASGIApp, host: str, port: int, *, ready_prefix: str = READY_PREFIX) -> None:
    """Serve `app` with uvicorn on a socket bound here, printing the ready line when it is up."""
    sock = bind_socket(host, port)
    url = socket_url(sock)

    def announce() -> None:
        log.info("serving on %s", url)
        print(f"{ready_prefix}{url}", flush=True)

    config = uvicorn.Config(
        app,
        log_config=None,  # uvicorn's own config would send access logs to stdout
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=2,
        ws="none",
    )
    try:
        _ReadyServer(config, announce).run(sockets=[sock])
    finally:
        sock.close()


def run(mcp: MCPServer, transport: Transport, host: str, port: int) -> None:
    if transport == "stdio":
        mcp.run("stdio")
    else:
        serve_http(http_app(mcp, transport, host), host, port)


def parse_args(argv: Sequence[str] | None, *, prog: str, default_name: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=TRANSPORTS, default="stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (see the LISTENING line)")
    parser.add_argument("--name", default=default_name, help="server name reported to clients")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser.parse_args(argv)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr, level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def tcp_listener(host: str, port: int) -> socket.socket:
    """A listening socket with proto IPPROTO_TCP, so asyncio sets TCP_NODELAY on accepted connections.

    (`socket.create_server` leaves proto 0, and every keep-alive request then waits ~40 ms on a delayed ACK.)
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, prog="python -m manifold.demo", default_name=DEFAULT_NAME)
    configure_logging(args.log_level)
    try:
        run(build_server(args.name, log_level=args.log_level), args.transport, args.host, args.port)
    except KeyboardInterrupt:
        pass
    return 0
