"""The `manifold` command."""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import click

from manifold import __version__
from manifold.config import ConfigError, GatewayConfig, load_config
from manifold.logging import setup_logging

DEFAULT_PORT = 8765


def _loop_options() -> dict[str, Any]:
    """uvloop when it is installed: the event loop is a quarter of a forwarded call's CPU time."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


def _load(config: str | None) -> GatewayConfig:
    if config is None:
        return GatewayConfig()
    try:
        return load_config(config)
    except ConfigError as exc:
        click.echo(f"manifold: invalid config {config}:", err=True)
        for problem in exc.problems:
            click.echo(f"  - {problem}", err=True)
        sys.exit(1)


def default_db_url() -> str:
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "manifold"
    return f"sqlite+aiosqlite:///{base / 'manifold.db'}"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="manifold")
def main() -> None:
    """Manifold: one MCP server in front of many."""


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML or JSON config file.")
@click.option("--transport", type=click.Choice(["stdio", "http"]), default="stdio", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True, help="0 picks a free port.")
@click.option("--db", envvar="MANIFOLD_DB", default=None, help="Store URL (SQLAlchemy); default a SQLite file.")
@click.option("--api-token-file", type=click.Path(dir_okay=False, exists=True), default=None)
@click.option("--log-level", default="info", show_default=True)
@click.option("--log-format", type=click.Choice(["console", "json"]), default="console", show_default=True)
@click.option("--watch/--no-watch", default=True, show_default=True, help="Reload the config when it changes (SIGHUP always does).")
def serve(
    config_path: str | None,
    transport: str,
    host: str,
    port: int,
    db: str | None,
    api_token_file: str | None,
    log_level: str,
    log_format: str,
    watch: bool,
) -> None:
    """Serve the merged catalogue over stdio (default) or HTTP."""
    setup_logging(log_level, log_format)
    config = _load(config_path)
    token = _api_token(api_token_file) if transport == "http" else None
    try:
        anyio.run(
            partial(_serve, config, transport=transport, watch=watch, db=db, host=host, port=port, token=token),
            backend_options=_loop_options(),
        )
    except KeyboardInterrupt:
        pass


async def _serve(
    config: GatewayConfig, *, transport: str, watch: bool, db: str | None, host: str, port: int, token: str | None
) -> None:
    from manifold.upstream.spawn import early_spawns

    # The configured servers start first, and the imports below (a second or more)
    # run while they come up; the gateway's connections then take them over.
    async with early_spawns(config.servers.values()):
        from manifold.gateway import Gateway
        from manifold.tracing import setup_tracing

        setup_tracing()
        gateway = Gateway(config, reload=config.path is not None, watch=watch)
        if transport == "stdio":  # the store is opened once the face has answered
            await _serve_stdio(gateway, partial(_registry, gateway, db))
        else:
            await _serve_http(gateway, host, port, _registry(gateway, db), _api_settings(token))


def _registry(gateway: Any, db: str | None) -> Any:
    """The store (`--db`/MANIFOLD_DB, default a SQLite file) and the registry over it."""
    from manifold.registry import Registry
    from manifold.store import Store

    return Registry(gateway, Store(db or default_db_url()))


def _api_token(api_token_file: str | None) -> str | None:
    """The API token: --api-token-file, else MANIFOLD_API_TOKEN; an empty file is refused."""
    token = os.environ.get("MANIFOLD_API_TOKEN") or None
    if api_token_file is not None:
        token = Path(api_token_file).read_text().strip() or None
        if token is None:
            click.echo(f"manifold: the token file {api_token_file} is empty", err=True)
            sys.exit(1)
    return token


def _api_settings(token: str | None) -> Any:
    """The REST API's settings; MANIFOLD_SHOW_SECRETS=1 unmasks secrets."""
    from manifold.faces.rest import ApiSettings

    show = os.environ.get("MANIFOLD_SHOW_SECRETS", "").lower() in ("1", "true", "yes")
    return ApiSettings(token=token, show_secrets=show)


