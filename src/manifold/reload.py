"""Hot reload: the config file is watched, and re-read on SIGHUP.

A reload changes only what changed: added servers are connected, removed ones
stopped, changed ones reconnected with their new settings; the others, and
every connected client, are left alone. A broken edit is rejected with the
same messages as `manifold validate`, and the running set stays as it was.
"""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import structlog
from watchfiles import awatch

from manifold.config import ConfigError, load_config
from manifold.gateway import Gateway

log = structlog.get_logger("manifold.reload")


async def reload_config(gateway: Gateway, path: Path) -> bool:
    """Re-read `path` and apply it; returns whether it was applied."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        log.error("config change rejected; the running servers are unchanged", path=str(path), problems=exc.problems)
        return False
    summary = await gateway.apply_config(config)
    log.info("config reloaded", path=str(path), **summary)
    return True


async def watch_config(gateway: Gateway, path: Path, *, files: bool = True) -> None:
    """Reload on SIGHUP, and with `files` on every change of the file (editors that replace it included)."""
    path = path.resolve()

    async def on_file_change() -> None:
        # Watch the folder: many editors write a new file and rename it over the old one.
        async for changes in awatch(path.parent, debounce=200, step=50, recursive=False, rust_timeout=300):
            if any(Path(changed).resolve() == path for _, changed in changes):
                await reload_config(gateway, path)

    async def on_sighup() -> None:
        with anyio.open_signal_receiver(signal.SIGHUP) as signals:
            async for _ in signals:
                await reload_config(gateway, path)

    async with anyio.create_task_group() as tg:
        if files:
            tg.start_soon(on_file_change)
        tg.start_soon(on_sighup)
