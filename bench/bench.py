"""Manifold's benchmark (issue 7): the gateway side by side with a direct connection and a peer.

    .venv/bin/python bench/bench.py [--repeat N] [--quick] [--json FILE] [--no-peer] [--only SECTIONS]

or `make bench` (installs the `bench` extra, FastMCP, first). One run measures, on this machine:

1. per-call latency of an echo tools/call (p50/p99 over sequential calls after warm-up): direct
   client->upstream vs through Manifold, for stdio face->stdio upstream, /mcp->streamable HTTP, and
   /sse->SSE, and through FastMCP's proxy (stdio and streamable HTTP); the calls go round direct,
   Manifold and FastMCP in blocks of 25, so all three are measured over the same seconds;
2. throughput (calls/s) with 16 and 64 in flight on one session and spread over 8 sessions;
3. catalogue scale: tools/list through Manifold fronting 20x50 and 100x100 tools, cold and warm,
   vs a direct list of as many tools from one server;
4. start-up: launch to first successful tools/list with 1, 10, 20 stdio upstreams vs the same
   upstreams started in parallel by the client itself (and FastMCP with the largest count);
5. peak RSS (VmHWM) of the gateway process (children not included);
6. the targets of issue 7, each with PASS/MISS.

Every figure is the median over `--repeat` runs; the table shows the spread of the per-repeat
values ((max-min)/median) so a noisy run is visible. The table goes to stdout, progress to stderr.
Only 127.0.0.1 is used; every process started here is stopped (and any process still carrying this
run's tag at the end is reported as an orphan and killed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

import anyio
import anyio.to_thread
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import PaginatedRequestParams
from support import FIXTURE, PYTHON, running_process, subprocess_env

BENCH = Path(__file__).resolve().parent
PEER_SCRIPT = str(BENCH / "fastmcp_proxy.py")
UPSTREAM = FIXTURE
"""The upstream everywhere: tests/upstreams/fixture_server.py (over HTTP its listener must be an
IPPROTO_TCP socket, or asyncio leaves Nagle on and kept-alive replies stall ~40 ms on delayed ACKs)."""
RUN_TAG = f"mbench{os.getpid()}"
"""Every upstream started here carries this in its --name: the orphan check looks for it."""
ECHO_ARGS = {"text": "hello"}
FIXTURE_BUILTIN_TOOLS = 5  # echo, whoami, fail, slow, register_tool


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- settings -------------------------------------------------------------------------------------


@dataclass
class Settings:
    repeat: int = 3
    calls: int = 500
    warmup: int = 100
    tp_seconds: float = 1.5
    inflight: tuple[int, ...] = (16, 64)
    multi_sessions: int = 8
    transports: tuple[str, ...] = ("stdio", "http", "sse")
    catalogs: tuple[tuple[int, int], ...] = ((20, 50), (100, 100))
    catalog_warm: int = 10
    heavy_tools: int = 5000
    """Catalogues with more tools than this run once per benchmark, not once per repeat."""
    startup: tuple[int, ...] = (1, 10, 20)
    peer: bool = True
    peer_transports: tuple[str, ...] = ("stdio", "http")
    peer_startup: bool = True
    sections: tuple[str, ...] = ("latency", "catalog", "startup")
    connect_timeout: float = 180.0
    scenario_timeout: float = 600.0
    quick: bool = False
    settle_seconds: float = 30.0
    """Before each run, wait up to this long for the machine to go quiet (0: neither wait nor measure)."""


def parse_args(argv: list[str] | None = None) -> tuple[Settings, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=None, help="repeated runs per figure (default 3; quick: 1)")
    p.add_argument("--quick", action="store_true", help="tiny counts: checks the script works (smoke test)")
    p.add_argument("--calls", type=int, default=None, help="sequential calls per latency run (default 500)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls before timing (default 100)")
    p.add_argument("--tp-seconds", type=float, default=None, help="seconds per throughput run (default 1.5)")
    p.add_argument("--catalog", default=None, help="catalogues as SERVERSxTOOLS,... (default 20x50,100x100)")
    p.add_argument("--startup", default=None, help="upstream counts for start-up, e.g. 1,10,20")
    p.add_argument("--transports", default=None, help="subset of stdio,http,sse")
    p.add_argument("--only", default=None, help="subset of latency,catalog,startup")
    p.add_argument("--no-peer", action="store_true", help="skip FastMCP")
    p.add_argument("--no-peer-startup", action="store_true", help="skip FastMCP's (sequential) start-up")
    p.add_argument("--json", dest="json_path", default=None, help="also write raw per-repeat figures here")
    p.add_argument(
        "--from-json", default=None, help="print the table of an earlier run's --json file; run nothing"
    )
    ns = p.parse_args(argv)
    s = Settings()
    if ns.quick:
        s = Settings(
            repeat=1,
            calls=10,
            warmup=2,
            tp_seconds=0.3,
            inflight=(16,),
            multi_sessions=2,
            transports=("stdio", "http"),
            catalogs=((2, 10),),
            catalog_warm=2,
            startup=(1,),
            peer_transports=("stdio",),
            peer_startup=False,
            connect_timeout=60.0,
            scenario_timeout=90.0,
            quick=True,
            settle_seconds=0.0,
        )
    if ns.repeat is not None:
        s.repeat = max(1, ns.repeat)
    if ns.calls is not None:
        s.calls = max(1, ns.calls)
    if ns.warmup is not None:
        s.warmup = max(0, ns.warmup)
    if ns.tp_seconds is not None:
        s.tp_seconds = max(0.1, ns.tp_seconds)
    if ns.catalog is not None:
        s.catalogs = tuple(
            (int(a), int(b)) for a, b in (part.lower().split("x") for part in ns.catalog.split(",") if part)
        )
    if ns.startup is not None:
        s.startup = tuple(int(x) for x in ns.startup.split(",") if x)
    if ns.transports is not None:
        s.transports = tuple(t for t in ns.transports.split(",") if t)
        s.peer_transports = tuple(t for t in s.peer_transports if t in s.transports)
    if ns.only is not None:
        s.sections = tuple(x for x in ns.only.split(",") if x)
    if ns.no_peer:
        s.peer = False
    if ns.no_peer_startup:
        s.peer_startup = False
    if s.peer and not fastmcp_version():
        log("fastmcp is not installed (`make bench` installs the bench extra): the peer is skipped")
        s.peer = False
    return s, ns


def fastmcp_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fastmcp")
    except PackageNotFoundError:
        return None


# --- results --------------------------------------------------------------------------------------


class Results:
    """Per-repeat samples of every figure, keyed by a tuple; summaries are medians."""

    def __init__(self) -> None:
        self.samples: dict[tuple[Any, ...], list[float]] = {}
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def add(self, key: tuple[Any, ...], value: float | None) -> None:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return
        self.samples.setdefault(key, []).append(float(value))

    def med(self, *key: Any) -> float | None:
        values = self.samples.get(tuple(key))
        return statistics.median(values) if values else None

    def spread(self, *key: Any) -> float | None:
        """(max - min) / median of the per-repeat values, in percent; None for one value."""
        values = self.samples.get(tuple(key))
        if not values or len(values) < 2:
            return None
        mid = statistics.median(values)
        return (max(values) - min(values)) / mid * 100 if mid else None

    def n(self, *key: Any) -> int:
        return len(self.samples.get(tuple(key), []))

    def to_json(self) -> dict[str, Any]:
        return {
            "samples": {"/".join(map(str, k)): v for k, v in self.samples.items()},
            "errors": self.errors,
            "warnings": self.warnings,
        }


# --- processes --------------------------------------------------------------------------------------


class Workspace:
    """A temporary directory for configs, logs and the gateway's store; removed at the end."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="manifold-bench-"))
        self._count = 0

    def path(self, stem: str, suffix: str) -> Path:
        self._count += 1
        return self.dir / f"{stem}-{self._count:03d}{suffix}"

    def gateway_env(self) -> dict[str, str]:
        """Environment for a gateway: src/ importable, its store and data dir in the workspace."""
        db = self.path("store", ".db")
        env = {
            "PYTHONPATH": subprocess_env()["PYTHONPATH"],
            "PYTHONUNBUFFERED": "1",
            "XDG_DATA_HOME": str(self.dir / "data"),
            "MANIFOLD_DB": f"sqlite+aiosqlite:///{db}",
        }
        return env

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def fixture_args(name: str, *extra: str) -> list[str]:
    return [UPSTREAM, "--name", f"{RUN_TAG}-{name}", *extra]


