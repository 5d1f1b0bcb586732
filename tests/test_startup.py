"""Start-up of the stdio face: `initialize` is answered before the store is opened and the
upstreams are started, and a call made meanwhile waits for its server instead of failing.

The store is held back for real: the test takes PostgreSQL's migration lock, so the gateway
queues on it while opening its store (seen in `pg_locks`), exactly as a replica waits while
another one migrates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from support import FIXTURE, PYTHON, subprocess_env
from test_migrations import waiting_for_lock

from manifold.store import MIGRATION_LOCK

pytestmark = pytest.mark.anyio


async def test_initialize_is_answered_while_the_store_is_held_and_a_first_call_waits_for_it(
    pg_cluster: Any, tmp_path: Path
) -> None:
    url = pg_cluster.create_database()
    config = tmp_path / "manifold.json"
    config.write_text(json.dumps({"mcp_servers": {"alpha": {"mcp_server_type": "stdio", "command": PYTHON, "args": [FIXTURE, "--name", "alpha"]}}}))
    params = StdioServerParameters(
        command=PYTHON,
        args=["-m", "manifold", "serve", "--config", str(config), "--db", url, "--no-watch"],
        env=subprocess_env({"XDG_DATA_HOME": str(tmp_path)}),
    )
    holder = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with holder.connect() as lock:
            await lock.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
            locked = True
            try:
                async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
                    with anyio.fail_after(30):
                        result = await session.initialize()
                    assert result.server_info.name
                    # Answered with the lock held all along; and the gateway is queued on it now.
                    with anyio.fail_after(30):
                        while await waiting_for_lock(lock) != 1:
                            await anyio.sleep(0.02)

                    answers: list[Any] = []

                    async def first_call() -> None:
                        answers.append(await session.call_tool("alpha__echo", {"text": "early"}))

                    async with anyio.create_task_group() as tg:
                        tg.start_soon(first_call)
                        await lock.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
                        locked = False
                    (answer,) = answers
                    assert not answer.is_error, answer
                    assert [c.text for c in answer.content] == ["early"]  # type: ignore[union-attr]
                    assert "alpha__echo" in {t.name for t in (await session.list_tools()).tools}
            finally:
                if locked:
                    await lock.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
    finally:
        await holder.dispose()
