"""Streamable-HTTP upstreams: one pool of kept-alive connections per server, large replies whole.

The SDK's client closes each SSE reply as soon as the response event is in, which drops the TCP
connection; Manifold reads the reply to its end so the connection is reused. Connections are
counted from the kernel's TCP table (ephemeral ports talking to the upstream's port).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from support import async_wait_for, http_upstream

from manifold.config import SERVER_CONFIG, GatewayConfig
from manifold.gateway import Gateway
from manifold.upstream.connection import State

pytestmark = pytest.mark.anyio


def peer_ports(port: int) -> set[int]:
    """Ephemeral ports of the TCP connections (any state but LISTEN, TIME_WAIT included) to `port`."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) < 4 or fields[3] == "0A":
                continue
            local = int(fields[1].rsplit(":", 1)[1], 16)
            remote = int(fields[2].rsplit(":", 1)[1], 16)
            if remote == port:
                ports.add(local)
    return ports


async def test_calls_reuse_connections_and_large_replies_pass(tmp_path: Any) -> None:
    async with http_upstream("--name", "web") as url:
        port = urlsplit(url).port
        assert port is not None
        body = {"mcp_server_type": "streamable_http", "server_url": url + "/mcp"}
        gateway = Gateway(GatewayConfig(servers={"web": SERVER_CONFIG.validate_python(body)}), watch=False)
        async with gateway.running():
            upstream = gateway.upstreams["web"]
            await async_wait_for(lambda: upstream.state == State.READY, 30, what="the upstream to be ready")
            await gateway.call_tool("web__echo", {"text": "warm"})
            before = peer_ports(port)
            for i in range(40):
                result = await gateway.call_tool("web__echo", {"text": f"call {i}"})
                assert result["content"][0]["text"] == f"call {i}"
            opened = peer_ports(port) - before
            assert len(opened) <= 2, f"{len(opened)} new TCP connections for 40 calls"
            # Over the SDK's 1 MiB default for one SSE event.
            big = "y" * (3 * 1024 * 1024)
            result = await gateway.call_tool("web__echo", {"text": big})
            assert result["content"][0]["text"] == big
