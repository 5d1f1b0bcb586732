"""What the stdio reaper costs: spawn time, and (to show it is nothing) per-call time.

    .venv/bin/python bench/reaper_cost.py [--repeat 30] [--calls 2000]

The reaper (src/manifold/upstream/reaper.py) is one extra `python -I -S` between Manifold and each
stdio server; the server's pipes are Manifold's directly. Measured here, on this machine:

1. spawn to exit of `/bin/true`, directly (`anyio.open_process`, new session) vs under the reaper;
2. spawn to an answered `initialize` of a stdlib-only MCP server (tests/upstreams/chaos_server.py),
   with the SDK's `stdio_client` vs Manifold's `open_stdio` (reaper, stderr tail, size limit);
3. sequential echo tools/call round trips on one session, SDK transport vs Manifold's.

Medians (and p90) over `--repeat` runs; the table goes to stdout.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from manifold.config import StdioServerConfig  # noqa: E402
from manifold.upstream import reaper  # noqa: E402
from manifold.upstream.stdio import open_stdio  # noqa: E402

CHAOS = str(ROOT / "tests" / "upstreams" / "chaos_server.py")


async def spawn_true(under_reaper: bool) -> float:
    import os

    started = time.perf_counter()
    if under_reaper:
        r, w = os.pipe()
        try:
            process = await anyio.open_process(
                reaper.command_line(sys.executable, r, "/bin/true", []),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=None,
                start_new_session=True,
                pass_fds=(r,),
            )
        finally:
            os.close(r)
        await process.wait()
        os.close(w)
    else:
        process = await anyio.open_process(
            ["/bin/true"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=None, start_new_session=True
        )
        await process.wait()
    return time.perf_counter() - started


async def initialize_sdk() -> float:
    started = time.perf_counter()
    params = StdioServerParameters(command=sys.executable, args=[CHAOS])
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        elapsed = time.perf_counter() - started
    return elapsed


async def initialize_manifold() -> float:
    started = time.perf_counter()
    config = StdioServerConfig(command=sys.executable, args=[CHAOS])
    async with open_stdio(config) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        elapsed = time.perf_counter() - started
    return elapsed


async def calls(manifold: bool, count: int) -> tuple[float, float]:
    """(wall, client CPU) seconds per echo call, sequential, after 50 warm-up calls.

    Client CPU is the steadier figure on a busy machine: the transports differ only here.
    """
    if manifold:
        transport = open_stdio(StdioServerConfig(command=sys.executable, args=[CHAOS]))
    else:
        transport = stdio_client(StdioServerParameters(command=sys.executable, args=[CHAOS]))
    async with transport as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        for _ in range(50):
            await session.call_tool("echo", {"text": "warm"})
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(count):
            await session.call_tool("echo", {"text": f"call {i}"})
        return (time.perf_counter() - started) / count, (time.process_time() - cpu) / count


def summary(values: list[float]) -> str:
    values = sorted(values)
    p90 = values[min(len(values) - 1, int(len(values) * 0.9))]
    return f"median {statistics.median(values) * 1000:7.2f} ms   p90 {p90 * 1000:7.2f} ms"


async def repeat(fn: Callable[[], Awaitable[float]], times: int) -> list[float]:
    await fn()  # warm the page cache
    return [await fn() for _ in range(times)]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()

    direct = await repeat(lambda: spawn_true(False), args.repeat)
    reaped = await repeat(lambda: spawn_true(True), args.repeat)
    sdk = await repeat(initialize_sdk, args.repeat)
    ours = await repeat(initialize_manifold, args.repeat)
    print(f"spawn+exit /bin/true, direct          {summary(direct)}")
    print(f"spawn+exit /bin/true, under reaper    {summary(reaped)}")
    print(f"  reaper cost at spawn (medians)      {(statistics.median(reaped) - statistics.median(direct)) * 1000:7.2f} ms")
    print(f"spawn to initialize, SDK stdio_client {summary(sdk)}")
    print(f"spawn to initialize, Manifold stdio   {summary(ours)}")
    print(f"  difference (medians)                {(statistics.median(ours) - statistics.median(sdk)) * 1000:7.2f} ms")
    rounds = [(await calls(False, args.calls), await calls(True, args.calls)) for _ in range(3)]  # interleaved
    for label, index in (("SDK stdio transport     ", 0), ("Manifold stdio transport", 1)):
        wall = statistics.median(r[index][0] for r in rounds)
        cpu = statistics.median(r[index][1] for r in rounds)
        print(f"echo call, {label}   wall {wall * 1e6:7.1f} us   client CPU {cpu * 1e6:7.1f} us")


if __name__ == "__main__":
    anyio.run(main)
