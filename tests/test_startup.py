"""Start-up of the stdio face: `initialize` is answered before the store is opened and the
upstreams are started, and a call made meanwhile waits for its server instead of failing;
a well-formed first `initialize` is answered before the SDK is even imported, with the answer
the SDK would give.

The store is held back for real: the test takes PostgreSQL's migration lock, so the gateway
queues on it while opening its store (seen in `pg_locks`), exactly as a replica waits while
another one migrates.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION
from support import FIXTURE, PYTHON, stop_process, subprocess_env
from test_migrations import waiting_for_lock

from manifold import early
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


def _exchange(config: Path, lines: list[dict[str, Any]], answers: int) -> list[dict[str, Any]]:
    """Write `lines` to a stdio gateway at once; read `answers` frames back (then close stdin)."""
    proc = subprocess.Popen(
        [PYTHON, "-m", "manifold", "serve", "--config", str(config), "--no-watch"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=subprocess_env({"XDG_DATA_HOME": str(config.parent)}),
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
        proc.stdin.flush()
        got = [json.loads(proc.stdout.readline()) for _ in range(answers)]
        proc.stdin.close()
        assert proc.wait(30) == 0
        assert proc.stdout.read() == b""  # nothing more: in particular no second answer to initialize
        return got
    finally:
        stop_process(proc)


def _initialize(request_id: int, version: str) -> dict[str, Any]:
    params = {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    return {"jsonrpc": "2.0", "id": request_id, "method": "initialize", "params": params}


@pytest.mark.parametrize("version", [*HANDSHAKE_PROTOCOL_VERSIONS, "1999-01-01"])
def test_the_early_initialize_answer_is_the_sdks_answer(tmp_path: Path, version: str) -> None:
    """manifold/early.py answers `initialize` before the SDK is imported; the SDK answers it when
    something else comes first. Both answers must be the same, for every handshake version."""
    assert early.HANDSHAKE_VERSIONS == HANDSHAKE_PROTOCOL_VERSIONS
    assert early.HANDSHAKE_VERSIONS[-1] == LATEST_HANDSHAKE_VERSION
    config = tmp_path / "manifold.json"
    config.write_text(json.dumps({"mcp_servers": {}}))
    ping = {"jsonrpc": "2.0", "id": 0, "method": "ping"}
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    first, then_ping = _exchange(config, [_initialize(1, version), initialized, ping], answers=2)
    assert then_ping == {"jsonrpc": "2.0", "id": 0, "result": {}}
    # A ping first: the early thread leaves the session to the SDK, which answers initialize itself.
    sdk = _exchange(config, [ping, _initialize(1, version), initialized, ping], answers=3)
    assert first == sdk[1]
    assert first["result"]["protocolVersion"] == (version if version in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION)


def test_a_malformed_first_line_is_left_to_the_sdk(tmp_path: Path) -> None:
    config = tmp_path / "manifold.json"
    config.write_text(json.dumps({"mcp_servers": {}}))
    bad = _initialize(1, "2025-11-25")
    del bad["params"]["clientInfo"]
    (answer,) = _exchange(config, [bad], answers=1)
    assert answer["id"] == 1 and "error" in answer


def test_sigterm_before_the_client_says_anything_stops_everything(tmp_path: Path) -> None:
    """The early answer's reader holds stdin until the first line: it must not hold the exit too."""
    config = tmp_path / "manifold.json"
    config.write_text(json.dumps({"mcp_servers": {"alpha": {"mcp_server_type": "stdio", "command": PYTHON, "args": [FIXTURE, "--name", "alpha"]}}}))
    proc = subprocess.Popen(
        [PYTHON, "-m", "manifold", "serve", "--config", str(config), "--no-watch"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env({"XDG_DATA_HOME": str(tmp_path)}),
    )
    assert proc.stderr is not None
    try:
        for raw in proc.stderr:  # the gateway is up: its upstream is ready
            if b"upstream ready" in raw:
                break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        stop_process(proc)
