"""A misbehaving MCP server over stdio, for Manifold's supervision and isolation tests.

    python tests/upstreams/chaos_server.py [--name NAME] [--crash-on-start] [--hang-on-start]
        [--banner N] [--stderr TEXT ...] [--nulls]

Hand-written JSON-RPC on the standard library only, so it starts in a few
milliseconds (the SDK import takes one to two seconds) and can break the
protocol on purpose. Each request is answered on its own thread, so one call
that hangs never holds up another.

Tools (NAME is `--name`, default "chaos"):
- `echo(text)`: the text unchanged; `whoami()`: NAME; `pid()`: this process's pid;
- `slow(seconds)`: sleeps, then answers "NAME slept <seconds>";
- `hang()`: never answers;
- `garbage()`: writes lines that are not JSON-RPC to stdout (text, JSON that is not a
  message, a response to an id nobody asked), then answers "survived";
- `bad_response()`: answers its own id with a response that is not valid JSON-RPC;
- `big(mib)`: answers with a text of `mib` MiB (an oversized message);
- `add_tool(tool_name)`: adds a tool answering "NAME:tool_name" and sends tools/list_changed;
- `stderr(text)`: writes the text to stderr and answers "ok";
- `exit(code)`: exits at once with that status, without answering.

Every `notifications/cancelled` is written to stderr as `cancelled request <id>: <reason>`.
`--crash-on-start`: writes the `--stderr` lines (or one default line), exits with status 3.
`--hang-on-start`: reads requests but never answers `initialize`.
`--banner N`: writes N lines of log text to stdout before serving (as careless servers do).
`--stderr TEXT`: a line written to stderr at start (repeatable).
`--nulls`: its tool definitions carry null fields (`title`, `outputSchema`, an annotation's
`title`) that an SDK's server would leave out; the protocol's shape of a list has none.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

CRASH_EXIT_CODE = 3

_write_lock = threading.Lock()
_out = sys.stdout.buffer


def send(message: dict[str, Any]) -> None:
    write_raw(json.dumps(message).encode())


def write_raw(data: bytes) -> None:
    with _write_lock:
        _out.write(data + b"\n")
        _out.flush()


def log(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _schema(**props: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {key: {"type": kind} for key, kind in props.items()},
        "required": list(props),
    }


TOOLS: dict[str, dict[str, Any]] = {
    "echo": _schema(text="string"),
    "whoami": _schema(),
    "pid": _schema(),
    "slow": _schema(seconds="number"),
    "hang": _schema(),
    "garbage": _schema(),
    "bad_response": _schema(),
    "big": _schema(mib="number"),
    "add_tool": _schema(tool_name="string"),
    "stderr": _schema(text="string"),
    "error": _schema(message="string"),
    "exit": _schema(code="integer"),
}


class Server:
    def __init__(self, name: str, hang_on_start: bool, *, nulls: bool = False) -> None:
        self.name = name
        self.hang_on_start = hang_on_start
        self.nulls = nulls
        self.extra_tools: list[str] = []

    def text(self, request_id: Any, text: str, *, is_error: bool = False) -> None:
        result: dict[str, Any] = {"content": [{"type": "text", "text": text}]}
        if is_error:
            result["isError"] = True
        send({"jsonrpc": "2.0", "id": request_id, "result": result})

    def handle(self, message: dict[str, Any]) -> None:
        method = message.get("method")
        request_id = message.get("id")
        params = message.get("params") or {}
        if method == "notifications/cancelled":
            log(f"cancelled request {params.get('requestId')}: {params.get('reason')}")
            return
        if request_id is None:
            return  # other notifications
        if method == "initialize":
            if self.hang_on_start:
                log("hanging on initialize as asked")
                return
            send(
                {
                    "jsonrpc": "2.0",
                    "id": request_id,
                    "result": {
                        "protocolVersion": params.get("protocolVersion", "2025-06-18"),
                        "capabilities": {"tools": {"listChanged": True}},
                        "serverInfo": {"name": self.name, "version": "1.0"},
                    },
                }
            )
        elif method == "ping":
            send({"jsonrpc": "2.0", "id": request_id, "result": {}})
        elif method == "tools/list":
            tools = [
                {"name": tool, "description": f"{tool} on {self.name}", "inputSchema": schema}
                for tool, schema in TOOLS.items()
            ]
            tools += [
                {"name": tool, "description": "added at run time", "inputSchema": _schema()}
                for tool in self.extra_tools
            ]
            if self.nulls:
                for tool in tools:
                    tool.update(title=None, outputSchema=None, annotations={"title": None, "readOnlyHint": True})
            send({"jsonrpc": "2.0", "id": request_id, "result": {"tools": tools}})
        elif method == "tools/call":
            self.call(request_id, params.get("name"), params.get("arguments") or {})
        else:
            send(
                {"jsonrpc": "2.0", "id": request_id, "error": {"code": -32601, "message": f"no method {method}"}}
            )

    def call(self, request_id: Any, tool: str, args: dict[str, Any]) -> None:
        if tool == "echo":
            self.text(request_id, str(args.get("text", "")))
        elif tool == "whoami":
            self.text(request_id, self.name)
        elif tool == "pid":
            self.text(request_id, str(os.getpid()))
        elif tool == "slow":
            log(f"slow request {request_id} started")
            time.sleep(float(args.get("seconds", 1)))
            self.text(request_id, f"{self.name} slept {args.get('seconds')}")
        elif tool == "hang":
            log(f"hang request {request_id} started")
        elif tool == "garbage":
            write_raw(b"this is not JSON at all")
            write_raw(b"\xff\xfe binary \x00 noise")
            write_raw(b'{"hello": "not a JSON-RPC message"}')
            write_raw(b"[1, 2, 3]")
            write_raw(b'{"jsonrpc": "2.0", "id": 987654, "result": {"nobody": "asked"}}')
            self.text(request_id, "survived")
        elif tool == "bad_response":
            send({"jsonrpc": "2.0", "id": request_id, "result": "a result must be an object"})
        elif tool == "big":
            size = int(float(args.get("mib", 1)) * 1024 * 1024)
            self.text(request_id, "x" * size)
        elif tool == "add_tool":
            self.extra_tools.append(str(args["tool_name"]))
            send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
            self.text(request_id, f"added {args['tool_name']}")
        elif tool == "error":  # a JSON-RPC error whose text the caller chose (e.g. echoing a credential)
            send({"jsonrpc": "2.0", "id": request_id, "error": {"code": -32000, "message": str(args.get("message"))}})
        elif tool == "stderr":
            log(str(args.get("text", "")))
            self.text(request_id, "ok")
        elif tool == "exit":
            os._exit(int(args.get("code", 1)))
        elif tool in self.extra_tools:
            self.text(request_id, f"{self.name}:{tool}")
        else:
            send({"jsonrpc": "2.0", "id": request_id, "error": {"code": -32602, "message": f"no tool {tool}"}})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="chaos")
    parser.add_argument("--crash-on-start", action="store_true")
    parser.add_argument("--hang-on-start", action="store_true")
    parser.add_argument("--banner", type=int, default=0)
    parser.add_argument("--stderr", action="append", default=[])
    parser.add_argument("--nulls", action="store_true")
    args = parser.parse_args()
    for line in args.stderr:
        log(line)
    if args.crash_on_start:
        if not args.stderr:
            log(f"{args.name}: crashing on start as asked")
        return CRASH_EXIT_CODE
    for i in range(args.banner):
        write_raw(f"{args.name} banner line {i}: starting up".encode())
    server = Server(args.name, args.hang_on_start, nulls=args.nulls)
    for raw in sys.stdin.buffer:
        try:
            message = json.loads(raw)
        except ValueError:
            log(f"unreadable request: {raw[:80]!r}")
            continue
        if isinstance(message, dict):
            threading.Thread(target=server.handle, args=(message,), daemon=True).start()
    return 0


if __name__ == "__main__":
    sys.exit(main())
