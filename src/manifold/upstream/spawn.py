"""Starting a stdio server's process, and starting the configured ones before the imports.

A stdio server under the reaper (`reaper.py`) takes about a second to come up
(most MCP servers import a lot), and so does Manifold itself: the SDK and the
rest take over a second to import. Done one after the other, a gateway with
one server needs twice the time the server needs alone. `early_spawns()`
overlaps the two: `manifold serve` starts the config file's servers first,
with nothing but the standard library, anyio and the config module loaded,
and imports the rest while they start. `open_stdio()` (stdio.py) then takes
the process already running for its config instead of starting one.

A process is taken only for a config that spawns exactly the same command
line and environment; anything else starts afresh, and what nobody took
(the config changed, a server was removed) is stopped once the gateway has
made its first connections, and at the latest when the spawns' scope ends.
This module must not import the MCP SDK: it runs before it is imported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

import anyio
import structlog
from anyio.abc import Process

from manifold.config import ServerConfig, StdioServerConfig
from manifold.upstream import reaper

log = structlog.get_logger("manifold.upstream")

INHERITED_ENV_VARS = ("HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER")
"""What a server inherits of Manifold's environment: the MCP SDK's own list
(`mcp.client.stdio.DEFAULT_INHERITED_ENV_VARS`, held to it by a test), repeated
here so a spawn does not wait for the SDK's import."""

_STOP_WAIT = reaper.GRACE + 1.0  # the reaper's own SIGTERM-to-SIGKILL grace, then some


def default_environment() -> dict[str, str]:
    """The inherited variables, as the SDK's `get_default_environment()` picks them."""
    return {
        key: value
        for key in INHERITED_ENV_VARS
        if (value := os.environ.get(key)) is not None and not value.startswith("()")
    }


def resolve_command(command: str, env: dict[str, str]) -> str:
    """The executable to run, looked up on the server's own PATH; a clear error if there is none."""
    found = shutil.which(command, path=env.get("PATH", os.defpath))
    if found is None:
        raise FileNotFoundError(f"command not found: {command}")
    return found


class Watch:
    """Manifold's end of the reaper's watch pipe, closed exactly once (fd numbers are reused)."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with suppress(OSError):
                os.close(fd)


@dataclass
class Spawned:
    """A server's reaper process, the pipe that keeps it alive, and how long the spawn took."""

    process: Process
    watch: Watch
    seconds: float


Spec = tuple[tuple[str, ...], tuple[tuple[str, str], ...]]


def spec(config: StdioServerConfig) -> tuple[str, list[str], dict[str, str]]:
    """(executable, args, env) of a server: the SDK's inherited variables under the config's own."""
    env = default_environment() | (config.env or {})
    return resolve_command(config.command, env), list(config.args), env


async def spawn(config: StdioServerConfig) -> Spawned:
    """Start the server under a reaper, or take the one `early_spawns()` started for this config."""
    command, args, env = spec(config)
    early = _take(_key(command, args, env))
    if early is not None:
        return early
    return await _spawn(command, args, env)


async def _spawn(command: str, args: list[str], env: dict[str, str]) -> Spawned:
    watch_r, watch_w = os.pipe()  # both ends close-on-exec; only the reaper gets watch_r
    watch = Watch(watch_w)
    started = time.perf_counter()
    try:
        process = await anyio.open_process(
            reaper.command_line(sys.executable, watch_r, command, args),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
            pass_fds=(watch_r,),
        )
    except BaseException:
        watch.close()
        raise
    finally:
        os.close(watch_r)
    return Spawned(process, watch, time.perf_counter() - started)


# --- the early spawns of `manifold serve` -------------------------------------------------

_waiting: dict[Spec, list[Spawned]] = {}
"""Processes `early_spawns()` started that no `spawn()` has taken yet, by what they run."""


def _key(command: str, args: list[str], env: dict[str, str]) -> Spec:
    return (command, *args), tuple(sorted(env.items()))


def _take(key: Spec) -> Spawned | None:
    found = _waiting.get(key)
    if not found:
        return None
    spawned = found.pop()
    if not found:
        del _waiting[key]
    return spawned


@asynccontextmanager
async def early_spawns(servers: Iterable[ServerConfig]) -> AsyncIterator[None]:
    """Start these servers' processes now (stdio, enabled, not lazy); stop what is left untaken on exit."""
    for config in servers:
        if not isinstance(config, StdioServerConfig) or config.lazy or not config.enabled:
            continue
        try:
            command, args, env = spec(config)
            spawned = await _spawn(command, args, env)
        except OSError:
            continue  # the server's own start reports it, with its name
        _waiting.setdefault(_key(command, args, env), []).append(spawned)
    try:
        yield
    finally:
        with anyio.CancelScope(shield=True):
            await stop_untaken()


async def stop_untaken() -> None:
    """Stop the early processes nobody took: their reaper takes each server's group down."""
    left = [spawned for found in _waiting.values() for spawned in found]
    _waiting.clear()
    for spawned in left:
        log.info("stopping an early-started server no configured server took", pid=spawned.process.pid)
        spawned.watch.close()
    for spawned in left:
        with anyio.move_on_after(_STOP_WAIT) as waited:
            await spawned.process.aclose()
        if waited.cancelled_caught:
            spawned.process.kill()
            with anyio.move_on_after(1):
                await spawned.process.wait()