FIRST_ANSWER_WAIT = 0.5  # s: at most this long the upstreams wait for the stdio face's first answer


async def _serve_stdio(gateway: Any, make_registry: Callable[[], Any] | None = None) -> None:
    from contextlib import AsyncExitStack

    from manifold.faces.mcp import McpFace
    from manifold.faces.stdio import serve_stdio

    face = McpFace(gateway)
    finished = anyio.Event()

    async def serve_face(read: Any, write: Any) -> None:
        try:
            await face.server.run(read, write, face.initialization_options())
        finally:
            finished.set()

    async def until_finished(stop: anyio.Event) -> None:
        await finished.wait()
        stop.set()

    # Hot tools/call frames take the lean path (faces/stdio.py); the rest the SDK's server.
    async with serve_stdio(face) as (read, write, stdio), anyio.create_task_group() as tg:
        tg.start_soon(face.run_notifier)
        # Until stdin ends or SIGINT/SIGTERM, watched from the first moment (the servers are
        # already starting). Start-up itself is not cut short (opening a store does not take
        # cancellation well); then what started is stopped in order, no hang.
        stop = anyio.Event()
        tg.start_soon(until_finished, stop)
        tg.start_soon(_stop_on_signal, stop)
        async with AsyncExitStack() as running:
            # The face first: `initialize` is answered before the store is opened and the
            # servers are taken over. Calls and lists meanwhile wait for the servers, as for
            # any server still starting; servers join the catalogue with list_changed.
            with gateway.adding_servers():
                tg.start_soon(serve_face, read, write)
                with anyio.move_on_after(FIRST_ANSWER_WAIT):  # a client that says nothing at first
                    await stdio.answered.wait()
                await running.enter_async_context(gateway.running())
                registry = make_registry() if make_registry is not None else None
                if registry is not None:
                    await running.enter_async_context(registry.running())
            _freeze_start_up()
            await stop.wait()
        tg.cancel_scope.cancel()


def _freeze_start_up() -> None:
    """Keep the start-up's objects (modules, models, schemas) out of every later garbage collection.

    Hundreds of thousands of them would otherwise be walked by each full collection: a pause
    of milliseconds in the middle of some unlucky tool call (the p99 in bench/bench.py).
    """
    import gc

    gc.collect()
    gc.freeze()


async def _stop_on_signal(stop: anyio.Event) -> None:
    """SIGINT or SIGTERM: serving stops, and every upstream is stopped on the way out."""
    import signal

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            stop.set()
            return


