"""A real MCP server for Manifold's tests: run it as an upstream over stdio, streamable HTTP or SSE.

    python tests/upstreams/fixture_server.py [--transport stdio|streamable-http|sse]
        [--host 127.0.0.1] [--port 0] [--name NAME] [--tools N] [--long-names]
        [--require-header NAME=VALUE ...] [--crash-on-start] [--json-response] [--pretty]
        [--sse-quirk redirect|foreign-endpoint|refuse-prompts] [--record-start FILE]

Over HTTP it binds its socket itself and, once it accepts requests, prints exactly one line
`LISTENING http://<host>:<port>` to stdout (with `--port 0` that is how the port is found).
Streamable HTTP is served at `/mcp`, SSE at `/sse` (messages at `/messages/`).

What it offers (NAME is `--name`, default "fixture"):
- tools `echo(text)` (text unchanged), `whoami()` (NAME), `fail(message)` (an isError result whose
  text is exactly `message`), `slow(seconds)` (sleeps, then returns "NAME slept <seconds>"),
  `register_tool(tool_name)` (adds that tool, returning "NAME:<tool_name>", and sends
  tools/list_changed; the handshake advertises listChanged: true);
- `--tools N`: tools `tool_0000` .. `tool_{N-1}`, each with its own description, one optional
  string argument `value`, returning "NAME:tool_XXXX:value";
- `--long-names`: tools whose names a gateway must sanitize (see LONG_NAMES), returning "NAME:<tool name>";
- a prompt `greet(name)`, a resource `fixture://NAME/info` and a template `fixture://NAME/items/{item}`.

`--require-header NAME=VALUE` (repeatable, HTTP only): a request without that exact header value
gets HTTP 401. `--crash-on-start`: write one line to stderr and exit with status 3.
`--record-start FILE`: append the process's pid to FILE as it starts (tests count starts).
`--pretty` (HTTP only): every JSON message it sends is indented over many lines (a JSON body, or
an SSE event's data split over many `data:` lines), as the protocol allows.
`--sse-quirk redirect` (SSE): GET /old-sse answers 307 to /sse. `--sse-quirk foreign-endpoint`
(SSE): the endpoint event names the message endpoint on another origin (`localhost`, not the IP).
`--sse-quirk refuse-prompts` (SSE): a POSTed prompts/get request is answered HTTP 500.

Self-contained on purpose (it needs only the `mcp` SDK), so it runs with any environment.
"""

import argparse
import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence

CRASH_EXIT_CODE = 3
CRASH_MESSAGE = "fixture: crashing on start as asked (--crash-on-start)"

if __name__ == "__main__" and "--crash-on-start" in sys.argv[1:]:
    # Before the SDK import (one to two seconds), so start-failure tests do not wait for it.
    print(CRASH_MESSAGE, file=sys.stderr, flush=True)
    sys.exit(CRASH_EXIT_CODE)

import anyio  # noqa: E402
import uvicorn  # noqa: E402
from mcp.server import MCPServer, NotificationOptions  # noqa: E402
from mcp.server.mcpserver import Context  # noqa: E402
from mcp.server.mcpserver.tools import Tool  # noqa: E402
from mcp_types import CallToolResult, TextContent  # noqa: E402
from starlette.types import ASGIApp, Receive, Scope, Send  # noqa: E402

READY_PREFIX = "LISTENING "

LONG_NAMES: tuple[str, ...] = (
    "get.weather",
    "get_weather",  # collides with "get.weather" once dots become underscores
    "a tool with spaces",
    "path/to/tool",
    "this_tool_name_is_deliberately_much_longer_than_the_sixty_four_character_limit_number_one_",
    "this_tool_name_is_deliberately_much_longer_than_the_sixty_four_character_limit_number_two_",
)
"""Tool names that are not valid client-side names as they stand (the two long ones have 90
characters and share their first 78)."""

log = logging.getLogger("fixture")


