"""Scale-out bench (issue 10): three replicas on one PostgreSQL behind nginx round-robin.

    .venv/bin/python bench/replicas.py [--clients 16] [--calls 500] [--rounds 10]

Needs PostgreSQL and nginx installed (as `.ci/run` does); starts a throwaway cluster, three
`manifold serve` replicas and nginx on loopback (tests/replicas.py), and stops them all. Measures:

1. propagation: a server created through replica A's API (from the moment the API answers) until
   it is listed and callable on B and C, and deleted on A until it is gone from B and C, over
   `--rounds` rounds (median and max; each round starts once the previous one is settled);
2. load: `--clients` MCP sessions through nginx, `--calls` sequential echo calls each; calls
   answered, lost (an error or a wrong answer), and calls/s over the whole run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from replicas import gateway_cluster
from services import postgres_cluster
from support import start_http_upstream
from test_replicas import CONFIG, mcp_session, text_of, tool_names


async def propagation(cluster, upstream: str, rounds: int) -> tuple[list[float], list[float]]:  # type: ignore[no-untyped-def]
    a, b, c = cluster.replicas
    delays, deletes = [], []
    async with mcp_session(b.base) as on_b, mcp_session(c.base) as on_c, httpx.AsyncClient(
        headers=cluster.headers, timeout=30
    ) as api:
        for i in range(rounds):
            name = f"p{i}"
            body = {"server_name": name, "config": {"mcp_server_type": "streamable_http", "server_url": upstream}}
            created = await api.post(a.base + "/v1/mcp-servers/", json=body)
            created.raise_for_status()
            start = time.perf_counter()
            pending = {"b": on_b, "c": on_c}
            while pending:
                for key, session in list(pending.items()):
                    listed = f"{name}__whoami" in await tool_names(session)
                    if listed and text_of(await session.call_tool(f"{name}__whoami", {})) == "remote":
                        del pending[key]
            delays.append(time.perf_counter() - start)
            (await api.delete(f"{a.base}/v1/mcp-servers/{created.json()['id']}")).raise_for_status()
            start = time.perf_counter()
            pending = {"b": on_b, "c": on_c}
            while pending:
                for key, session in list(pending.items()):
                    if f"{name}__whoami" not in await tool_names(session):
                        del pending[key]
            deletes.append(time.perf_counter() - start)
    return delays, deletes


FAILURES: list[str] = []


async def load(cluster, clients: int, calls: int) -> tuple[int, int, float]:  # type: ignore[no-untyped-def]
    answered = lost = 0

    async def client(i: int) -> None:
        nonlocal answered, lost
        async with mcp_session(cluster.proxy.base) as session:
            for n in range(calls):
                try:
                    ok = text_of(await session.call_tool("cfg__echo", {"text": f"c{i}-{n}"})) == f"c{i}-{n}"
                except Exception as exc:  # noqa: BLE001 - counted
                    FAILURES.append(f"client {i} call {n}: {type(exc).__name__}: {exc}")
                    ok = False
                answered += ok
                lost += not ok

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(clients):
            tg.start_soon(client, i)
    return answered, lost, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        postgres_cluster() as pg,
        start_http_upstream("--name", "remote") as upstream,
        gateway_cluster(pg.create_database(), CONFIG, Path(tmp)) as cluster,
    ):
        delays, deletes = anyio.run(propagation, cluster, upstream + "/mcp", args.rounds)
        for what, values in (("create (listed and callable)", delays), ("delete (gone)", deletes)):
            print(
                f"propagation A -> B and C, {what}, {args.rounds} rounds: "
                f"median {statistics.median(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms"
            )
        answered, lost, seconds = anyio.run(load, cluster, args.clients, args.calls)
        total = args.clients * args.calls
        print(
            f"load through nginx: {args.clients} clients x {args.calls} calls = {total}: "
            f"answered {answered}, lost {lost}, {seconds:.1f} s, {answered / seconds:.0f} calls/s"
        )
        routed = [r for r in cluster.proxy.routed() if r[0] == "POST" and r[1] == "/mcp"]
        spread = {addr: sum(1 for r in routed if r[3] == addr) for addr in {r[3] for r in routed}}
        print(f"POST /mcp per replica: {sorted(spread.values())}")
        odd = [r for r in routed if r[2] not in ("200", "202")]
        for line in [*FAILURES[:5], *[" ".join(r) for r in odd[:5]]]:
            print(f"  failure: {line}")
        errors = (cluster.proxy.folder / "error.log")
        for line in (errors.read_text().splitlines() if errors.exists() else [])[-5:]:
            print(f"  nginx: {line}")


if __name__ == "__main__":
    main()
