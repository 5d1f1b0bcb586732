"""Throwaway PostgreSQL clusters and nginx instances for tests.

    with postgres_cluster() as pg:           # skips the test if PostgreSQL is not installed
        url = pg.create_database()           # postgresql+asyncpg://...@127.0.0.1:<port>/<db>

    with nginx_proxy(["127.0.0.1:8001", "127.0.0.1:8002"]) as base:   # http://127.0.0.1:<port>
        ...

Each cluster is `initdb` into a temporary folder and `pg_ctl start` on a free
loopback port (its unix socket in the same folder), with trust authentication;
each nginx runs in the foreground from a generated config on a free port. Both
are stopped and their folders removed on exit. As root, initdb refuses to run,
so the cluster is created and run as the `postgres` user (Debian's package
creates it) through `runuser`.

`.ci/run` installs the packages; on a machine without them the tests that need
them skip and say why.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import stop_process, wait_for

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pg_bin(name: str) -> str | None:
    for folder in PG_BIN_DIRS:
        if (folder / name).exists():
            return str(folder / name)
    return shutil.which(name)


def postgres_missing() -> str | None:
    """Why a throwaway cluster cannot be made here (None if it can)."""
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return "asyncpg is not installed (pip install -e '.[postgres]')"
    if pg_bin("initdb") is None or pg_bin("pg_ctl") is None:
        return "PostgreSQL is not installed (initdb/pg_ctl not found; .ci/run installs it)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: initdb refuses root"
    return None


def nginx_missing() -> str | None:
    if nginx_path() is None:
        return "nginx is not installed (.ci/run installs it)"
    return None


def nginx_path() -> str | None:
    for candidate in NGINX_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("nginx")


@dataclass
class Cluster:
    port: int
    folder: Path
    databases: list[str] = field(default_factory=list)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        cmd = [pg_bin("psql") or "psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
               "-d", database, "-At", "-v", "ON_ERROR_STOP=1", "-c", sql]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout

    def create_database(self) -> str:
        """A fresh, empty database; its SQLAlchemy URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.psql(f"CREATE DATABASE {name}")
        self.databases.append(name)
        return self.url(name)


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def postgres_cluster() -> Iterator[Cluster]:
    """A throwaway cluster on a loopback port; skips the calling test if PostgreSQL is missing."""
    reason = postgres_missing()
    if reason is not None:
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="manifold-pg-"))
    data = folder / "data"
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    initdb = _as_postgres([pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                           "--no-sync", "-E", "UTF8", "--locale=C"])
    subprocess.run(initdb, check=True, capture_output=True, timeout=120)
    port = free_port()
    options = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={folder} "
               "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
    pg_ctl = pg_bin("pg_ctl")
    log = folder / "postgres.log"
    start = _as_postgres([pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"])
    subprocess.run(start, check=True, capture_output=True, timeout=90)
    try:
        yield Cluster(port=port, folder=folder)
    finally:
        stop = _as_postgres([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "-t", "30", "stop"])
        subprocess.run(stop, check=False, capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format routed '$request_method $uri $status $upstream_addr';
    access_log {folder}/access.log routed;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    upstream manifold {{
{servers}
        keepalive 64;
        keepalive_timeout 4s;
    }}
    upstream manifold_sse {{
        ip_hash;
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
{locations}
    }}
}}
"""


def nginx_config(folder: Path, port: int, backends: Sequence[str]) -> str:
    """The test config: deploy/nginx.conf's locations, round-robin over `backends`."""
    deploy = Path(__file__).resolve().parent.parent / "deploy" / "nginx-locations.conf"
    servers = "\n".join(f"        server {b} max_fails=1 fail_timeout=2s;" for b in backends)
    locations = "\n".join("        " + line for line in deploy.read_text().splitlines())
    return NGINX_CONF.format(folder=folder, port=port, servers=servers, locations=locations)


@dataclass
class Proxy:
    base: str
    folder: Path

    def routed(self) -> list[tuple[str, str, str, str]]:
        """(method, path, status, upstream address) of every request nginx has passed on so far."""
        log = self.folder / "access.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return [tuple(line.split(" ", 3)) for line in lines if line.count(" ") >= 3]  # type: ignore[misc]


@contextmanager
def nginx_proxy(backends: Sequence[str]) -> Iterator[Proxy]:
    """nginx on a free loopback port, round-robin over `backends` (host:port)."""
    reason = nginx_missing()
    if reason is not None:
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="manifold-nginx-"))
    port = free_port()
    conf = folder / "nginx.conf"
    conf.write_text(nginx_config(folder, port, backends))
    nginx = nginx_path()
    assert nginx is not None
    check = subprocess.run(
        [nginx, "-t", "-q", "-p", str(folder), "-c", str(conf)], check=False, capture_output=True, text=True
    )
    if check.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"nginx rejected the generated config:\n{check.stderr}")
    proc = subprocess.Popen([nginx, "-p", str(folder), "-c", str(conf)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def listening() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return True
            except OSError:
                return False

        wait_for(listening, timeout=30, what="nginx to listen")
        yield Proxy(f"http://127.0.0.1:{port}", folder)
    finally:
        stop_process(proc)  # SIGTERM: the master stops its workers, then exits
        shutil.rmtree(folder, ignore_errors=True)