def write_config(ws: Workspace, servers: dict[str, dict[str, Any]]) -> Path:
    path = ws.path("config", ".json")  # JSON is YAML; no quoting surprises
    path.write_text(json.dumps({"mcp_servers": servers}, indent=1))
    return path


def stdio_server_entry(name: str, *extra: str, connect_timeout: float) -> dict[str, Any]:
    return {
        "mcp_server_type": "stdio",
        "command": PYTHON,
        "args": fixture_args(name, *extra),
        "connect_timeout": connect_timeout,
    }


@asynccontextmanager
async def http_process(
    cmd: list[str], env: dict[str, str] | None = None, timeout: float = 60.0
) -> AsyncIterator[tuple[Any, str]]:
    """A process that prints `LISTENING <url>`; started and stopped on a worker thread."""
    full_env = subprocess_env(env)
    cm = running_process(cmd, env=full_env, timeout=timeout)
    with anyio.CancelScope(shield=True):
        proc, url = await anyio.to_thread.run_sync(cm.__enter__)
    try:
        yield proc, url
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(cm.__exit__, None, None, None)


def child_pid(marker: str) -> int | None:
    """The pid of a direct child of this process whose command line contains `marker`."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != me:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if marker in cmdline:
            return int(entry)
    return None


def tagged_pids(tag: str = "") -> list[int]:
    """Live processes whose command line carries this run's tag (processes this run started)."""
    found = []
    needle = (RUN_TAG + tag).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if needle in cmdline and state != "Z":
            found.append(int(entry))
    return found


