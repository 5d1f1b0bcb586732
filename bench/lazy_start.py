"""First-call latency of a lazy stdio server vs an eager one, through Manifold's Gateway.

    .venv/bin/python bench/lazy_start.py [--repeat 10] [--server fixture|chaos]

One gateway (in this process, no store) runs two copies of the same upstream: `eager`
(started with the gateway) and `lazy` (`lazy: true`). Measured, as the median and p90 of
`--repeat` runs of one `echo` tools/call each:

- eager, call: the server is running already (its start was paid at gateway start-up);
- lazy, first call: the server is asleep, so the call starts it, waits for its handshake and
  lists, then calls (before each run the server is put to sleep and its process is gone);
- lazy, next call: the call right after, on the running server.

`--server fixture` is tests/upstreams/fixture_server.py (a Python MCP SDK server: the SDK
import dominates its start); `chaos` is tests/upstreams/chaos_server.py (standard library
only: close to the floor of a stdio start). The table goes to stdout.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from manifold.config import parse_config  # noqa: E402
from manifold.gateway import Gateway  # noqa: E402
from manifold.logging import setup_logging  # noqa: E402
from manifold.upstream.connection import State, Upstream  # noqa: E402

SERVERS = {
    "fixture": ROOT / "tests" / "upstreams" / "fixture_server.py",
    "chaos": ROOT / "tests" / "upstreams" / "chaos_server.py",
}


def _alive(pid: int | None) -> bool:
    return pid is not None and Path(f"/proc/{pid}").exists()


async def _until(check: object, limit: float = 30.0) -> None:
    with anyio.fail_after(limit):
        while not check():  # type: ignore[operator]
            await anyio.sleep(0.01)


async def put_to_sleep(upstream: Upstream) -> None:
    """Stop the lazy server now and wait until its process is gone."""
    pid = upstream.report.pid
    upstream.sleep_now()
    await _until(lambda: upstream.state == State.IDLE and not upstream.ready)
    await _until(lambda: not _alive(pid))


async def call_ms(gateway: Gateway, name: str) -> float:
    started = time.perf_counter()
    result = await gateway.call_tool(name, {"text": "hello"})
    elapsed = (time.perf_counter() - started) * 1000
    if result.get("isError"):
        raise RuntimeError(f"{name} answered an error: {result}")
    return elapsed


async def measure(server: str, repeat: int) -> tuple[dict[str, list[float]], float]:
    script = str(SERVERS[server])
    def entry(name: str) -> dict[str, object]:
        return {"mcp_server_type": "stdio", "command": sys.executable, "args": [script, "--name", name]}

    config = parse_config(
        {
            "gateway": {"idle_timeout": 3600},
            "mcp_servers": {"eager": entry("eager"), "lazy": {**entry("lazy"), "lazy": True}},
        }
    )
    gateway = Gateway(config, watch=False)
    times: dict[str, list[float]] = {"eager, call": [], "lazy, first call": [], "lazy, next call": []}
    started = time.perf_counter()
    async with gateway.running():
        await gateway.wait_settled()
        eager_ready = (time.perf_counter() - started) * 1000
        lazy = gateway.upstreams["lazy"]
        await call_ms(gateway, "eager__echo")  # not counted: the first request on a fresh session
        for _ in range(repeat):
            await put_to_sleep(lazy)
            times["eager, call"].append(await call_ms(gateway, "eager__echo"))
            times["lazy, first call"].append(await call_ms(gateway, "lazy__echo"))
            times["lazy, next call"].append(await call_ms(gateway, "lazy__echo"))
    return times, eager_ready


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10, help="runs per measurement (default 10)")
    parser.add_argument("--server", choices=sorted(SERVERS), default="fixture")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    setup_logging("warning")
    times, eager_ready = anyio.run(measure, args.server, args.repeat)
    print(f"Lazy vs eager first-call latency ({args.server} server over stdio, {args.repeat} runs)")
    print(f"{'':<20} {'median ms':>10} {'p90 ms':>10}")
    for what, values in times.items():
        print(f"{what:<20} {statistics.median(values):>10.1f} {p90(values):>10.1f}")
    print(f"(gateway start to both servers ready: {eager_ready:.0f} ms, paid once by the eager server)")


if __name__ == "__main__":
    main()
