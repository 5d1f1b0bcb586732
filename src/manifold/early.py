"""Answer a stdio client's `initialize` while the rest of Manifold is still importing.

Python and the MCP SDK take over a second to import here; a client waits for
that before its first answer, whatever the number of upstreams. `initialize`
does not need any of it: the answer is the same every time (the gateway's
capabilities do not depend on its upstreams). So `manifold serve` on stdio
starts a thread before any heavy import that reads the first line from stdin
and, if it is a well-formed `initialize`, answers it at once from the table
below. The line itself is then handed to the stdio face like any other, so
the SDK's server still sees the handshake and sets its session up from it;
its own answer to that request is dropped (faces/stdio.py), after a check
that it says the same (tests/test_startup.py holds the table to the SDK's).
Anything else on the first line is left alone and handed over unanswered.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any

from manifold import __version__

HANDSHAKE_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
"""The SDK's `HANDSHAKE_PROTOCOL_VERSIONS`; the newest is what any other request gets."""

CAPABILITIES: dict[str, Any] = {
    "completions": {},
    "logging": {},
    "prompts": {"listChanged": True},
    "resources": {"listChanged": True, "subscribe": True},
    "tools": {"listChanged": True},
}
SERVER_INFO = {"name": "manifold", "version": __version__}
_MAX_FIRST_LINE = 1 << 20


def initialize_result(params: dict[str, Any]) -> dict[str, Any]:
    requested = params.get("protocolVersion")
    version = requested if requested in HANDSHAKE_VERSIONS else HANDSHAKE_VERSIONS[-1]
    return {"capabilities": CAPABILITIES, "protocolVersion": version, "serverInfo": SERVER_INFO}


def _plain_initialize(line: bytes) -> tuple[Any, dict[str, Any]] | None:
    """(id, params) of a well-formed `initialize` request; None for anything the SDK should judge."""
    try:
        message = json.loads(line)
    except ValueError:
        return None
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0" or message.get("method") != "initialize":
        return None
    request_id, params = message.get("id"), message.get("params")
    if isinstance(request_id, bool) or not isinstance(request_id, int | str) or not isinstance(params, dict):
        return None
    info = params.get("clientInfo")
    if (
        not isinstance(params.get("protocolVersion"), str)
        or not isinstance(params.get("capabilities"), dict)
        or not isinstance(info, dict)
        or not isinstance(info.get("name"), str)
        or not isinstance(info.get("version"), str)
    ):
        return None
    return request_id, params


class EarlyAnswer:
    """The thread that reads stdin first: what it read, and the answer it sent (if any)."""

    def __init__(self, stdin: int = 0, stdout: int = 1) -> None:
        self._stdin = stdin
        self._stdout = os.dup(stdout)  # fd 1 is later pointed at stderr (faces/stdio.py)
        self.read = b""
        """Everything read from stdin: the first line and whatever came with it."""
        self.eof = False
        self.answered_id: Any = None
        self.result: dict[str, Any] | None = None
        self.done = threading.Event()
        # The event loop waits on this pipe's read end, not on `done`: a worker thread parked in
        # `done.wait()` would keep the interpreter from exiting on SIGTERM before any input came.
        self.done_fd, self._done_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="manifold-early-initialize", daemon=True)

    def start(self) -> EarlyAnswer:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            chunks: list[bytes] = []
            while True:
                try:
                    chunk = os.read(self._stdin, 65536)
                except InterruptedError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    self.eof = True
                    break
                chunks.append(chunk)
                if b"\n" in chunk or sum(map(len, chunks)) > _MAX_FIRST_LINE:
                    break
            self.read = b"".join(chunks)
            line = self.read.split(b"\n", 1)[0]
            found = _plain_initialize(line) if b"\n" in self.read else None
            if found is not None:
                request_id, params = found
                result = initialize_result(params)
                frame = json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}, separators=(",", ":"))
                view = memoryview(frame.encode() + b"\n")
                try:
                    while view:
                        view = view[os.write(self._stdout, view) :]
                except OSError:
                    pass
                else:
                    self.answered_id, self.result = request_id, result
        finally:
            for fd in (self._stdout, self._done_w):
                try:
                    os.close(fd)  # the pipe's read end now sees end of file: readable
                except OSError:
                    pass
            self.done.set()


current: EarlyAnswer | None = None
"""The running early answer of this process, if `manifold serve` started one."""


def start(argv: list[str]) -> None:
    """Start the early answer when argv says `serve` on stdio (the default transport)."""
    global current
    if not argv or argv[0] != "serve" or "--help" in argv or "-h" in argv:
        return
    for i, arg in enumerate(argv):
        if arg == "--transport" and i + 1 < len(argv) and argv[i + 1] != "stdio":
            return
        if arg.startswith("--transport=") and arg != "--transport=stdio":
            return
    if sys.platform == "win32":
        return
    current = EarlyAnswer().start()


def structlog_without_rich() -> None:
    """Import structlog with `rich` out of its sight.

    structlog's dev module imports rich (and pygments under it) for pretty
    tracebacks when it can: 15 MB of a long-running server's memory, for
    tracebacks that end up in log files. The CLI's tables still import rich
    when a command draws one.
    """
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # import rich -> ImportError
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]


def main() -> None:
    """The `manifold` command: the early answer first, then the CLI (and its imports)."""
    start(sys.argv[1:])
    structlog_without_rich()
    from manifold.cli import main as cli

    cli()