def peak_rss_mb(pid: int | None) -> float | None:
    """VmHWM (peak resident set) of one process, children not included, in MB."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of one process so far."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def tcp_peer_ports(port: int) -> set[int]:
    """Ephemeral ports of every TCP connection (any state but LISTEN) to or from `port` on this host.

    Closed connections linger in TIME_WAIT for a minute, so the set taken after a run minus the set
    taken before it counts the connections opened during the run.
    """
    peers: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 4 or parts[3] == "0A":
                continue
            lport = int(parts[1].rsplit(":", 1)[1], 16)
            rport = int(parts[2].rsplit(":", 1)[1], 16)
            if lport == port:
                peers.add(rport)
            elif rport == port:
                peers.add(lport)
    return peers


def url_port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


# --- MCP client side -------------------------------------------------------------------------------


@dataclass
class Endpoint:
    """Where the benchmark client connects, and which tool it calls there."""

    label: str
    transport: str  # stdio | http | sse
    tool: str
    stdio: StdioServerParameters | None = None
    url: str | None = None
    errlog: Path | None = None
    pid: int | None = None  # the process measured for RSS/CPU (gateway, proxy or upstream)
    pid_marker: str | None = None  # stdio: find the pid among our children by this
    upstream_port: int | None = None  # the HTTP upstream behind it (connection counting)


@asynccontextmanager
async def open_session(ep: Endpoint, timeout: float = 60.0) -> AsyncIterator[ClientSession]:
    async with AsyncExitStack() as stack:
        if ep.transport == "stdio":
            assert ep.stdio is not None and ep.errlog is not None
            # stdio_client wants a real file (the child's stderr); opening a local log file does not block.
            errlog = stack.enter_context(open(ep.errlog, "a"))  # noqa: ASYNC230, SIM115
            read, write = await stack.enter_async_context(stdio_client(ep.stdio, errlog=errlog))
        elif ep.transport == "http":
            assert ep.url is not None
            # No cap on one SSE event: a 10,000-tool list is one ~3 MB event (the SDK's default cap is 1 MB).
            read, write = await stack.enter_async_context(
                streamable_http_client(ep.url, max_sse_event_size=None)
            )
        else:
            assert ep.url is not None
            read, write = await stack.enter_async_context(
                sse_client(ep.url, timeout=30, sse_read_timeout=3600)
            )
        session = await stack.enter_async_context(ClientSession(read, write, read_timeout_seconds=timeout))
        with anyio.fail_after(timeout):
            await session.initialize()
        if ep.pid is None and ep.pid_marker:
            ep.pid = child_pid(ep.pid_marker)
        yield session


async def list_all_tools(session: ClientSession) -> list[Any]:
    tools: list[Any] = []
    cursor: str | None = None
    while True:
        result = await session.list_tools(params=PaginatedRequestParams(cursor=cursor) if cursor else None)
        tools.extend(result.tools)
        cursor = result.next_cursor
        if not cursor:
            return tools


async def call_echo(session: ClientSession, tool: str) -> None:
    result = await session.call_tool(tool, ECHO_ARGS)
    if result.is_error:
        raise RuntimeError(f"{tool} answered an error: {result.content}")


async def measure_throughput(
    sessions: list[ClientSession], tool: str, inflight: int, seconds: float
) -> float:
    """Calls per second with `inflight` calls outstanding, spread evenly over `sessions`.

    Every worker keeps one call outstanding until `seconds` have passed; the rate is the calls
    completed over the time until the last one returned. A short warm-up burst comes first.
    """
    workers = [sessions[i % len(sessions)] for i in range(inflight)]

    async def burst(duration: float) -> float:
        done = 0
        t0 = time.perf_counter()
        deadline = t0 + duration

        async def worker(session: ClientSession) -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await call_echo(session, tool)
                done += 1

        async with anyio.create_task_group() as tg:
            for session in workers:
                tg.start_soon(worker, session)
        return done / (time.perf_counter() - t0)

    await burst(min(0.5, seconds / 4))
    return await burst(seconds)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


# --- scenarios: one (transport, kind) pair, one process set ----------------------------------------


KINDS = ("direct", "manifold", "fastmcp")


@asynccontextmanager
async def scenario(ws: Workspace, s: Settings, transport: str, kind: str) -> AsyncIterator[Endpoint]:
    """Start what `kind` needs over `transport` and yield the endpoint the client talks to."""
    gw_env = ws.gateway_env()
    if transport == "stdio":
        errlog = ws.path(f"{kind}-stdio", ".log")
        if kind == "direct":
            params = StdioServerParameters(command=PYTHON, args=fixture_args("direct"))
            yield Endpoint(
                "direct stdio", "stdio", "echo", stdio=params, errlog=errlog, pid_marker=f"{RUN_TAG}-direct"
            )
        elif kind == "manifold":
            cfg = write_config(ws, {"fx": stdio_server_entry("up", connect_timeout=s.connect_timeout)})
            params = StdioServerParameters(
                command=PYTHON, args=["-m", "manifold", "serve", "--config", str(cfg)], env=gw_env
            )
            yield Endpoint(
                "manifold stdio", "stdio", "fx__echo", stdio=params, errlog=errlog, pid_marker=str(cfg)
            )
        else:
            up = ",".join(fixture_args("up"))
            params = StdioServerParameters(
                command=PYTHON, args=[PEER_SCRIPT, "--transport", "stdio", "--upstream", f"fx=stdio:{up}"]
            )
            yield Endpoint(
                "fastmcp stdio", "stdio", "fx_echo", stdio=params, errlog=errlog, pid_marker=PEER_SCRIPT
            )
        return

    fixture_transport = "streamable-http" if transport == "http" else "sse"
    path = "/mcp" if transport == "http" else "/sse"
    upstream_cmd = [PYTHON, *fixture_args(kind), "--transport", fixture_transport, "--port", "0"]
    async with http_process(upstream_cmd) as (up_proc, up_base):
        up_url = up_base + path
        if kind == "direct":
            yield Endpoint(
                f"direct {transport}",
                transport,
                "echo",
                url=up_url,
                pid=up_proc.pid,
                upstream_port=url_port(up_base),
            )
            return
        if kind == "manifold":
            entry = {
                "mcp_server_type": "streamable_http" if transport == "http" else "sse",
                "server_url": up_url,
                "connect_timeout": s.connect_timeout,
            }
            cfg = write_config(ws, {"fx": entry})
            cmd = [
                PYTHON,
                "-m",
                "manifold",
                "serve",
                "--config",
                str(cfg),
                "--transport",
                "http",
                "--port",
                "0",
            ]
            async with http_process(cmd, env=gw_env) as (proc, base):
                yield Endpoint(
                    f"manifold {transport}",
                    transport,
                    "fx__echo",
                    url=base + path,
                    pid=proc.pid,
                    upstream_port=url_port(up_base),
                )
            return
        kind_arg = "http" if transport == "http" else "sse"
        cmd = [
            PYTHON,
            PEER_SCRIPT,
            "--transport",
            kind_arg,
            "--port",
            "0",
            "--upstream",
            f"fx={kind_arg}:{up_url}",
        ]
        async with http_process(cmd) as (proc, base):
            yield Endpoint(
                f"fastmcp {transport}",
                transport,
                "fx_echo",
                url=base + path,
                pid=proc.pid,
                upstream_port=url_port(up_base),
            )


async def run_latency_scenario(ws: Workspace, s: Settings, r: Results, transport: str, kinds: list[str]) -> None:
    """Every kind over one transport, side by side: latency from interleaved calls, then throughput.

    All the kinds' processes are up at once and the sequential calls go round them in blocks (the
    order rotating each round), so a slow spell of a shared machine lands on all of them alike
    instead of on whichever ran then: the added milliseconds are a difference of two figures taken
    over the same seconds. Within a block the calls are back to back, as in a run of one kind
    alone (calls that alternate kind by kind measure a process woken from idle every time: about
    0.7 ms more per call here, on direct as on the others). Throughput runs one kind at a time
    (the others idle)."""
    with anyio.fail_after(s.scenario_timeout):
        async with AsyncExitStack() as stack:
            opened: list[tuple[str, Endpoint, ClientSession]] = []
            for kind in kinds:
                try:
                    ep = await stack.enter_async_context(scenario(ws, s, transport, kind))
                    session = await stack.enter_async_context(open_session(ep, timeout=s.connect_timeout))
                    tools = await list_all_tools(session)  # through a gateway: waits for the upstream
                    if not any(t.name == ep.tool for t in tools):
                        raise RuntimeError(f"{ep.label}: no tool {ep.tool} in {[t.name for t in tools][:10]}")
                except Exception as exc:
                    if kind != "fastmcp":
                        raise
                    r.warnings.append(f"fastmcp {transport}: {exc!r}")  # the peer's trouble is not ours
                    log(f"FAILED fastmcp {transport}: {exc!r}")
                    continue
                opened.append((kind, ep, session))
            await _interleaved_latency(s, r, transport, opened)
            for kind, ep, session in opened:
                await _throughput(s, r, transport, kind, ep, session)
                if kind != "direct":
                    r.add(("rss", kind, transport, 1), peak_rss_mb(ep.pid))


BLOCK = 25
"""Sequential calls to one kind before the next kind's turn."""
REWARM = 2
"""Unmeasured calls that start each block (the first call after an idle spell is a cold one)."""


async def _interleaved_latency(
    s: Settings, r: Results, transport: str, opened: list[tuple[str, Endpoint, ClientSession]]
) -> None:
    for _ in range(s.warmup):
        for _, ep, session in opened:
            await call_echo(session, ep.tool)
    ports = {kind: tcp_peer_ports(ep.upstream_port) if ep.upstream_port else set() for kind, ep, _ in opened}
    cpu0 = {kind: cpu_seconds(ep.pid) for kind, ep, _ in opened}
    samples: dict[str, list[float]] = {kind: [] for kind, _, _ in opened}
    clock = time.perf_counter
    rewarm = 0
    for block, first in enumerate(range(0, s.calls, BLOCK)):
        turn = block % len(opened)
        for kind, ep, session in opened[turn:] + opened[:turn]:
            for _ in range(REWARM):  # the kind has idled through the others' blocks
                await call_echo(session, ep.tool)
            for _ in range(min(BLOCK, s.calls - first)):
                t0 = clock()
                await call_echo(session, ep.tool)
                samples[kind].append(clock() - t0)
        rewarm += REWARM
    calls = s.calls + rewarm  # the calls since cpu0 and ports were taken
    for kind, ep, _ in opened:
        cpu1 = cpu_seconds(ep.pid)
        values = sorted(samples[kind])
        for stat, q in (("p50", 0.50), ("p99", 0.99)):
            r.add(("lat", transport, kind, stat), percentile(values, q) * 1000)
        r.add(("lat", transport, kind, "mean"), statistics.fmean(values) * 1000)
        before = cpu0[kind]
        if before is not None and cpu1 is not None and kind != "direct":
            r.add(("cpu", transport, kind), (cpu1 - before) / calls * 1000)
        if ep.upstream_port:
            opened_now = len(tcp_peer_ports(ep.upstream_port) - ports[kind])
            r.add(("tcp", transport, kind), opened_now / calls * 100)
        log(f"{ep.label}: p50 {percentile(values, 0.5) * 1000:.2f} ms, p99 {percentile(values, 0.99) * 1000:.2f} ms")