def build_server(name: str, *, tools: int = 0, long_names: bool = False) -> MCPServer:
    mcp = MCPServer(name, log_level="WARNING", tools=generated_tools(name, tools))
    advertise_list_changed(mcp)

    @mcp.tool(description="Return the text unchanged.")
    def echo(text: str) -> str:
        return text

    @mcp.tool(description="Return this server's name.")
    def whoami() -> str:
        return name

    @mcp.tool(description="Return an error result (isError) whose text is the message.")
    def fail(message: str) -> CallToolResult:
        return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)

    @mcp.tool(description="Sleep for the given number of seconds, then answer.")
    async def slow(seconds: float) -> str:
        await anyio.sleep(seconds)
        return f"{name} slept {seconds}"

    @mcp.tool(description="Add a tool with the given name at run time and notify tools/list_changed.")
    async def register_tool(tool_name: str, ctx: Context) -> str:
        description = f"Registered at run time: {tool_name}"
        mcp.add_tool(
            _answer(f"{name}:{tool_name}"), name=tool_name, description=description, structured_output=False
        )
        await ctx.session.send_tool_list_changed()  # sessions of the handshake era
        await ctx.notify_tools_changed()  # subscriptions/listen streams (2026-07-28)
        return f"{name} registered {tool_name}"

    if long_names:
        for tool_name in LONG_NAMES:
            description = f"Odd name: {tool_name!r}"
            mcp.add_tool(
                _answer(f"{name}:{tool_name}"),
                name=tool_name,
                description=description,
                structured_output=False,
            )

    @mcp.prompt(description="Greet someone.")
    def greet(name: str) -> str:
        return f"{mcp.name} says hello to {name}"

    @mcp.resource(f"fixture://{name}/info", name="info", mime_type="text/plain")
    def info() -> str:
        return f"fixture server {name}"

    @mcp.resource(f"fixture://{name}/items/{{item}}", name="item", mime_type="text/plain")
    def item(item: str) -> str:
        return f"{name} item {item}"

    return mcp


def advertise_list_changed(mcp: MCPServer) -> None:
    """Announce `listChanged: true` for tools, prompts and resources in the handshake.

    MCPServer always builds its initialize result with default NotificationOptions (all false)
    and offers no setting for it, so this replaces the low-level server's factory on the instance
    (every transport calls `create_initialization_options()` on it).
    """
    lowlevel = mcp._lowlevel_server  # no public way to reach it
    original = lowlevel.create_initialization_options
    changed = NotificationOptions(prompts_changed=True, resources_changed=True, tools_changed=True)

    def create_initialization_options(notification_options=None, *args, **kwargs):  # type: ignore[no-untyped-def]
        return original(notification_options or changed, *args, **kwargs)

    lowlevel.create_initialization_options = create_initialization_options  # type: ignore[method-assign]


def _answer(text: str) -> Callable[[], str]:
    def answer() -> str:
        return text

    return answer


def generated_tools(server_name: str, count: int) -> list[Tool]:
    """`count` tools built by copying one template (building each from a function takes ~2 ms)."""
    if count <= 0:
        return []

    def template(value: str = "") -> str:
        return value

    base = Tool.from_function(template, name="tool_template", description="template", structured_output=False)
    tools = []
    for i in range(count):
        tool_name = f"tool_{i:04d}"

        def run(value: str = "", _prefix: str = f"{server_name}:{tool_name}:") -> str:
            return _prefix + value

        description = f"Generated tool number {i} of {count} on {server_name}."
        tools.append(base.model_copy(update={"name": tool_name, "description": description, "fn": run}))
    return tools


class RequireHeaders:
    """ASGI middleware: an HTTP request lacking any of the required header values gets 401."""

    def __init__(self, app: ASGIApp, required: dict[str, str]) -> None:
        self.app = app
        self.required = {
            key.lower().encode("latin-1"): value.encode("latin-1") for key, value in required.items()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])  # ASGI header names are lower-case
            missing = [key for key, value in self.required.items() if headers.get(key) != value]
            if missing:
                log.warning("401 for %s: missing or wrong %s", scope["path"], [m.decode() for m in missing])
                body = b'{"error": "unauthorized"}'
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", b"%d" % len(body)),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class ReadyServer(uvicorn.Server):
    """A uvicorn server that prints the ready line once it accepts connections."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            self.on_ready()


def serve_http(app: ASGIApp, host: str, port: int, keep_alive: float = 5) -> None:
    sock = tcp_listener(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    url = f"http://[{bound_host}]:{bound_port}" if ":" in bound_host else f"http://{bound_host}:{bound_port}"
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=2,
        ws="none",
        timeout_keep_alive=keep_alive,  # type: ignore[arg-type]  # a float works: it goes to call_later
    )
    try:
        ReadyServer(config, lambda: print(f"{READY_PREFIX}{url}", flush=True)).run(sockets=[sock])
    finally:
        sock.close()


class PrettyJson:
    """ASGI middleware: JSON bodies and SSE events' JSON data re-sent indented, over many lines."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        kind = b""
        start: dict = {}
        body = b""

        async def pretty_send(message: dict) -> None:
            nonlocal kind, start, body
            if message["type"] == "http.response.start":
                kind = dict(message.get("headers", [])).get(b"content-type", b"")
                if kind.startswith(b"application/json"):
                    start = message  # sent with the body, once its length is known
                    return
            elif message["type"] == "http.response.body" and kind.startswith(b"application/json"):
                body += message.get("body", b"")
                if message.get("more_body"):
                    return
                data = json.dumps(json.loads(body), indent=2).encode() if body else body
                headers = [(k, v) for k, v in start["headers"] if k != b"content-length"]
                await send({**start, "headers": [*headers, (b"content-length", b"%d" % len(data))]})
                message = {"type": "http.response.body", "body": data}
            elif message["type"] == "http.response.body" and kind.startswith(b"text/event-stream"):
                message = {**message, "body": _pretty_events(message.get("body", b""))}
            await send(message)

        await self.app(scope, receive, pretty_send)


