"""The peer in the benchmark: FastMCP's proxy in its fastest configuration.

    python bench/fastmcp_proxy.py --transport stdio|http|sse [--port 0] [--mode legacy|auto]
        --upstream NAME=stdio:ARG,ARG,...  |  --upstream NAME=http:URL  |  --upstream NAME=sse:URL

One `fastmcp.Client` per upstream, connected once before the front starts serving, each wrapped in
`create_proxy(client)` (a connected client is reused for every request: no reconnection per call)
and mounted on one front server under the upstream's name as namespace (tools become
`NAME_tool`). Over HTTP it binds 127.0.0.1 itself and prints `LISTENING http://127.0.0.1:PORT`
once the upstreams are connected; streamable HTTP is at /mcp, SSE at /sse.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from contextlib import AsyncExitStack

import anyio


def parse_upstream(text: str) -> tuple[str, str, str]:
    name, sep, rest = text.partition("=")
    kind, sep2, target = rest.partition(":")
    if not sep or not sep2 or kind not in ("stdio", "http", "sse"):
        raise argparse.ArgumentTypeError(
            f"expected NAME=stdio:ARGS | NAME=http:URL | NAME=sse:URL, got {text!r}"
        )
    return name, kind, target


def make_client(kind: str, target: str, mode: str):  # type: ignore[no-untyped-def]
    from fastmcp import Client
    from fastmcp.client.transports import SSETransport, StdioTransport, StreamableHttpTransport

    if kind == "stdio":
        args = target.split(",")
        transport = StdioTransport(command=sys.executable, args=args, keep_alive=True)
    elif kind == "http":
        transport = StreamableHttpTransport(target)
    else:
        transport = SSETransport(target)
    return Client(transport, mode=mode)


async def main(args: argparse.Namespace) -> None:
    from fastmcp import FastMCP
    from fastmcp.server import create_proxy

    async with AsyncExitStack() as stack:
        front = FastMCP("fastmcp-proxy-bench")
        clients = [(name, make_client(kind, target, args.mode)) for name, kind, target in args.upstream]

        # Connect sequentially, as FastMCP itself would when mounting a config; the front starts
        # serving only once all are connected.
        for name, client in clients:
            await stack.enter_async_context(client)
            front.mount(create_proxy(client), namespace=name)

        if args.transport == "stdio":
            await front.run_async(transport="stdio", show_banner=False, log_level="WARNING")
            return
        sock = socket.create_server(("127.0.0.1", args.port), backlog=2048)
        # As uvicorn does when it binds itself: accepted connections inherit TCP_NODELAY (asyncio sets
        # it only on IPPROTO_TCP sockets, and create_server makes protocol-0 ones).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        port = sock.getsockname()[1]
        path = "/mcp" if args.transport == "http" else "/sse"
        # The socket listens already: a connection made now waits in the backlog for uvicorn.
        print(f"LISTENING http://127.0.0.1:{port}", flush=True)
        await front.run_http_async(
            show_banner=False,
            transport="http" if args.transport == "http" else "sse",
            host="127.0.0.1",
            port=port,
            path=path,
            log_level="WARNING",
            sockets=[sock],
            uvicorn_config={"access_log": False, "ws": "none", "log_config": None},
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transport", choices=["stdio", "http", "sse"], default="stdio")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--mode", default="legacy", help="fastmcp.Client mode for the upstream clients")
    parser.add_argument("--upstream", type=parse_upstream, action="append", required=True)
    ns = parser.parse_args()
    os.environ.setdefault("FASTMCP_SHOW_SERVER_BANNER", "false")
    os.environ.setdefault("FASTMCP_LOG_LEVEL", "WARNING")
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    try:
        anyio.run(main, ns)
    except KeyboardInterrupt:
        sys.exit(130)