async def _throughput(s: Settings, r: Results, transport: str, kind: str, ep: Endpoint, session: ClientSession) -> None:
    for inflight in s.inflight:
        cps = await measure_throughput([session], ep.tool, inflight, s.tp_seconds)
        r.add(("tp", transport, kind, 1, inflight), cps)
        log(f"{ep.label}: {inflight} in flight on 1 session: {cps:.0f} calls/s")
    if transport != "stdio" and s.multi_sessions > 1:
        async with AsyncExitStack() as stack:
            sessions = [session]
            for _ in range(s.multi_sessions - 1):
                sessions.append(await stack.enter_async_context(open_session(ep, timeout=s.connect_timeout)))
            for inflight in s.inflight:
                cps = await measure_throughput(sessions, ep.tool, inflight, s.tp_seconds)
                r.add(("tp", transport, kind, s.multi_sessions, inflight), cps)
                log(f"{ep.label}: {inflight} in flight over {s.multi_sessions} sessions: {cps:.0f} calls/s")


# --- catalogue ------------------------------------------------------------------------------------------


async def wait_healthy(base: str, servers: int, deadline: float) -> None:
    """Poll the gateway's /healthz until every upstream is ready."""
    import httpx2

    async with httpx2.AsyncClient(timeout=10) as client:
        ready = -1
        while time.monotonic() < deadline:
            try:
                body = (await client.get(base + "/healthz")).json()
                ready = int(body.get("ready", -1))
                if ready >= servers:
                    return
            except (httpx2.HTTPError, ValueError):
                pass
            await anyio.sleep(0.1)
        raise TimeoutError(f"only {ready} of {servers} upstreams ready at the deadline")


async def time_lists(
    session: ClientSession, expected: int, warm: int, pid: int | None, upstream_tag: str = ""
) -> tuple[float, list[float], float | None, float | None]:
    """Cold list, warm list times, the serving process's CPU ms per warm list, and the CPU ms per
    warm list of the upstreams whose command line carries `upstream_tag` (0: no upstream round trip)."""
    t0 = time.perf_counter()
    tools = await list_all_tools(session)
    cold = time.perf_counter() - t0
    if len(tools) != expected:
        raise RuntimeError(f"tools/list returned {len(tools)} tools, expected {expected}")
    for _ in range(warm):  # warm-up: the gateway may still be busy with its own start-up just after "ready"
        await list_all_tools(session)
    warm_samples = []
    upstreams = tagged_pids(upstream_tag) if upstream_tag else []
    cpu0, up0 = cpu_seconds(pid), sum(cpu_seconds(p) or 0.0 for p in upstreams)
    for _ in range(warm):
        t0 = time.perf_counter()
        await list_all_tools(session)
        warm_samples.append(time.perf_counter() - t0)
    cpu1, up1 = cpu_seconds(pid), sum(cpu_seconds(p) or 0.0 for p in upstreams)
    cpu = (cpu1 - cpu0) / warm * 1000 if cpu0 is not None and cpu1 is not None and warm else None
    up_cpu = (up1 - up0) / warm * 1000 if upstreams and warm else None
    return cold, warm_samples, cpu, up_cpu


async def run_catalog_direct(ws: Workspace, s: Settings, r: Results, total: int) -> None:
    cmd = [
        PYTHON,
        *fixture_args("cat"),
        "--tools",
        str(total - FIXTURE_BUILTIN_TOOLS),
        "--transport",
        "streamable-http",
        "--port",
        "0",
    ]
    with anyio.fail_after(s.scenario_timeout):
        async with http_process(cmd) as (proc, base):
            ep = Endpoint("direct catalogue", "http", "echo", url=base + "/mcp")
            async with open_session(ep, timeout=s.connect_timeout) as session:
                cold, warm, cpu, _ = await time_lists(session, total, s.catalog_warm, proc.pid)
    r.add(("cat", "direct", total, "cpu"), cpu)
    r.add(("cat", "direct", total, "cold"), cold * 1000)
    r.add(("cat", "direct", total, "warm"), statistics.median(warm) * 1000)
    log(
        f"direct list of {total} tools: cold {cold * 1000:.1f} ms, warm {statistics.median(warm) * 1000:.1f} ms"
    )


async def run_catalog_manifold(ws: Workspace, s: Settings, r: Results, servers: int, per_server: int) -> None:
    total = servers * per_server
    entries = {
        f"s{i:03d}": stdio_server_entry(
            f"cat{i:03d}",
            "--tools",
            str(per_server - FIXTURE_BUILTIN_TOOLS),
            connect_timeout=s.connect_timeout,
        )
        for i in range(servers)
    }
    cfg = write_config(ws, entries)
    cmd = [PYTHON, "-m", "manifold", "serve", "--config", str(cfg), "--transport", "http", "--port", "0"]
    key = f"{servers}x{per_server}"
    with anyio.fail_after(s.scenario_timeout):
        t_launch = time.monotonic()
        async with http_process(cmd, env=ws.gateway_env(), timeout=s.connect_timeout + 60) as (proc, base):
            await wait_healthy(base, servers, time.monotonic() + s.connect_timeout + 60)
            ready = time.monotonic() - t_launch
            ep = Endpoint(f"manifold catalogue {key}", "http", "", url=base + "/mcp")
            async with open_session(ep, timeout=s.connect_timeout) as session:
                cold, warm, cpu, up_cpu = await time_lists(session, total, s.catalog_warm, proc.pid, "-cat")
            r.add(("rss", "manifold", "http", servers), peak_rss_mb(proc.pid))
    r.add(("cat", "manifold", key, "cpu"), cpu)
    r.add(("cat", "manifold", key, "upcpu"), up_cpu)
    r.add(("cat", "manifold", key, "cold"), cold * 1000)
    r.add(("cat", "manifold", key, "warm"), statistics.median(warm) * 1000)
    r.add(("cat", "manifold", key, "ready"), ready)
    log(
        f"manifold {key}: all ready after {ready:.1f} s; list cold {cold * 1000:.1f} ms, warm {statistics.median(warm) * 1000:.1f} ms"
    )


# --- start-up -------------------------------------------------------------------------------------------


