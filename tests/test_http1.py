"""The lean path's HTTP/1.1 client against a real server on 127.0.0.1 that closes kept-alive connections.

Servers close idle keep-alive connections on their own (uvicorn after 5 s), so
after a quiet spell every connection the pool kept may be dead. Here the
server answers one request per connection and then closes it, while saying
nothing of closing (HTTP/1.1 keep-alive by default): every idle connection
the pool keeps is one the server has already given up.
"""

from __future__ import annotations

import anyio
import pytest
from anyio.abc import SocketStream

from manifold.upstream.http1 import Pool

pytestmark = pytest.mark.anyio


class OneRequestServer:
    """Answers the first request on each connection with 200 "ok", then hangs up."""

    def __init__(self) -> None:
        self.connections = 0
        self.answered = 0

    async def handle(self, stream: SocketStream) -> None:
        self.connections += 1
        async with stream:
            request = b""
            while b"\r\n\r\n" not in request:
                try:
                    request += await stream.receive()
                except anyio.EndOfStream:
                    return
            head, _, body = request.partition(b"\r\n\r\n")
            length = next(
                (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
                0,
            )
            while len(body) < length:
                body += await stream.receive()
            await stream.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok")
            self.answered += 1


async def post(pool: Pool) -> tuple[int, bytes]:
    async with pool.request("POST", {"content-type": "application/json"}, b"{}") as response:
        return response.status, await response.read()


async def test_requests_after_the_server_closed_every_idle_connection_succeed() -> None:
    server = OneRequestServer()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, server.handle)
        pool = Pool(f"http://127.0.0.1:{port}/mcp", {}, connect_timeout=5)
        try:
            with anyio.fail_after(10):
                # Four at once: four connections, each kept by the pool, each closed by the server.
                results: list[tuple[int, bytes]] = []

                async def one() -> None:
                    results.append(await post(pool))

                async with anyio.create_task_group() as burst:
                    for _ in range(4):
                        burst.start_soon(one)
                assert results == [(200, b"ok")] * 4
                assert server.connections == 4

                # One after another: the first finds a dead connection and the pool's others dead too.
                for _ in range(3):
                    assert await post(pool) == (200, b"ok")
                assert server.answered == 7
                assert server.connections == 4 + 3  # one retry each: no dead connection tried twice
        finally:
            await pool.aclose()
            tg.cancel_scope.cancel()
