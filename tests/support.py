"""Helpers for tests that run real upstream MCP servers as subprocesses.

    from support import FIXTURE, PYTHON, fixture_command, start_http_upstream

    with start_http_upstream("--name", "alpha") as base:        # http://127.0.0.1:<port>
        url = base + "/mcp"

    async with http_upstream("--transport", "sse", "--name", "beta") as base:
        url = base + "/sse"

    with running_process([PYTHON, FIXTURE, "--transport", "sse", "--port", "0"]) as (proc, base):
        ...

HTTP servers are started with `--port 0` and report their real address on one stdout line,
`LISTENING http://127.0.0.1:<port>`; the helpers wait for that line (with a deadline), never for
a fixed time. Every process a helper starts is terminated, waited for, and killed if it lingers.
"""

import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

import anyio
import anyio.to_thread

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SRC = ROOT / "src"
PYTHON = sys.executable
FIXTURE = str(TESTS / "upstreams" / "fixture_server.py")
EVERYTHING = str(TESTS / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js")
READY_PREFIX = "LISTENING "
START_TIMEOUT = 60.0
"""Seconds a server gets to print its ready line (generous: CI machines are slow)."""
STOP_TIMEOUT = 5.0
"""Seconds a server gets to exit after SIGTERM before it is killed."""

T = TypeVar("T")


def fixture_command(*args: str) -> list[str]:
    """The command line that runs the fixture upstream with `args`."""
    return [PYTHON, FIXTURE, *args]


def demo_command(*args: str) -> list[str]:
    """The command line that runs Manifold's demo server (`python -m manifold.demo`) with `args`."""
    return [PYTHON, "-m", "manifold.demo", *args]


def subprocess_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with `src/` on PYTHONPATH (so `manifold` imports uninstalled)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def fixture_stdio_params(*args: str, env: Mapping[str, str] | None = None) -> Any:
    """`StdioServerParameters` that start the fixture upstream over stdio."""
    from mcp.client.stdio import StdioServerParameters

    return StdioServerParameters(command=PYTHON, args=[FIXTURE, *args], env=dict(env or {}))


def demo_stdio_params(*args: str, env: Mapping[str, str] | None = None) -> Any:
    """`StdioServerParameters` that start the demo server over stdio (src/ on PYTHONPATH)."""
    from mcp.client.stdio import StdioServerParameters

    extra = {"PYTHONPATH": subprocess_env()["PYTHONPATH"], **(env or {})}
    return StdioServerParameters(command=PYTHON, args=["-m", "manifold.demo", *args], env=extra)


class ProcessStartError(RuntimeError):
    """A server exited, or stayed silent past its deadline, before printing its ready line."""


class _StdoutPump:
    """Reads a process's stdout on a daemon thread so the pipe never fills; keeps every line."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self.eof = False
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                line = line.rstrip("\r\n")
                self.lines.append(line)
                self._queue.put(line)
        except (OSError, ValueError):
            pass
        finally:
            self._queue.put(None)

    def wait_for_line(self, prefix: str, deadline: float) -> str | None:
        """The first line starting with `prefix`; None at end of output or past the deadline."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                return None
            if line is None:
                self.eof = True
                return None
            if line.startswith(prefix):
                return line

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


def stop_process(proc: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT) -> int:
    """Terminate `proc`, wait for it, kill it if it lingers; returns its exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    return proc.returncode


@contextmanager
def running_process(
    cmd: Sequence[str],
    *,
    ready_line_prefix: str = READY_PREFIX,
    timeout: float = START_TIMEOUT,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start `cmd`, wait for its ready line, yield `(process, rest of the ready line)`.

    With the default prefix the rest of the line is the server's base URL. The process is
    stopped on exit. stderr goes to a temporary file whose text is quoted if the start fails;
    `env` defaults to `subprocess_env()`.
    """
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as stderr:
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=dict(env) if env is not None else subprocess_env(),
            cwd=cwd,
        )
        assert proc.stdout is not None
        pump = _StdoutPump(proc.stdout)
        try:
            line = pump.wait_for_line(ready_line_prefix, time.monotonic() + timeout)
            if line is None:
                if pump.eof:  # stdout closed: the process is exiting; let it be reaped
                    try:
                        proc.wait(STOP_TIMEOUT)
                    except subprocess.TimeoutExpired:
                        pass
                if proc.poll() is None:
                    what = f"printed no line starting with {ready_line_prefix!r} within {timeout} s"
                else:
                    what = f"exited with status {proc.returncode} before printing {ready_line_prefix!r}"
                stop_process(proc)
                pump.join(1.0)
                stderr.seek(0)
                raise ProcessStartError(
                    f"{' '.join(cmd)}\n{what}\n--- stdout ---\n"
                    + "\n".join(pump.lines)
                    + f"\n--- stderr ---\n{stderr.read()}"
                )
            yield proc, line[len(ready_line_prefix) :].strip()
        finally:
            stop_process(proc)
            pump.join(1.0)  # EOF follows the exit, unless a grandchild still holds the pipe
            if not pump.alive:
                proc.stdout.close()