async def run_startup_gateway(ws: Workspace, s: Settings, r: Results, count: int) -> None:
    entries = {
        f"u{i:02d}": stdio_server_entry(f"start{i:02d}", connect_timeout=s.connect_timeout)
        for i in range(count)
    }
    cfg = write_config(ws, entries)
    expected = count * FIXTURE_BUILTIN_TOOLS
    params = StdioServerParameters(
        command=PYTHON, args=["-m", "manifold", "serve", "--config", str(cfg)], env=ws.gateway_env()
    )
    ep = Endpoint(
        f"manifold start-up {count}",
        "stdio",
        "u00__echo",
        stdio=params,
        errlog=ws.path("startup", ".log"),
        pid_marker=str(cfg),
    )
    with anyio.fail_after(s.scenario_timeout):
        t0 = time.perf_counter()
        async with open_session(ep, timeout=s.connect_timeout + 30) as session:
            t_init = time.perf_counter() - t0
            tools = await list_all_tools(session)
            t_first = time.perf_counter() - t0
            first_count = len(tools)
            while len(tools) < expected and time.perf_counter() - t0 < s.connect_timeout + 30:
                await anyio.sleep(0.05)
                tools = await list_all_tools(session)
            t_full = time.perf_counter() - t0
            if len(tools) < expected:
                raise RuntimeError(f"only {len(tools)} of {expected} tools listed")
            for i in range(count):  # a few calls on every upstream before the memory reading
                for _ in range(5):
                    await call_echo(session, f"u{i:02d}__echo")
            r.add(("rss", "manifold", "stdio-startup", count), peak_rss_mb(ep.pid))
    r.add(("start", "manifold", count, "init"), t_init)
    r.add(("start", "manifold", count, "first"), t_first)
    r.add(("start", "manifold", count, "full"), t_full)
    log(
        f"manifold with {count} upstreams: initialize {t_init:.2f} s, first list {t_first:.2f} s "
        f"({first_count}/{expected} tools), all {t_full:.2f} s"
    )


async def run_startup_parallel(ws: Workspace, s: Settings, r: Results, count: int) -> None:
    """The same upstreams started in parallel by the client itself: launch to every one listed."""
    errlog = ws.path("parallel", ".log")
    all_ready = anyio.Event()
    done = 0
    finish = 0.0

    async def one(i: int, t0: float) -> None:
        nonlocal done, finish
        params = StdioServerParameters(command=PYTHON, args=fixture_args(f"par{i:02d}"))
        ep = Endpoint("parallel", "stdio", "echo", stdio=params, errlog=errlog)
        async with open_session(ep, timeout=s.connect_timeout + 30) as session:
            await list_all_tools(session)
            done += 1
            if done == count:
                finish = time.perf_counter() - t0
                all_ready.set()
            await all_ready.wait()

    with anyio.fail_after(s.scenario_timeout):
        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(one, i, t0)
    r.add(("start", "parallel", count, "full"), finish)
    log(f"{count} upstreams started in parallel by the client: all listed after {finish:.2f} s")


async def run_startup_peer(ws: Workspace, s: Settings, r: Results, count: int) -> None:
    ups = [f"u{i:02d}=stdio:{','.join(fixture_args(f'peer{i:02d}'))}" for i in range(count)]
    args = [PEER_SCRIPT, "--transport", "stdio"]
    for up in ups:
        args += ["--upstream", up]
    params = StdioServerParameters(command=PYTHON, args=args)
    ep = Endpoint(
        f"fastmcp start-up {count}",
        "stdio",
        "u00_echo",
        stdio=params,
        errlog=ws.path("peer-startup", ".log"),
        pid_marker=PEER_SCRIPT,
    )
    expected = count * FIXTURE_BUILTIN_TOOLS
    with anyio.fail_after(s.scenario_timeout):
        t0 = time.perf_counter()
        async with open_session(ep, timeout=s.connect_timeout * 2) as session:
            t_init = time.perf_counter() - t0
            tools = await list_all_tools(session)
            t_full = time.perf_counter() - t0
            if len(tools) < expected:
                raise RuntimeError(f"fastmcp listed {len(tools)} of {expected} tools")
            for i in range(count):
                for _ in range(5):
                    await call_echo(session, f"u{i:02d}_echo")
            r.add(("rss", "fastmcp", "stdio", count), peak_rss_mb(ep.pid))
    r.add(("start", "fastmcp", count, "init"), t_init)
    r.add(("start", "fastmcp", count, "full"), t_full)
    log(f"fastmcp with {count} upstreams: initialize {t_init:.2f} s, all listed {t_full:.2f} s")


# --- driver ------------------------------------------------------------------------------------------------


QUIET = 0.2
"""The share of the machine's CPU that may be busy when a run starts (the bench is idle then)."""
BUSY: list[float] = []
"""How busy the machine was just before each run (0-1): other work, since the bench is idle then."""


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


async def machine_busy(seconds: float = 0.5) -> float:
    """The share of all CPUs busy over the next `seconds` (every process, steal time included)."""
    busy0, total0 = _cpu_times()
    await anyio.sleep(seconds)
    busy1, total1 = _cpu_times()
    return (busy1 - busy0) / max(total1 - total0, 1)


async def settle(limit: float) -> float:
    """Wait (up to `limit` s) until the machine is quiet; how busy it was at the end.

    The start-up and catalogue runs leave processes exiting behind them, and a neighbour on a shared
    machine comes and goes: a run measured through either is partly a measure of them."""
    deadline = time.monotonic() + limit
    while True:
        busy = await machine_busy()
        if busy <= QUIET or time.monotonic() >= deadline:
            return busy


async def attempt(
    s: Settings, r: Results, what: str, fn: Callable[[], Awaitable[None]], *, peer: bool = False
) -> None:
    if s.settle_seconds > 0:
        BUSY.append(await settle(s.settle_seconds))
        log(f"-- {what} (machine {BUSY[-1]:.0%} busy)")
    else:
        log(f"-- {what}")
    try:
        await fn()
    except Exception as exc:  # noqa: BLE001 - one broken scenario must not stop the others
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        line = f"{what}: {detail}"
        log(f"FAILED {line}")
        (r.warnings if peer else r.errors).append(line)


async def run_all(s: Settings, ws: Workspace, r: Results) -> None:
    kinds = [k for k in KINDS if k != "fastmcp" or s.peer]
    for rep in range(s.repeat):
        log(f"=== repeat {rep + 1} of {s.repeat}")
        order = kinds if rep % 2 == 0 else list(reversed(kinds))  # alternate, so drift hits both sides
        if "latency" in s.sections:
            for transport in s.transports:
                here = [k for k in order if k != "fastmcp" or transport in s.peer_transports]
                await attempt(
                    s,
                    r,
                    f"latency+throughput {transport} ({', '.join(here)})",
                    lambda t=transport, k=here: run_latency_scenario(ws, s, r, t, k),
                )
        if "catalog" in s.sections:
            for servers, per_server in s.catalogs:
                total = servers * per_server
                if total > s.heavy_tools and rep > 0:
                    continue
                await attempt(s, r, f"catalogue direct {total}", lambda t=total: run_catalog_direct(ws, s, r, t))
                await attempt(
                    s,
                    r,
                    f"catalogue manifold {servers}x{per_server}",
                    lambda a=servers, b=per_server: run_catalog_manifold(ws, s, r, a, b),
                )
        if "startup" in s.sections:
            for count in s.startup:
                runs = [
                    ("manifold", lambda c=count: run_startup_gateway(ws, s, r, c)),
                    ("parallel", lambda c=count: run_startup_parallel(ws, s, r, c)),
                ]
                for name, fn in runs if rep % 2 == 0 else list(reversed(runs)):
                    await attempt(s, r, f"start-up {name} {count}", fn)
            if s.peer and s.peer_startup and s.startup and rep == 0:  # sequential connects: slow, run once
                count = max(s.startup)
                await attempt(
                    s, r, f"start-up fastmcp {count}", lambda c=count: run_startup_peer(ws, s, r, c), peer=True
                )


# --- the table -------------------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}{suffix}"


