"""Where a tools/call spends its time inside Manifold: py-spy on the gateway, summed by phase.

    .venv/bin/python bench/profile_call.py [--transport stdio|http|sse] [--seconds 20] [--rate 250] [--src DIR]
        [--raw FILE] [--svg FILE]
    .venv/bin/python bench/profile_call.py --from-raw FILE   # summarise an earlier recording again

Starts `manifold serve` with one upstream (the fixture): stdio face over a stdio upstream, or with
`--transport http|sse` the HTTP face (/mcp or /sse) over an upstream of that transport. Drives
sequential echo calls through it, measures the gateway's CPU time per call from /proc (unprofiled), then records the
gateway with `py-spy record --gil` (only samples that hold the GIL: Python CPU time, idle waits
excluded) while the calls continue. Each sample is attributed to a phase of the forwarding path by
the asyncio task it ran in (its outermost coroutine) and, inside the request-handler task, by the
deepest well-known frame on the stack; cross-cutting costs (pydantic, json, logging, OpenTelemetry,
thread hops) are counted inclusively. Shares times CPU per call give ms per call.

`--src DIR` runs another checkout's `src/` (e.g. `git archive HEAD src | tar -x -C /tmp/head`) to
compare before and after. py-spy must be installed (`.venv/bin/pip install py-spy`) and allowed to
ptrace the gateway (root, or kernel.yama.ptrace_scope=0).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import anyio
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters

from bench import (
    ROOT,
    Endpoint,
    Settings,
    Workspace,
    call_echo,
    cpu_seconds,
    list_all_tools,
    open_session,
    scenario,
    stdio_server_entry,
    write_config,
)

# --- phases -------------------------------------------------------------------------------------------

# Task roots (outermost coroutine of an asyncio task) -> phase. Matched on "function (file" prefixes.
TASK_PHASES: list[tuple[str, str]] = [
    (
        "stdio_server.<locals>.stdin_reader (mcp/server/stdio.py",
        "face: read stdin line + parse JSON-RPC (SDK stdio_server)",
    ),
    (
        "stdio_server.<locals>.stdout_writer (mcp/server/stdio.py",
        "face: serialise response + write stdout (SDK stdio_server)",
    ),
    (
        "_replay_from_opening_request.<locals>.replay_then_relay",
        "face: SDK runner relay task (one more stream hop)",
    ),
    (
        "StdioFace.read (manifold/faces/stdio.py",
        "face: read stdin line, lean tools/call to the upstream or parse for the SDK (faces/stdio.py)",
    ),
    ("StdioFace.write (manifold/faces/stdio.py", "face: serialise SDK response + write stdout (faces/stdio.py)"),
    ("FrameWriter.run (manifold/faces/stdio.py", "face: flush stdout (faces/stdio.py)"),
    ("StdioFace.sweep (manifold/faces/stdio.py", "face: lean-call deadline sweep (faces/stdio.py)"),
    (
        "_StdioPipes.read_stdout (manifold/upstream/stdio.py",
        "upstream: read stdout line; lean reply id swap + write stdout, or parse JSON-RPC",
    ),
    ("_StdioPipes.write_stdin (manifold/upstream/stdio.py", "upstream: serialise request + write stdin"),
    (
        "stdio_client.<locals>.stdout_reader (mcp/client/stdio.py",
        "upstream: read stdout line + parse JSON-RPC",
    ),
    ("stdio_client.<locals>.stdin_writer (mcp/client/stdio.py", "upstream: serialise request + write stdin"),
    # HTTP face (uvicorn + starlette + the SDK's streamable HTTP / SSE server transports)
    (
        "RequestResponseCycle.run_asgi (uvicorn/",
        "face: uvicorn request -> ASGI app (routing, session manager, POST handling)",
    ),
    ("H11Protocol.", "face: uvicorn request -> ASGI app (routing, session manager, POST handling)"),
    ("EventSourceResponse.", "face: SSE response stream (sse-starlette)"),
    ("StreamableHTTPServerTransport.", "face: SDK streamable HTTP server transport tasks"),
    ("StreamableHTTPSessionManager.", "face: SDK streamable HTTP server transport tasks"),
    ("SseServerTransport.", "face: SDK SSE server transport tasks"),
    # HTTP upstream (the SDK's streamable HTTP / SSE client over httpx2)
    ("StreamableHTTPTransport.", "upstream: SDK streamable HTTP client (POST, SSE reply parsing, httpx2)"),
    ("Response.aiter_", "upstream: SDK streamable HTTP client (POST, SSE reply parsing, httpx2)"),
    ("PoolByteStream.", "upstream: SDK streamable HTTP client (POST, SSE reply parsing, httpx2)"),
    ("EventSource.", "upstream: SDK streamable HTTP client (POST, SSE reply parsing, httpx2)"),
    ("sse_client.<locals>.", "upstream: SDK SSE client (POST, event stream, httpx2)"),
]

# Inside a JSON-RPC handler task: the deepest matching frame wins (checked leaf -> root).
HANDLER_MARKERS: list[tuple[str, str]] = [
    (
        "JSONRPCDispatcher.send_raw_request (mcp/shared/jsonrpc_dispatcher.py",
        "handler: client dispatcher send_raw_request (upstream hop)",
    ),
    ("ClientSession.", "handler: client session (typed)"),
    ("(manifold/upstream/", "handler: our upstream.request"),
    ("(manifold/gateway.py", "handler: our gateway.call_tool / routing"),
    ("(manifold/catalog.py", "handler: our gateway.call_tool / routing"),
    ("validate_client_request", "SDK server: surface validation of params (validate_client_request)"),
    ("ServerRunner._serialize", "SDK server: result validation + serialisation (_serialize)"),
    ("_dump_result (mcp/server/runner.py", "SDK server: result validation + serialisation (_serialize)"),
    ("ServerRunner._make_context", "SDK server: per-request context/session objects"),
    ("_extract_meta (mcp/server/runner.py", "SDK server: per-request context/session objects"),
    ("(mcp/server/_otel.py", "SDK server: OpenTelemetry middleware"),
    ("(manifold/faces/", "handler: our face handler (faces/mcp.py)"),
    (
        "ServerRunner._on_request.<locals>._inner (mcp/server/runner.py",
        "SDK server: params model_validate + handler lookup",
    ),
    ("ServerRunner._on_request (mcp/server/runner.py", "SDK server: request pipeline (middleware chain)"),
    ("_apply_middleware (mcp/server/runner.py", "SDK server: request pipeline (middleware chain)"),
]
HANDLER_ROOT = "JSONRPCDispatcher._spawn.<locals>.run (mcp/shared/jsonrpc_dispatcher.py"
DISPATCH_LOOP = "JSONRPCDispatcher.run (mcp/shared/jsonrpc_dispatcher.py"

PLUMBING = (
    "(asyncio/",
    "(anyio/",
    "(contextlib.py",
    "(typing.py",
    "(threading.py",
    "(sniffio/",
    "(selectors.py",
    "(functools.py",
    "(queue.py",
    "(mcp/shared/_context_streams.py",
    "(<frozen",
    "(<string>",
    # the process's entry frames: below them is only the event loop
    "(click/",
    "(manifold/__main__.py",
    "serve (manifold/cli.py",
    "_serve_stdio (manifold/cli.py",
)
"""Generic machinery: its self time is charged to the first non-plumbing caller in the owner view."""

OWNERS: list[tuple[str, tuple[str, ...]]] = [
    ("pydantic (validate/serialise)", ("(pydantic/", "(pydantic_core/")),
    (
        "OpenTelemetry (spans, context propagation)",
        (
            "(mcp/server/_otel.py",
            "(mcp/shared/_otel.py",
            "(trace/",
            "(opentelemetry/",
            "(context/",
            "(propagate/",
        ),
    ),
    ("logging (structlog/stdlib)", ("(structlog/", "(logging/")),
    ("json module", ("(json/",)),
    ("Manifold code", ("(manifold/",)),
    ("MCP SDK code (dispatcher, runner, transports)", ("(mcp/", "(mcp_types/")),
]

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("asyncio event loop + tasks", ("(asyncio/", "(selectors.py")),
    ("anyio (cancel scopes, streams, to_thread)", ("(anyio/", "(sniffio/")),
    ("threading (worker-thread hand-off)", ("(threading.py", "(queue.py")),
    *OWNERS,
]

THREAD_HOPS = (
    "run_sync_in_worker_thread",
    "WorkerThread.",
    "(anyio/_core/_fileio.py",
    "call_soon_threadsafe",
    "_read_from_self",
    "_write_to_self",
    "Condition.notify",
)


def bucket(frame: str, table: list[tuple[str, tuple[str, ...]]]) -> str | None:
    for name, needles in table:
        if any(needle in frame for needle in needles):
            return name
    return None


def parse_raw(path: Path) -> list[tuple[list[str], int]]:
    samples = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        frames = [
            f for f in stack.split(";") if not f.startswith("thread (") and not f.startswith("process ")
        ]
        samples.append((frames, int(count)))
    return samples


def task_frames(frames: list[str]) -> list[str] | None:
    """The frames of the asyncio task a sample ran in (outermost coroutine first); None: the loop itself."""
    last = None
    for i, frame in enumerate(frames):
        if frame.startswith("Handle._run (asyncio/events.py"):
            last = i
    if last is None:
        return None
    return [f for f in frames[last + 1 :] if not f.startswith("TaskHandle._run_coro")]


def phase_of(frames: list[str]) -> str:
    task = task_frames(frames)
    if task is None:
        return "event loop: select/poll + callback scheduling"
    if not task:
        return "event loop: callbacks (I/O readiness, futures, wakeups)"
    root = task[0]
    for prefix, phase in TASK_PHASES:
        if root.startswith(prefix):
            return phase
    if root.startswith(HANDLER_ROOT):
        for frame in reversed(task):
            for marker, phase in HANDLER_MARKERS:
                if marker in frame:
                    return phase
        return "SDK dispatcher: request task + response plumbing"
    if root.startswith(DISPATCH_LOOP):
        if any("(manifold/upstream/" in f for f in task):
            return "upstream: client dispatcher read loop (match response to request)"
        return "face: server dispatcher read loop (spawn handler task)"
    if "(asyncio/" in root or "(anyio/" in root:
        return "event loop: callbacks (I/O readiness, futures, wakeups)"
    return f"other task: {root.split(' (')[0]}"


def summarise(samples: list[tuple[list[str], int]], cpu_ms_per_call: float | None) -> list[str]:
    total = sum(n for _, n in samples)
    if not total:
        return ["no samples (is the gateway busy? can py-spy attach?)"]
    phases: Counter[str] = Counter()
    owners: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    owner_frames: Counter[tuple[str, str]] = Counter()
    hops = 0
    for frames, n in samples:
        phases[phase_of(frames)] += n
        leaf = frames[-1] if frames else "?"
        leaves[leaf] += n
        layers[bucket(leaf, LAYERS) or "other (stdlib, C calls seen from their caller)"] += n
        owner = "event loop itself (no Python caller)"
        for frame in reversed(frames):
            if any(p in frame for p in PLUMBING):
                continue
            owner = bucket(frame, OWNERS) or f"other: {frame.split(' (')[-1].split(':')[0].split('/')[0]}"
            break
        owners[owner] += n
        if owner in ("Manifold code", "MCP SDK code (dispatcher, runner, transports)"):
            owner_frames[(owner, frame.split(":")[0] + ")")] += n
        if any(any(h in f for h in THREAD_HOPS) for f in frames):
            hops += n

    def ms(count: int) -> str:
        if cpu_ms_per_call is None:
            return ""
        return f"{count / total * cpu_ms_per_call:7.3f} ms"

    out = [
        f"{total} GIL-holding samples"
        + (f"; gateway CPU per call (unprofiled) {cpu_ms_per_call:.3f} ms" if cpu_ms_per_call else "")
    ]
    sections = [
        ("By phase of the forwarding path (each sample once, by the asyncio task it ran in)", phases),
        (
            "By owner (each sample once: the first non-plumbing frame from the leaf; asyncio/anyio time charged to its caller)",
            owners,
        ),
        ("By layer of the leaf frame (self time)", layers),
    ]
    for title, counter in sections:
        out.append("")
        out.append(title)
        for name, n in counter.most_common():
            out.append(f"  {n / total * 100:5.1f}%  {ms(n)}  {name}")
    out.append("")
    out.append(
        "Owner frames inside the SDK and Manifold (function that owns the time, asyncio/anyio below it included)"
    )
    for (owner, frame), n in owner_frames.most_common(16):
        out.append(
            f"  {n / total * 100:5.1f}%  {ms(n)}  {'SDK' if owner.startswith('MCP') else 'ours'}: {frame}"
        )
    out.append("")
    out.append(
        f"  {hops / total * 100:5.1f}%  {ms(hops)}  of all samples sit in a thread hop (to_thread / wrap_file / threadsafe wake-up)"
    )
    out.append("")
    out.append("Top self-time frames")
    for frame, n in leaves.most_common(15):
        out.append(f"  {n / total * 100:5.1f}%  {ms(n)}  {frame}")
    return out


# --- driving the gateway --------------------------------------------------------------------------------


def find_py_spy() -> str | None:
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


async def drive(args: argparse.Namespace, ws: Workspace) -> float | None:
    if args.transport == "stdio":
        cfg = write_config(ws, {"fx": stdio_server_entry("prof", connect_timeout=60)})
        env = ws.gateway_env()
        if args.src:
            env["PYTHONPATH"] = str(Path(args.src).resolve())
        params = StdioServerParameters(
            command=sys.executable, args=["-m", "manifold", "serve", "--config", str(cfg)], env=env
        )
        ep = Endpoint(
            "profile",
            "stdio",
            "fx__echo",
            stdio=params,
            errlog=ws.path("gateway", ".log"),
            pid_marker=str(cfg),
        )
        return await drive_endpoint(args, ep)
    if args.src:
        raise SystemExit("--src works with --transport stdio only")
    # HTTP face (/mcp or /sse) over an upstream of the same transport, as in the benchmark.
    async with scenario(ws, Settings(connect_timeout=60), args.transport, "manifold") as ep:
        return await drive_endpoint(args, ep)


def spy_cmd(
    spy: str, pid: int, args: argparse.Namespace, output: list[str], seconds: int | None = None
) -> list[str]:
    duration = str(seconds if seconds is not None else args.seconds)
    return [
        spy,
        "record",
        "--pid",
        str(pid),
        "--rate",
        str(args.rate),
        "--duration",
        duration,
        "--gil",
        *output,
    ]


async def calls_while(cmd: list[str], session: ClientSession, tool: str) -> int:
    """Run `cmd` (py-spy) and keep calling `tool` until it exits; the number of calls made."""
    calls = 0
    async with await anyio.open_process(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as proc:
        try:
            while proc.returncode is None:
                await call_echo(session, tool)
                calls += 1
        finally:
            if proc.returncode is None:
                proc.terminate()
            await proc.wait()
        try:
            err = (await proc.stderr.receive(65536)).decode(errors="replace") if proc.stderr else ""
        except anyio.EndOfStream:  # py-spy said nothing on stderr
            err = ""
    if proc.returncode != 0:
        raise RuntimeError(f"py-spy failed ({proc.returncode}): {err[-2000:]}")
    return calls


async def drive_endpoint(args: argparse.Namespace, ep: Endpoint) -> float | None:
    async with open_session(ep) as session:
        await list_all_tools(session)
        for _ in range(300):
            await call_echo(session, ep.tool)
        pid = ep.pid
        if pid is None:
            raise RuntimeError("could not find the gateway's pid")
        # Unprofiled: CPU per call.
        cpu0, n, t0 = cpu_seconds(pid), 0, time.perf_counter()
        while time.perf_counter() - t0 < args.measure:
            await call_echo(session, ep.tool)
            n += 1
        wall = (time.perf_counter() - t0) / n * 1000
        cpu1 = cpu_seconds(pid)
        cpu_ms = (cpu1 - cpu0) / n * 1000 if cpu0 is not None and cpu1 is not None else None
        print(
            f"unprofiled: {n} calls, {wall:.3f} ms per call (client's view), gateway CPU {cpu_ms:.3f} ms per call",
            file=sys.stderr,
        )

        spy = find_py_spy()
        if spy is None:
            raise SystemExit("py-spy not found: .venv/bin/pip install py-spy")
        calls = await calls_while(
            spy_cmd(spy, pid, args, ["--format", "raw", "-o", str(args.raw)]), session, ep.tool
        )
        print(f"profiled: {calls} calls while recording", file=sys.stderr)
        if args.svg:
            await calls_while(spy_cmd(spy, pid, args, ["-o", str(args.svg)], seconds=10), session, ep.tool)
            print(f"flame graph: {args.svg}", file=sys.stderr)
        return cpu_ms


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, default=20, help="py-spy recording length")
    p.add_argument("--measure", type=float, default=5.0, help="unprofiled seconds for CPU per call")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--src", default=None, help="run the gateway from this src/ directory instead")
    p.add_argument(
        "--transport",
        choices=["stdio", "http", "sse"],
        default="stdio",
        help="the gateway's face and its upstream's transport (default stdio)",
    )
    p.add_argument("--raw", default=None, help="keep the collapsed stacks here (default: a temp file)")
    p.add_argument("--svg", default=None, help="also record a 10 s flame graph (SVG) here")
    p.add_argument("--from-raw", default=None, help="only summarise this earlier recording")
    p.add_argument("--cpu-ms", type=float, default=None, help="with --from-raw: the CPU per call to scale by")
    args = p.parse_args()
    if args.from_raw:
        print("\n".join(summarise(parse_raw(Path(args.from_raw)), args.cpu_ms)))
        return 0
    ws = Workspace()
    try:
        args.raw = Path(args.raw) if args.raw else ws.path("profile", ".raw")
        cpu_ms = anyio.run(drive, args, ws)
        print(f"gateway: {'src ' + args.src if args.src else 'this checkout (' + str(ROOT / 'src') + ')'}")
        print("\n".join(summarise(parse_raw(Path(args.raw)), cpu_ms)))
    finally:
        ws.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