@contextmanager
def start_http_upstream(
    *args: str,
    command: Callable[..., list[str]] = fixture_command,
    timeout: float = START_TIMEOUT,
    env: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """Run the fixture (or `command=demo_command`) over HTTP; yield its base URL.

    `args` are passed through; `--transport streamable-http` is added unless `args` name a
    transport, and `--port 0` always. Append `/mcp` (streamable HTTP) or `/sse` (SSE) to the URL.
    """
    full = list(args)
    if "--transport" not in full:
        full = ["--transport", "streamable-http", *full]
    with running_process(command(*full, "--port", "0"), timeout=timeout, env=env) as (_, url):
        yield url


@asynccontextmanager
async def http_upstream(
    *args: str,
    command: Callable[..., list[str]] = fixture_command,
    timeout: float = START_TIMEOUT,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[str]:
    """`start_http_upstream` for async tests: starts and stops the process on a worker thread."""
    cm = start_http_upstream(*args, command=command, timeout=timeout, env=env)
    with anyio.CancelScope(shield=True):  # bounded by `timeout`; a cancelled start would leak the process
        url = await anyio.to_thread.run_sync(cm.__enter__)
    try:
        yield url
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(cm.__exit__, None, None, None)


@contextmanager
def together(*cms: AbstractContextManager[T]) -> Iterator[list[T]]:
    """Enter several context managers at once (one thread each) and yield their values in order.

    Servers start in parallel (importing the SDK alone takes a second or two):
        with together(start_http_upstream("--name", "a"), start_http_upstream("--name", "b")) as (a, b):
    If any fails to start, the others are stopped and the first error is raised. On exit every
    one is stopped, again in parallel.
    """
    if not cms:
        yield []
        return
    with ThreadPoolExecutor(max_workers=len(cms)) as pool:
        futures = [pool.submit(cm.__enter__) for cm in cms]
        outcomes = [(cm, future.exception()) for cm, future in zip(cms, futures, strict=True)]
    entered = [cm for cm, error in outcomes if error is None]
    errors = [error for _, error in outcomes if error is not None]

    def exit_all() -> None:
        with ThreadPoolExecutor(max_workers=max(1, len(entered))) as pool:
            for future in [pool.submit(cm.__exit__, None, None, None) for cm in entered]:
                future.result()

    if errors:
        exit_all()
        raise errors[0]
    try:
        yield [future.result() for future in futures]
    finally:
        exit_all()


def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Poll `predicate` until it returns something truthy (returned); TimeoutError past `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"gave up after {timeout} s waiting for {what or predicate!r}")
        time.sleep(interval)


async def async_wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> Any:
    """`wait_for` for async tests (sleeps with anyio; the predicate itself is synchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"gave up after {timeout} s waiting for {what or predicate!r}")
        await anyio.sleep(interval)
