"""Several Manifold replicas on one PostgreSQL database behind nginx (tests and bench/replicas.py).

    with postgres_cluster() as pg, gateway_cluster(pg.create_database(), config, n=3) as cluster:
        cluster.replicas[0].base      # http://127.0.0.1:<port> of one replica
        cluster.proxy.base            # nginx, round-robin over all of them

Each replica is `python -m manifold serve --transport http --port 0 --db <url> --config <file>`
with the same API token and session secret; they start in parallel and are all stopped on exit.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from services import Proxy, nginx_proxy
from support import PYTHON, running_process, subprocess_env, together

TOKEN = "replica-token-3c9e"
SECRET = "replica-session-secret-5b1d"


@dataclass
class Replica:
    base: str
    proc: subprocess.Popen[str]

    @property
    def address(self) -> str:
        return self.base.removeprefix("http://")


@dataclass
class GatewayCluster:
    db: str
    replicas: list[Replica]
    proxy: Proxy

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}


def replica_command(config: Path, db: str) -> list[str]:
    return [PYTHON, "-m", "manifold", "serve", "--transport", "http", "--port", "0",
            "--config", str(config), "--db", db, "--no-watch", "--log-level", "warning"]


@contextmanager
def gateway_cluster(db: str, config: dict[str, Any], folder: Path, *, n: int = 3) -> Iterator[GatewayCluster]:
    path = folder / "manifold.yaml"
    path.write_text(yaml.safe_dump(config))
    env = subprocess_env({"MANIFOLD_API_TOKEN": TOKEN, "MANIFOLD_SESSION_SECRET": SECRET})
    starts = [running_process(replica_command(path, db), env=env) for _ in range(n)]
    with ExitStack() as stack:
        started = stack.enter_context(together(*starts))
        replicas = [Replica(base, proc) for proc, base in started]
        proxy = stack.enter_context(nginx_proxy([r.address for r in replicas]))
        yield GatewayCluster(db, replicas, proxy)
