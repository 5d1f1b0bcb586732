"""What the operator may know about one upstream's transport, kept across reconnects.

The supervisor owns one `TransportReport` per server and hands it to every
transport it opens: a stdio transport fills in the process (pid, how it ended,
the last stderr lines), an HTTP transport the last error status it got. Every
text kept here is masked: it ends up in logs, `/healthz` and `last_error`.
"""

from __future__ import annotations

import signal
from collections import deque
from typing import Any

import structlog

from manifold.logging import masker
from manifold.upstream.reaper import EXIT_SPAWN_FAILED

STDERR_TAIL_LINES = 20
"""How many of a server's last stderr lines are kept for the operator."""

STDERR_LINE_CHARS = 2000
"""Longer stderr lines are cut to this many characters."""

log = structlog.get_logger("manifold.upstream")


class TransportReport:
    """One server's transport as the operator sees it; `begin()` starts each connection attempt."""

    def __init__(self, server: str = "", *, lines: int = STDERR_TAIL_LINES) -> None:
        self.server = server
        self.tail: deque[str] = deque(maxlen=lines)
        self.pid: int | None = None
        """The reaper's pid (the server is its only child); None before a spawn."""
        self.returncode: int | None = None
        """The server's exit status as the reaper reports it (128 + N: killed by signal N)."""
        self.last_line: str | None = None
        """The last stderr line of the current process (None if it wrote none)."""
        self.went_away = False
        """True when the server closed its stdout (exited, crashed, was killed) before Manifold let it go."""
        self.bad_lines = 0
        """Lines on stdout that were not JSON-RPC, over every process so far."""
        self.spawn_seconds: float | None = None
        """How long the last spawn (reaper included) took to return."""
        self.http_error: str | None = None
        """The current connection's last HTTP error, e.g. 'HTTP 401 Unauthorized from POST <url>'."""
        self.raw: Any = None
        """The live stdio connection's raw frame channel (the lean path's way in); None otherwise."""
        self.log = log.bind(server=server)

    def begin(self) -> None:
        """A new connection attempt: forget what described the last one (the stderr tail stays)."""
        self.pid = None
        self.returncode = None
        self.last_line = None
        self.went_away = False
        self.http_error = None

    def add_stderr(self, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").rstrip()
        if len(text) > STDERR_LINE_CHARS:
            text = text[:STDERR_LINE_CHARS] + "…"
        if not text.strip():
            return
        text = masker.mask(text)
        self.tail.append(text)
        self.last_line = text
        self.log.info("upstream stderr", line=text)

    async def on_http_response(self, response: Any) -> None:
        """An httpx response hook: keep the last error status (the SDK says only 'an error response')."""
        if response.status_code >= 400:
            request = response.request
            self.http_error = masker.mask(
                f"HTTP {response.status_code} {response.reason_phrase} from {request.method} {request.url}"
            )

    def exit_description(self) -> str | None:
        """'exited with status 3', 'was killed by SIGKILL'; None while it runs or if Manifold stopped it."""
        return describe_exit(self.returncode) if self.went_away else None


def describe_exit(code: int | None) -> str | None:
    """'exited with status 3', 'was killed by SIGKILL' (status 128 + N from the reaper), or None."""
    if code is None:
        return None
    signum = -code if code < 0 else code - 128 if 128 < code < 128 + signal.NSIG else 0
    if signum:
        try:
            return f"was killed by {signal.Signals(signum).name}"
        except ValueError:
            return f"was killed by signal {signum}"
    if code == EXIT_SPAWN_FAILED:
        return "could not be started (exit status 127)"
    return f"exited with status {code}"