async def _serve_http(gateway: Any, host: str, port: int, registry: Any = None, api: Any = None) -> None:
    import uvicorn

    from manifold.faces.app import create_app

    app = create_app(gateway, host=host, registry=registry, api=api)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only then
    # (proto 0 leaves Nagle on: every keep-alive response waits ~40 ms for a delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    config = uvicorn.Config(app, log_config=None, lifespan="on", timeout_graceful_shutdown=5, ws="none")
    server = uvicorn.Server(config)
    server.config.setup_event_loop = lambda: None  # type: ignore[method-assign]

    async def announce() -> None:
        while not server.started:
            await anyio.sleep(0.01)
        # Tests and scripts read this line to learn the port chosen by --port 0.
        _freeze_start_up()
        print(f"LISTENING http://{shown}:{bound}", flush=True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(announce)
        await server.serve(sockets=[sock])
        tg.cancel_scope.cancel()


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def validate(config_path: str, as_json: bool) -> None:
    """Check a config file; list every problem and exit 1 if there are any."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        if as_json:
            click.echo(json.dumps({"valid": False, "problems": exc.problems}))
        else:
            click.echo(f"{config_path}: {len(exc.problems)} problem(s)", err=True)
            for problem in exc.problems:
                click.echo(f"  - {problem}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps({"valid": True, "servers": list(config.servers)}))
    else:
        click.echo(f"{config_path}: valid, {len(config.servers)} server(s): {', '.join(config.servers) or '-'}")


async def _with_gateway(config: GatewayConfig, work: Any) -> Any:
    from manifold.gateway import Gateway

    gateway = Gateway(config)
    async with gateway.running():
        names = ", ".join(config.servers) or "no servers"
        with _console(err=True).status(f"connecting {len(config.servers)} server(s): {names}"):
            await gateway.wait_settled()
        return await work(gateway)


def _console(err: bool = False) -> Any:
    import shutil

    from rich.console import Console

    # A pipe gets full lines (rich would wrap at 80), a terminal its own width.
    return Console(stderr=err, highlight=False, width=shutil.get_terminal_size((200, 24)).columns)


def _source(config_path: str | None, url: str | None) -> None:
    if (config_path is None) == (url is None):
        click.echo("manifold: give exactly one of --config FILE or --url URL", err=True)
        sys.exit(2)


def _table(columns: list[str], rows: list[list[str]]) -> None:
    from rich.table import Table

    table = Table(*columns, box=None, pad_edge=False, header_style="bold")
    for row in rows:
        table.add_row(*row)
    _console().print(table)


def _first_line(text: str, width: int = 90) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[: width - 3] + "..."


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Start the config's servers here.")
@click.option("--url", help="Ask a running gateway instead, e.g. http://127.0.0.1:8765.")
@click.option("--search", "query", help="Rank the tools for a plain-words query instead of listing all.")
@click.option("--limit", type=int, default=10, show_default=True, help="With --search: how many results.")
@click.option(
    "--ranker",
    type=click.Choice(["lexical", "semantic", "hybrid"]),
    help="With --search and --config: the ranker (default: the config's search_ranker); "
    "semantic and hybrid need the `semantic` extra. A running gateway ranks with its own.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--log-level", default="warning", show_default=True)
def tools(
    config_path: str | None,
    url: str | None,
    query: str | None,
    limit: int,
    ranker: str | None,
    as_json: bool,
    log_level: str,
) -> None:
    """Print the merged catalogue: exposed name, server, description."""
    setup_logging(log_level)
    _source(config_path, url)
    if ranker is not None and (url is not None or query is None):
        click.echo("manifold: --ranker goes with --search and --config (a running gateway ranks with its own)", err=True)
        sys.exit(2)
    if query is not None and not 1 <= limit <= 50:
        click.echo("manifold: --limit must be between 1 and 50", err=True)
        sys.exit(2)
    if url is not None and query is not None:
        from manifold import remote

        try:  # the gateway ranks its own catalogue (lazy servers included, not started)
            rows = anyio.run(remote.search_tools, url, query, limit)
        except remote.RemoteError as exc:
            click.echo(f"manifold: search failed: {exc}", err=True)
            sys.exit(1)
        except Exception as exc:  # noqa: BLE001 - any failure to reach it is the answer
            click.echo(f"manifold: cannot reach {url}: {exc}", err=True)
            sys.exit(1)
    elif url is not None:
        from manifold import remote

        rows = anyio.run(remote.list_tools, url)
    else:
        config = _load(config_path)
        if query is not None:
            from manifold.search import ranker_available

            ranker = ranker or config.gateway.search_ranker
            problem = ranker_available(ranker)
            if problem is not None:
                click.echo(f"manifold: {problem}", err=True)
                sys.exit(2)

        async def work(gateway: Any) -> list[dict[str, Any]]:
            catalog = gateway.catalog
            if query is None:
                return [
                    {
                        "name": t["name"],
                        "server": catalog.server_of_tool(t["name"]),
                        "description": t.get("description") or "",
                    }
                    for t in catalog.tools
                ]
            hits = gateway.search_index(ranker).search(query, limit)
            return [{"name": h.name, "server": h.server, "description": h.description, "score": h.score} for h in hits]

        rows = anyio.run(_with_gateway, config, work)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    _table(["NAME", "SERVER", "DESCRIPTION"], [[r["name"], r["server"], _first_line(r["description"])] for r in rows])


@main.command()
@click.option("--url", required=True, help="The running gateway, e.g. http://127.0.0.1:8765.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def servers(url: str, as_json: bool) -> None:
    """Each server's state, tool count, restarts and last error, from a running gateway."""
    from manifold import remote

    try:
        health = anyio.run(remote.health, url)
    except Exception as exc:  # noqa: BLE001 - any failure to reach it is the answer
        click.echo(f"manifold: cannot reach {url}: {exc}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(health["servers"], indent=2))
        return
    _table(
        ["SERVER", "STATE", "TRANSPORT", "TOOLS", "RESTARTS", "LAST ERROR"],
        [
            [name, s["state"], s["transport"], str(s["tools"]), str(s["restarts"]), _first_line(s["last_error"] or "", 60)]
            for name, s in health["servers"].items()
        ],
    )


@main.command()
@click.argument("name")
@click.argument("arguments", default="{}")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Start the config's servers here.")
@click.option("--url", help="Call through a running gateway instead, e.g. http://127.0.0.1:8765.")
@click.option("--log-level", default="warning", show_default=True)
def call(name: str, arguments: str, config_path: str | None, url: str | None, log_level: str) -> None:
    """Call one tool by its exposed name with JSON arguments; exit 1 on an error result."""
    setup_logging(log_level)
    _source(config_path, url)
    try:
        args = json.loads(arguments)
        if not isinstance(args, dict):
            raise ValueError("arguments must be a JSON object")
    except ValueError as exc:
        click.echo(f"manifold: bad arguments: {exc}", err=True)
        sys.exit(2)

    from mcp.shared.exceptions import MCPError

    try:
        if url is not None:
            from manifold import remote

            result = anyio.run(remote.call_tool, url, name, args)
        else:

            async def work(gateway: Any) -> dict[str, Any]:
                return await gateway.call_tool(name, args)

            result = anyio.run(_with_gateway, _load(config_path), work)
    except MCPError as exc:
        click.echo(f"manifold: {exc.message}", err=True)
        sys.exit(1)
    click.echo(json.dumps(result, indent=2))
    if result.get("isError"):
        sys.exit(1)


@main.group()
def db() -> None:
    """The store's schema: which revision it is at, and upgrading it ahead of a rolling deploy."""


_DB_URL = click.option(
    "--db",
    "url",
    envvar="MANIFOLD_DB",
    default=None,
    help="Store URL (SQLAlchemy); default the SQLite file `serve` uses.",
)


def _on_store(url: str | None, action: str) -> tuple[Any, Any]:
    """(the store at `url`, what its `action` coroutine returned); its error and exit 1 if it fails."""
    from manifold.store import Store, StoreError

    setup_logging("warning")
    store = Store(url or default_db_url())
    try:
        return store, anyio.run(getattr(store, action))
    except StoreError as exc:
        click.echo(f"manifold: {exc}", err=True)
        sys.exit(1)


@db.command("upgrade")
@_DB_URL
def db_upgrade(url: str | None) -> None:
    """Migrate the store to this version's schema.

    What `serve` does on start, for operators who migrate before a rolling deploy. Exit 1 if it cannot.
    """
    store, (before, head) = _on_store(url, "upgrade")
    if before == head:
        click.echo(f"{store.shown_url}: at revision {head} (head), nothing to do")
    else:
        click.echo(f"{store.shown_url}: upgraded from revision {before or '(empty)'} to {head} (head)")


@db.command("current")
@_DB_URL
def db_current(url: str | None) -> None:
    """Show the store's schema revision.

    Changes nothing. Exit 1 if the store is newer than this Manifold knows.
    """
    from manifold import migrations

    store, (current, head) = _on_store(url, "revision")
    if current == head:
        click.echo(f"{store.shown_url}: at revision {head} (head)")
    elif current is None:
        click.echo(f"{store.shown_url}: no schema yet; head is {head}")
    elif migrations.known(current):
        behind = f"at revision {current}, behind head {head}: `manifold db upgrade` migrates it"
        click.echo(f"{store.shown_url}: {behind}")
    else:
        click.echo(f"{store.shown_url}: at revision {current}, newer than this Manifold knows (head {head})")
        sys.exit(1)