def fmt_noise(r: Results, *key: Any) -> str:
    spread = r.spread(*key)
    if spread is None:
        return ""
    return f"±{spread / 2:.0f}%"


def cell(r: Results, *key: Any, digits: int = 2) -> str:
    value = r.med(*key)
    if value is None:
        return "-"
    noise = fmt_noise(r, *key)
    return f"{value:.{digits}f}" + (f" {noise}" if noise else "")


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def added(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "-"
    return f"{a - b:+.2f}"


def render(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    out = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    out.append("  ".join("-" * w for w in widths))
    for row in rows:
        out.append(
            "  ".join(
                str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))
            )
        )
    return out


TRANSPORT_LABEL = {"stdio": "stdio→stdio", "http": "HTTP /mcp→streamable HTTP", "sse": "SSE /sse→SSE"}


@dataclass
class Target:
    text: str
    measured: str
    ok: bool | None  # None: not measured


def machine_line() -> str:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.0f} GB RAM"
    except (OSError, ValueError, IndexError):
        pass
    from importlib.metadata import version

    peer = fastmcp_version()
    return (
        f"{cpu}, {os.cpu_count()} CPUs, {mem}; Linux {platform.release()}; Python {platform.python_version()}; "
        f"mcp {version('mcp')}; manifold {version('mcp-manifold')}" + (f"; fastmcp {peer}" if peer else "")
    )