class SseQuirks:
    """ASGI middleware for the SSE transport: a redirected stream, or an endpoint on another origin."""

    def __init__(self, app: ASGIApp, quirk: str) -> None:
        self.app = app
        self.quirk = quirk

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.quirk == "redirect" and scope["path"] == "/old-sse":
            await send({"type": "http.response.start", "status": 307, "headers": [(b"location", b"/sse"), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        if scope["type"] == "http" and self.quirk == "refuse-prompts" and scope["method"] == "POST":
            await self._refuse_prompts(scope, receive, send)
            return
        if scope["type"] != "http" or self.quirk != "foreign-endpoint" or scope["path"] != "/sse":
            await self.app(scope, receive, send)
            return

        async def foreign_send(message: dict) -> None:
            body = message.get("body", b"")
            if message["type"] == "http.response.body" and b"event: endpoint" in body:
                elsewhere = b"data: http://localhost:%d/messages/" % scope["server"][1]
                message = {**message, "body": body.replace(b"data: /messages/", elsewhere)}
            await send(message)

        await self.app(scope, receive, foreign_send)

    async def _refuse_prompts(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = [await receive()]
        while received[-1].get("more_body"):
            received.append(await receive())
        if b'"prompts/get"' in b"".join(message.get("body", b"") for message in received):
            await send({"type": "http.response.start", "status": 500, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return

        async def replay() -> dict:
            return received.pop(0) if received else await receive()

        await self.app(scope, replay, send)


def _pretty_events(chunk: bytes) -> bytes:
    lines = []
    for line in chunk.split(b"\r\n"):
        if line.startswith(b"data: {"):
            pretty = json.dumps(json.loads(line[6:]), indent=2).encode()
            lines.extend(b"data: " + part for part in pretty.split(b"\n"))
        else:
            lines.append(line)
    return b"\r\n".join(lines)


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="MCP fixture upstream for Manifold's tests.")
    parser.add_argument("--transport", choices=["stdio", "streamable-http", "sse"], default="stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--name", default="fixture")
    parser.add_argument("--tools", type=int, default=0, metavar="N", help="add N generated tools")
    parser.add_argument(
        "--long-names", action="store_true", help="add tools with names a gateway must sanitize"
    )
    parser.add_argument(
        "--require-header", type=parse_header, action="append", default=[], metavar="NAME=VALUE"
    )
    parser.add_argument("--crash-on-start", action="store_true")
    parser.add_argument("--json-response", action="store_true", help="streamable HTTP: answer POSTs with JSON, not SSE")
    parser.add_argument("--pretty", action="store_true", help="HTTP: JSON indented over many lines")
    parser.add_argument("--sse-quirk", choices=["redirect", "foreign-endpoint", "refuse-prompts"])
    parser.add_argument(
        "--keep-alive", type=float, default=5, metavar="SECONDS", help="HTTP: close a kept-alive connection idle this long"
    )
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--record-start", metavar="FILE", help="append this process's pid to FILE when it starts")
    return parser.parse_args(argv)


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
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=args.log_level, format=f"[{args.name}] %(levelname)s %(message)s"
    )
    logging.getLogger("mcp.shared.tool_name_validation").setLevel(logging.ERROR)  # odd names are the point
    if args.crash_on_start:  # normally caught before the imports, at the top of this file
        print(CRASH_MESSAGE, file=sys.stderr, flush=True)
        return CRASH_EXIT_CODE

    if args.record_start:
        with open(args.record_start, "a") as starts:
            starts.write(f"{os.getpid()}\n")
    mcp = build_server(args.name, tools=args.tools, long_names=args.long_names)
    if args.transport == "stdio":
        mcp.run("stdio")
        return 0

    if args.transport == "streamable-http":
        app: ASGIApp = mcp.streamable_http_app(
            streamable_http_path="/mcp", host=args.host, json_response=args.json_response
        )
    else:
        app = mcp.sse_app(sse_path="/sse", message_path="/messages/", host=args.host)
    if args.require_header:
        app = RequireHeaders(app, dict(args.require_header))
    if args.pretty:
        app = PrettyJson(app)
    if args.sse_quirk:
        app = SseQuirks(app, args.sse_quirk)
    serve_http(app, args.host, args.port, args.keep_alive)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
