"""CPU per request of the HTTP clients the lean path could use, against a trivial keep-alive server.

    .venv/bin/python bench/http_clients.py [--requests 3000]

Why Manifold's lean path has its own small HTTP/1.1 client (src/manifold/upstream/http1.py)
rather than httpx (the SDK's client) or aiohttp: the whole budget of a gateway hop is under a
millisecond. The server runs in a child process and answers every POST at once with a fixed
JSON-RPC result, so the figures are the client's own cost: sequential POSTs on one kept-alive
connection, wall time and this process's CPU time per request. aiohttp is measured only if it is
installed (it is not a dependency of Manifold). Only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import uvloop

BODY = b'{"jsonrpc":"2.0","id":-1,"result":{"content":[{"type":"text","text":"hello"}],"isError":false}}'
REQUEST = json.dumps(
    {"jsonrpc": "2.0", "id": -1, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "hello"}}}
).encode()
HEADERS = {
    "content-type": "application/json",
    "accept": "application/json, text/event-stream",
    "mcp-session-id": "0123456789abcdef",
    "mcp-protocol-version": "2025-11-25",
}


class _Answer(asyncio.Protocol):
    """Answers each complete request (headers + content-length body) with BODY."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            reply = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            self.transport.write(reply % (len(BODY), BODY))  # type: ignore[attr-defined]


async def serve() -> None:
    server = await asyncio.get_running_loop().create_server(_Answer, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


async def measure(name: str, one: Callable[[], Awaitable[bytes]], requests: int) -> None:
    for _ in range(200):
        assert await one() == BODY
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(requests):
        await one()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{name:28s} {wall / requests * 1e6:7.0f} µs wall {cpu / requests * 1e6:7.0f} µs CPU per request")


async def run(port: int, requests: int) -> None:
    url = f"http://127.0.0.1:{port}/mcp"

    from manifold.upstream.http1 import Pool

    pool = Pool(url, {}, connect_timeout=5)

    async def lean() -> bytes:
        async with pool.request("POST", HEADERS, REQUEST) as response:
            return await response.read()

    await measure("manifold http1 (httptools)", lean, requests)
    await pool.aclose()

    import httpx2

    async with httpx2.AsyncClient() as client:

        async def with_httpx() -> bytes:
            return (await client.post(url, content=REQUEST, headers=HEADERS)).content

        await measure("httpx (the SDK's client)", with_httpx, requests)

    try:
        import aiohttp
    except ImportError:
        print("aiohttp                      not installed: skipped")
        return
    async with aiohttp.ClientSession() as session:

        async def with_aiohttp() -> bytes:
            async with session.post(url, data=REQUEST, headers=HEADERS) as response:
                return await response.read()

        await measure("aiohttp", with_aiohttp, requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        uvloop.run(serve())
        return
    server = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        uvloop.run(run(port, args.requests))
    finally:
        server.terminate()
        server.wait(5)


if __name__ == "__main__":
    main()