def report(
    s: Settings,
    r: Results,
    load_before: tuple[float, ...],
    load_after: tuple[float, ...],
    elapsed: float,
    date: str | None = None,
) -> tuple[list[str], list[Target]]:
    out: list[str] = []
    targets: list[Target] = []
    out.append("=" * 100)
    out.append(
        f"Manifold benchmark (issue 7) — {date or time.strftime('%Y-%m-%d %H:%M %Z')}"
        + ("  [--quick: tiny counts, figures meaningless]" if s.quick else "")
    )
    out.append(f"machine: {machine_line()}")
    out.append(
        f"load average (1/5/15 min) before {'/'.join(f'{x:.2f}' for x in load_before)}, "
        f"after {'/'.join(f'{x:.2f}' for x in load_after)} on {os.cpu_count()} CPUs; run took {elapsed:.0f} s"
    )
    if BUSY:
        out.append(
            f"machine busy with other work just before each run (the bench idle; it waits up to "
            f"{s.settle_seconds:g} s for ≤{QUIET:.0%}): median {statistics.median(BUSY):.0%}, highest {max(BUSY):.0%}"
        )
        if max(BUSY) > QUIET:
            out.append(
                "NOTE: other work kept this machine busy during the run: expect noisy figures (see the ± spreads)"
            )
    out.append(
        f"every figure: median over {s.repeat} repeat(s); '±x%' = half the spread (max−min)/median of the "
        "per-repeat values (absent for a single value)"
    )
    out.append("clients: the MCP SDK's ClientSession (the same client code for direct, Manifold and FastMCP)")
    out.append("=" * 100)

    # 1. latency
    if "latency" in s.sections:
        out.append("")
        out.append(
            f"1. Per-call latency — tools/call echo, {s.calls} sequential calls each after {s.warmup} warm-up, "
            f"in blocks of {BLOCK} taking turns round the kinds (ms; ratio and added ms against direct over the "
            "same transport)"
        )
        rows = []
        for t in s.transports:
            for stat in ("p50", "p99"):
                d = r.med("lat", t, "direct", stat)
                m = r.med("lat", t, "manifold", stat)
                f = r.med("lat", t, "fastmcp", stat)
                rows.append(
                    [
                        TRANSPORT_LABEL[t] if stat == "p50" else "",
                        stat,
                        cell(r, "lat", t, "direct", stat),
                        cell(r, "lat", t, "manifold", stat),
                        ratio(m, d),
                        added(m, d),
                        cell(r, "lat", t, "fastmcp", stat) if s.peer and t in s.peer_transports else "n/a",
                        ratio(f, d),
                        added(f, d),
                    ]
                )
        out += render(
            rows,
            [
                "transport (face→upstream)",
                "stat",
                "direct",
                "manifold",
                "ratio",
                "added",
                "fastmcp",
                "ratio",
                "added",
            ],
        )
        cpu_bits = []
        for t in s.transports:
            for k in ("manifold", "fastmcp"):
                v = r.med("cpu", t, k)
                if v is not None:
                    cpu_bits.append(f"{k} {t} {v:.2f}")
        if cpu_bits:
            out.append(
                "CPU time of the gateway/proxy process per call (ms, from /proc utime+stime): "
                + ", ".join(cpu_bits)
            )
        tcp_bits = []
        for t in ("http", "sse"):
            for k in KINDS:
                v = r.med("tcp", t, k)
                if v is not None:
                    who = "client→upstream" if k == "direct" else f"{k}→upstream"
                    tcp_bits.append(f"{t} {who} {v:.1f}")
        if tcp_bits:
            out.append(
                "new TCP connections to the HTTP upstream per 100 calls (0 = keep-alive reuse): "
                + ", ".join(tcp_bits)
            )

        # 2. throughput
        out.append("")
        out.append(
            f"2. Throughput — echo calls/s over {s.tp_seconds:g} s per measurement after a warm-up burst (ratio to direct)"
        )
        rows = []
        for t in s.transports:
            for sessions in (1, s.multi_sessions):
                if sessions > 1 and t == "stdio":
                    continue
                for inflight in s.inflight:
                    d = r.med("tp", t, "direct", sessions, inflight)
                    m = r.med("tp", t, "manifold", sessions, inflight)
                    f = r.med("tp", t, "fastmcp", sessions, inflight)
                    rows.append(
                        [
                            TRANSPORT_LABEL[t],
                            str(sessions),
                            str(inflight),
                            cell(r, "tp", t, "direct", sessions, inflight, digits=0),
                            cell(r, "tp", t, "manifold", sessions, inflight, digits=0),
                            ratio(m, d),
                            cell(r, "tp", t, "fastmcp", sessions, inflight, digits=0)
                            if s.peer and t in s.peer_transports
                            else "n/a",
                            ratio(f, d),
                        ]
                    )
        out += render(
            rows, ["transport", "sessions", "in flight", "direct", "manifold", "ratio", "fastmcp", "ratio"]
        )
        if "stdio" in s.transports:
            out.append(
                f"(stdio is one session per process: the {s.multi_sessions}-session rows are HTTP/SSE only)"
            )

        for t, limit in (("stdio", 0.5), ("http", 0.8)):
            if t not in s.transports:
                continue
            d, m = r.med("lat", t, "direct", "p50"), r.med("lat", t, "manifold", "p50")
            targets.append(
                Target(
                    f"added p50 per tools/call, {TRANSPORT_LABEL[t]} ≤ {limit} ms",
                    f"{m - d:+.2f} ms" if d is not None and m is not None else "-",
                    None if d is None or m is None else m - d <= limit,
                )
            )
        for t in s.transports:
            if t == "sse":
                continue
            d, m = r.med("lat", t, "direct", "p99"), r.med("lat", t, "manifold", "p99")
            targets.append(
                Target(
                    f"added p99, {TRANSPORT_LABEL[t]} ≤ 1 ms",
                    f"{m - d:+.2f} ms" if d is not None and m is not None else "-",
                    None if d is None or m is None else m - d <= 1.0,
                )
            )
        for t in s.peer_transports if s.peer else ():
            d, m, f = (r.med("lat", t, k, "p50") for k in KINDS)
            if None in (d, m, f):
                targets.append(Target(f"added p50 ≤ ¼ of FastMCP's, {TRANSPORT_LABEL[t]}", "-", None))
                continue
            targets.append(
                Target(
                    f"added p50 ≤ ¼ of FastMCP's, {TRANSPORT_LABEL[t]}",
                    f"{m - d:+.2f} vs ¼×{f - d:.2f} = {(f - d) / 4:.2f} ms",
                    (m - d) <= (f - d) / 4,
                )
            )
        for t in s.transports:
            for sessions in (1, s.multi_sessions):
                if sessions > 1 and t == "stdio":
                    continue
                d, m = r.med("tp", t, "direct", sessions, 16), r.med("tp", t, "manifold", sessions, 16)
                if 16 in s.inflight:
                    targets.append(
                        Target(
                            f"throughput, 16 in flight, {sessions} session(s), {t} ≥ 0.9x direct",
                            ratio(m, d),
                            None if d is None or m is None else m / d >= 0.9,
                        )
                    )
        for t in ("http", "sse"):
            v = r.med("tcp", t, "manifold")
            if t in s.transports:
                targets.append(
                    Target(
                        f"upstream HTTP connections reused ({t}): new connections per 100 calls ≈ 0",
                        fmt(v, 1),
                        None if v is None else v < 1.0,
                    )
                )

    # 3. catalogue
    if "catalog" in s.sections:
        out.append("")
        out.append(
            f"3. Catalogue — tools/list through Manifold's HTTP face over stdio upstreams vs one streamable-HTTP "
            f"server listing as many tools (ms, the whole list incl. the client's parsing; cold = the first "
            f"list the process serves once every upstream is ready, warm = median of {s.catalog_warm} after {s.catalog_warm} more unmeasured)"
        )
        rows = []
        for servers, per_server in s.catalogs:
            total = servers * per_server
            key = f"{servers}x{per_server}"
            dw, mw = r.med("cat", "direct", total, "warm"), r.med("cat", "manifold", key, "warm")
            dc, mc = r.med("cat", "direct", total, "cold"), r.med("cat", "manifold", key, "cold")
            rows.append(
                [
                    f"direct, 1 server × {total:,} tools",
                    cell(r, "cat", "direct", total, "cold", digits=1),
                    cell(r, "cat", "direct", total, "warm", digits=1),
                    "",
                    "",
                    "",
                    cell(r, "cat", "direct", total, "cpu", digits=1),
                ]
            )
            rows.append(
                [
                    f"manifold, {servers} × {per_server} = {total:,} tools",
                    cell(r, "cat", "manifold", key, "cold", digits=1),
                    cell(r, "cat", "manifold", key, "warm", digits=1),
                    ratio(mc, dc),
                    ratio(mw, dw),
                    added(mw, dw),
                    cell(r, "cat", "manifold", key, "cpu", digits=1),
                ]
            )
        out += render(
            rows,
            [
                "catalogue",
                "cold",
                "warm",
                "cold vs direct",
                "warm vs direct",
                "gateway share (warm)",
                "server CPU/list",
            ],
        )
        out.append(
            "server CPU/list: CPU ms the serving process (the one upstream, or the gateway) spends per warm "
            "list, from /proc; the client's parsing is not in it"
        )
        up_bits = [
            f"{a}×{b}: {fmt(r.med('cat', 'manifold', f'{a}x{b}', 'upcpu'), 2)} ms" for a, b in s.catalogs
        ]
        out.append(
            "CPU of all upstream processes per warm list through Manifold (0 = served from the catalogue, no "
            "upstream round trip): " + ", ".join(up_bits)
        )
        for a, b in s.catalogs:
            v = r.med("cat", "manifold", f"{a}x{b}", "upcpu")
            direct_cpu = r.med("cat", "direct", a * b, "cpu")
            # A round trip would cost the upstreams about what one server spends listing as many tools;
            # idle upstreams (and their reapers) still tick a little, so the bar is 5% of that.
            bar = max(1.0, 0.05 * direct_cpu) if direct_cpu else 1.0
            targets.append(
                Target(
                    f"warm list {a}×{b} from the catalogue: upstream CPU/list < {bar:.1f} ms (5% of a listing)",
                    f"{fmt(v, 2)} ms",
                    None if v is None else v < bar,
                )
            )
        ready_bits = [
            f"{a}×{b}: {fmt(r.med('cat', 'manifold', f'{a}x{b}', 'ready'), 1)} s" for a, b in s.catalogs
        ]
        out.append("launch → every upstream ready (/healthz) in these runs: " + ", ".join(ready_bits))
        small = [(a, b) for a, b in s.catalogs if a * b <= 1000] or list(s.catalogs[:1])
        for a, b in s.catalogs:
            total = a * b
            dw, mw = r.med("cat", "direct", total, "warm"), r.med("cat", "manifold", f"{a}x{b}", "warm")
            targets.append(
                Target(
                    f"tools/list {a}×{b} (warm) ≤ 1.1x a direct list of {total:,} from one server",
                    ratio(mw, dw),
                    None if dw is None or mw is None else mw / dw <= 1.1,
                )
            )
            if total <= 1000:
                targets.append(
                    Target(
                        f"gateway's own share of the {a}×{b} list ≤ 2 ms",
                        f"{added(mw, dw)} ms",
                        None if dw is None or mw is None else mw - dw <= 2.0,
                    )
                )
        big = [(a, b) for a, b in s.catalogs if a * b > 1000]
        if small and big:
            a, b = small[0]
            c, d = big[-1]
            small_w, big_w = (
                r.med("cat", "manifold", f"{a}x{b}", "cpu"),
                r.med("cat", "manifold", f"{c}x{d}", "cpu"),
            )
            factor = (c * d) / (a * b)
            if small_w and big_w:
                scale = big_w / small_w
                targets.append(
                    Target(
                        f"{c * d:,} tools scale linearly (gateway CPU per warm list, {c}×{d} / {a}×{b} "
                        f"≤ {factor * 1.1:.0f}; {factor:.0f} = linear)",
                        f"{scale:.1f}",
                        scale <= factor * 1.1,
                    )
                )
            else:
                targets.append(Target(f"{c * d:,} tools scale linearly", "-", None))

    # 4. start-up
    if "startup" in s.sections:
        out.append("")
        out.append(
            "4. Start-up — launch of `manifold serve` (stdio face, stdio upstreams) to initialize answered / first "
            "tools/list / every upstream's tools listed, vs the client starting the same upstreams in parallel "
            "itself (s)"
        )
        rows = []
        for count in s.startup:
            full, par = r.med("start", "manifold", count, "full"), r.med("start", "parallel", count, "full")
            rows.append(
                [
                    f"manifold, {count} upstream(s)",
                    cell(r, "start", "manifold", count, "init"),
                    cell(r, "start", "manifold", count, "first"),
                    cell(r, "start", "manifold", count, "full"),
                    cell(r, "start", "parallel", count, "full"),
                    ratio(full, par),
                ]
            )
        if s.peer and s.peer_startup and s.startup:
            count = max(s.startup)
            full, par = r.med("start", "fastmcp", count, "full"), r.med("start", "parallel", count, "full")
            rows.append(
                [
                    f"fastmcp, {count} upstream(s)",
                    cell(r, "start", "fastmcp", count, "init"),
                    "-",
                    cell(r, "start", "fastmcp", count, "full"),
                    cell(r, "start", "parallel", count, "full"),
                    ratio(full, par),
                ]
            )
        out += render(rows, ["gateway", "initialize", "first list", "all listed", "parallel alone", "ratio"])
        for count in s.startup:
            init = r.med("start", "manifold", count, "init")
            targets.append(
                Target(
                    f"initialize answered ≤ 0.5 s after launch, {count} upstream(s)",
                    f"{fmt(init)} s",
                    None if init is None else init <= 0.5,
                )
            )
        for count in s.startup:
            full, par = r.med("start", "manifold", count, "full"), r.med("start", "parallel", count, "full")
            targets.append(
                Target(
                    f"all {count} upstream(s) ready ≤ 1.1x started in parallel alone",
                    ratio(full, par),
                    None if full is None or par is None else full / par <= 1.1,
                )
            )

    # 5. memory
    out.append("")
    out.append("5. Peak RSS — VmHWM of the gateway (or proxy) process alone, children not included (MB)")
    rows = []
    for kind, transport, count, text in [
        ("manifold", "stdio", 1, "manifold, stdio face, 1 stdio upstream (after the latency runs)"),
        ("manifold", "http", 1, "manifold, HTTP face, 1 HTTP upstream (after the latency runs)"),
        ("manifold", "sse", 1, "manifold, HTTP face, 1 SSE upstream (after the latency runs)"),
        *[
            ("manifold", "stdio-startup", c, f"manifold, stdio face, {c} stdio upstream(s) (start-up run)")
            for c in s.startup
        ],
        *[
            ("manifold", "http", a, f"manifold, HTTP face, {a} stdio upstreams × {b} tools (catalogue run)")
            for a, b in s.catalogs
        ],
        ("fastmcp", "stdio", 1, "fastmcp proxy, stdio, 1 upstream"),
        ("fastmcp", "http", 1, "fastmcp proxy, HTTP, 1 upstream"),
        *[
            ("fastmcp", "stdio", c, f"fastmcp proxy, stdio, {c} upstreams (start-up run)")
            for c in s.startup
            if c > 1
        ],
    ]:
        if r.n("rss", kind, transport, count):
            rows.append([text, cell(r, "rss", kind, transport, count, digits=1)])
    out += render(rows, ["process", "peak RSS"]) if rows else ["(nothing measured)"]
    one = r.med("rss", "manifold", "stdio", 1)
    targets.append(
        Target(
            "peak RSS ≤ 60 MB with 1 upstream (stdio face)",
            f"{fmt(one, 1)} MB",
            None if one is None else one <= 60,
        )
    )
    twenty_key = max([c for c in s.startup], default=0)
    twenty = r.med("rss", "manifold", "stdio-startup", twenty_key) if twenty_key > 1 else None
    targets.append(
        Target(
            f"peak RSS ≤ 100 MB with {twenty_key if twenty_key > 1 else 20} upstreams",
            f"{fmt(twenty, 1)} MB",
            None if twenty is None else twenty <= 100,
        )
    )

    # 6. targets
    out.append("")
    out.append("6. Targets (issue 7)")
    rows = [[t.text, t.measured, "-" if t.ok is None else ("PASS" if t.ok else "MISS")] for t in targets]
    out += render(rows, ["target", "measured", "status"])
    passed = sum(1 for t in targets if t.ok)
    missed = sum(1 for t in targets if t.ok is False)
    out.append(f"{passed} PASS, {missed} MISS, {sum(1 for t in targets if t.ok is None)} not measured")
    if r.errors or r.warnings:
        out.append("")
        for line in r.errors:
            out.append(f"ERROR   {line}")
        for line in r.warnings:
            out.append(f"WARNING {line}")
    return out, targets


