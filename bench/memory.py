"""Where the gateway's resident memory goes: what each layer it imports adds, and what would shrink it.

    .venv/bin/python bench/memory.py

Issue 7 asks for a peak RSS of 60 MB with one upstream; the gateway's is ~95 MB. This prints the
resident size of a fresh interpreter after importing each layer of what `manifold serve` (stdio
face) loads, cumulatively, then the same with two changes Manifold does not make, measured to show
what they would save:

- the MCP SDK's package `__init__` modules skipped (`mcp`, `mcp.client`, `mcp.server` replaced
  by empty packages before anything is imported): importing any SDK module runs `mcp/__init__.py`,
  which imports the whole client and the high-level server (Starlette, uvicorn through
  sse-starlette, cryptography, OpenTelemetry, httpx) whatever the caller needs;
- structlog without rich (structlog imports rich, when it is installed, for its tracebacks).

Last, the peak (VmHWM) of a real `manifold serve` with one stdio upstream after 200 calls. Each
figure comes from its own interpreter; nothing here is timed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

LAYERS: list[tuple[str, list[str]]] = [
    ("the interpreter", []),
    ("asyncio, ssl, anyio", ["ssl", "asyncio", "anyio"]),
    ("pydantic", ["pydantic"]),
    ("structlog (imports rich)", ["structlog"]),
    ("the SDK's protocol types (mcp_types, 2 versions)", ["mcp_types", "mcp_types.methods"]),
    ("the SDK's client session (runs mcp/__init__)", ["mcp.client.session", "mcp.client.stdio"]),
    ("the SDK's low-level server and streamable HTTP", ["mcp.server.lowlevel", "mcp.server.streamable_http"]),
    ("SQLAlchemy's async core, aiosqlite", ["sqlalchemy.ext.asyncio", "aiosqlite"]),
    (
        "Manifold's stdio serve path",
        ["manifold.gateway", "manifold.registry", "manifold.store", "manifold.faces.mcp", "manifold.faces.stdio"],
    ),
]

_PROBE = r"""
import importlib, importlib.util, json, sys, types

def skip_init(name):
    spec = importlib.util.find_spec(name)
    module = types.ModuleType(name)
    module.__path__ = list(spec.submodule_search_locations)
    module.__spec__, module.__file__, module.__package__ = spec, spec.origin, name
    sys.modules[name] = module
    if "." in name:
        parent, _, child = name.rpartition(".")
        setattr(sys.modules[parent], child, module)

what_if, modules = json.loads(sys.argv[1])
if "sdk" in what_if:
    for name in ("mcp", "mcp.client", "mcp.server"):
        skip_init(name)
if "rich" in what_if:
    sys.modules["rich"] = None
for name in modules:
    importlib.import_module(name)
with open("/proc/self/status") as f:
    rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
print(rss / 1024)
"""


def resident_mb(modules: list[str], what_if: tuple[str, ...] = ()) -> float:
    out = subprocess.run(
        [PYTHON, "-c", _PROBE, json.dumps([list(what_if), modules])],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return float(out.stdout.strip())


def gateway_peak_mb() -> float:
    """VmHWM of `manifold serve` (stdio face) with one stdio upstream, after 200 echo calls."""
    script = r"""
import os, sys, anyio
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

async def main():
    params = StdioServerParameters(command=sys.argv[1], args=sys.argv[2:], env=dict(os.environ))
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        while not (await session.list_tools()).tools:
            await anyio.sleep(0.1)
        for _ in range(200):
            await session.call_tool("demo__echo", {"text": "hello"})
        for pid in os.listdir("/proc"):
            if pid.isdigit() and int(pid) != os.getpid():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if b"manifold\x00serve\x00--config\x00" + sys.argv[-3].encode() not in f.read():
                            continue
                    with open(f"/proc/{pid}/status") as f:
                        print(next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024)
                except (OSError, StopIteration):
                    pass

anyio.run(main)
"""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "one.json"
        config.write_text(
            json.dumps({"mcp_servers": {"demo": {"mcp_server_type": "stdio", "command": PYTHON, "args": ["-m", "manifold.demo"]}}})
        )
        db = f"sqlite+aiosqlite:///{tmp}/store.db"
        gateway = [PYTHON, "-m", "manifold", "serve", "--config", str(config), "--db", db]
        out = subprocess.run(
            [PYTHON, "-c", script, *gateway],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
            timeout=120,
        )
    return float(out.stdout.split()[0])


def main() -> int:
    print(f"{'layer (cumulative)':64s} {'resident':>9s} {'added':>7s}")
    loaded: list[str] = []
    previous = 0.0
    for label, modules in LAYERS:
        loaded += modules
        now = resident_mb(loaded)
        print(f"{label:64s} {now:7.1f} MB {now - previous:+6.1f}")
        previous = now
    print()
    print("what would shrink it (the last layer again, with ...)")
    for what_if, label in (
        (("sdk",), "the SDK's package __init__ modules skipped"),
        (("rich",), "structlog without rich"),
        (("sdk", "rich"), "both"),
    ):
        now = resident_mb(loaded, what_if)
        print(f"  {label:62s} {now:7.1f} MB {now - previous:+6.1f}")
    print()
    print(f"{'manifold serve, 1 stdio upstream, peak (VmHWM) after 200 calls':64s} {gateway_peak_mb():7.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
