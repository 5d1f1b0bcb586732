"""The `manifold` command."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import anyio
import click

from manifold import __version__
from manifold.config import ConfigError, GatewayConfig, load_config
from manifold.logging import setup_logging

DEFAULT_PORT = 8765


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
def serve(
    config_path: str | None,
    transport: str,
    host: str,
    port: int,
    db: str | None,
    api_token_file: str | None,
    log_level: str,
    log_format: str,
) -> None:
    """Serve the merged catalogue over stdio (default) or HTTP."""
    setup_logging(log_level, log_format)
    config = _load(config_path)
    from manifold.gateway import Gateway

    gateway = Gateway(config)
    try:
        if transport == "stdio":
            anyio.run(_serve_stdio, gateway)
        else:
            anyio.run(_serve_http, gateway, host, port)
    except KeyboardInterrupt:
        pass


async def _serve_stdio(gateway: Any) -> None:
    from mcp.server.stdio import stdio_server

    from manifold.faces.mcp import McpFace

    face = McpFace(gateway)
    async with gateway.running(), anyio.create_task_group() as tg:
        tg.start_soon(face.run_notifier)
        async with stdio_server() as (read, write):
            await face.server.run(read, write, face.initialization_options())
        tg.cancel_scope.cancel()


async def _serve_http(gateway: Any, host: str, port: int) -> None:
    import uvicorn

    from manifold.faces.app import create_app

    app = create_app(gateway, host=host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
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
        await gateway.wait_settled()
        return await work(gateway)


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--log-level", default="warning", show_default=True)
def tools(config_path: str, as_json: bool, log_level: str) -> None:
    """Print the merged catalogue: exposed name, server, description."""
    setup_logging(log_level)
    config = _load(config_path)

    async def work(gateway: Any) -> list[dict[str, Any]]:
        rows = []
        for tool in gateway.catalog.tools:
            route = gateway.catalog.route_tool(tool["name"])
            rows.append({"name": tool["name"], "server": route.server, "description": tool.get("description") or ""})
        return rows

    rows = anyio.run(_with_gateway, config, work)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max([len(r["name"]) for r in rows] + [4])
    swidth = max([len(r["server"]) for r in rows] + [6])
    click.echo(f"{'NAME':<{width}}  {'SERVER':<{swidth}}  DESCRIPTION")
    for r in rows:
        first_line = r["description"].strip().splitlines()[0] if r["description"].strip() else ""
        click.echo(f"{r['name']:<{width}}  {r['server']:<{swidth}}  {first_line[:80]}")


@main.command()
@click.argument("name")
@click.argument("arguments", default="{}")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--log-level", default="warning", show_default=True)
def call(name: str, arguments: str, config_path: str, log_level: str) -> None:
    """Call one tool by its exposed name with JSON arguments; exit 1 on an error result."""
    setup_logging(log_level)
    try:
        args = json.loads(arguments)
        if not isinstance(args, dict):
            raise ValueError("arguments must be a JSON object")
    except ValueError as exc:
        click.echo(f"manifold: bad arguments: {exc}", err=True)
        sys.exit(2)
    config = _load(config_path)

    async def work(gateway: Any) -> dict[str, Any]:
        return await gateway.call_tool(name, args)

    from mcp.shared.exceptions import MCPError

    try:
        result = anyio.run(_with_gateway, config, work)
    except MCPError as exc:
        click.echo(f"manifold: {exc.message}", err=True)
        sys.exit(1)
    click.echo(json.dumps(result, indent=2))
    if result.get("isError"):
        sys.exit(1)