# --- main ----------------------------------------------------------------------------------------------------


def stop_orphans(r: Results) -> None:
    """Anything still carrying this run's tag is an orphan: report it, then stop it (by pid)."""
    deadline = time.monotonic() + 5
    pids = tagged_pids()
    while pids and time.monotonic() < deadline:  # processes just told to stop may still be exiting
        time.sleep(0.2)
        pids = tagged_pids()
    if not pids:
        return
    r.errors.append(f"{len(pids)} process(es) outlived the run that started them (orphans): pids {pids}")
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # unwinds every context manager: what was started gets stopped


def rerender(path: str) -> int:
    """The table of an earlier run, from its --json file (e.g. after a change to the report)."""
    data = json.loads(Path(path).read_text())
    settings = Settings()
    for name, value in data.get("settings", {}).items():
        if hasattr(settings, name):
            current = getattr(settings, name)
            if isinstance(current, tuple):
                value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
            setattr(settings, name, value)
    r = Results()
    for key, values in data["samples"].items():
        parts = tuple(int(p) if p.isdigit() else p for p in key.split("/"))
        r.samples[parts] = values
    r.errors, r.warnings = data.get("errors", []), data.get("warnings", [])
    BUSY[:] = data.get("busy", [])
    load = data.get("load", [[0, 0, 0], [0, 0, 0]])
    lines, _ = report(settings, r, tuple(load[0]), tuple(load[1]), data.get("elapsed", 0.0), data.get("date"))
    lines.insert(1, f"(re-rendered from {path})")
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    s, ns = parse_args(argv)
    if ns.from_json:
        return rerender(ns.from_json)
    signal.signal(signal.SIGTERM, _terminate)
    r = Results()
    ws = Workspace()
    load_before = os.getloadavg()
    started = time.monotonic()
    log(
        f"workspace {ws.dir}; repeat {s.repeat}; sections {','.join(s.sections)}; peer {'on' if s.peer else 'off'}"
    )
    try:
        anyio.run(run_all, s, ws, r)
    except KeyboardInterrupt:
        r.errors.append("interrupted")
    finally:
        stop_orphans(r)
        ws.cleanup()
    load_after, elapsed = os.getloadavg(), time.monotonic() - started
    lines, targets = report(s, r, load_before, load_after, elapsed)
    print("\n".join(lines), flush=True)
    if ns.json_path:
        data = r.to_json()
        data["settings"] = {k: v for k, v in vars(s).items()}
        data["targets"] = [vars(t) for t in targets]
        data["machine"] = machine_line()
        data["load"] = [list(load_before), list(load_after)]
        data["busy"] = BUSY
        data["elapsed"] = elapsed
        data["date"] = time.strftime("%Y-%m-%d %H:%M %Z")
        Path(ns.json_path).write_text(json.dumps(data, indent=1, default=str))
    return 1 if r.errors else 0


if __name__ == "__main__":
    sys.exit(main())
