"""Dump the tools/list of real MCP servers into bench/catalog/catalog.json (issue 9's fixture).

    .venv/bin/python bench/dump_catalog.py [--only NAME,...] [--out FILE] [--keep DIR]

Installs each server from its package registry (npm packages with `npm install --ignore-scripts`,
so nothing downloads a browser; PyPI packages into their own venv) in a temporary folder, starts it
over stdio with dummy credentials where it wants some, asks for tools/list and stops it. A server
that fails to install, start or list within its time is reported and skipped. The registries are
needed once: the committed JSON is what the quality bench reads, offline.

The fixture keeps, per server, the package and version it came from and its tools as listed
(name, title, description, inputSchema, annotations).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.text import TextReceiveStream

HERE = Path(__file__).resolve().parent
OUT = HERE / "catalog" / "catalog.json"
DUMMY = "dummy-credential-for-listing-only"


@dataclass(frozen=True)
class Server:
    name: str  # the server name in the catalogue (becomes the exposed prefix)
    package: str
    registry: str  # "npm" | "pypi"
    bin: str | None = None  # executable; default: the package's only bin / the PyPI name
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


SERVERS: tuple[Server, ...] = (
    # The MCP reference servers (current and archived).
    Server("everything", "@modelcontextprotocol/server-everything", "npm", args=("stdio",)),
    Server("filesystem", "@modelcontextprotocol/server-filesystem", "npm", args=("{tmp}",)),
    Server("memory", "@modelcontextprotocol/server-memory", "npm"),
    Server("sequential_thinking", "@modelcontextprotocol/server-sequential-thinking", "npm"),
    Server("github", "@modelcontextprotocol/server-github", "npm", env={"GITHUB_PERSONAL_ACCESS_TOKEN": DUMMY}),
    Server("gitlab", "@modelcontextprotocol/server-gitlab", "npm", env={"GITLAB_PERSONAL_ACCESS_TOKEN": DUMMY}),
    Server("slack", "@modelcontextprotocol/server-slack", "npm", env={"SLACK_BOT_TOKEN": DUMMY, "SLACK_TEAM_ID": "T0"}),
    Server("puppeteer", "@modelcontextprotocol/server-puppeteer", "npm"),
    Server("brave_search", "@modelcontextprotocol/server-brave-search", "npm", env={"BRAVE_API_KEY": DUMMY}),
    Server("postgres", "@modelcontextprotocol/server-postgres", "npm", args=("postgresql://127.0.0.1:1/none",)),
    Server("google_maps", "@modelcontextprotocol/server-google-maps", "npm", env={"GOOGLE_MAPS_API_KEY": DUMMY}),
    Server("redis", "@modelcontextprotocol/server-redis", "npm", args=("redis://127.0.0.1:1",)),
    Server("gdrive", "@modelcontextprotocol/server-gdrive", "npm"),
    Server("everart", "@modelcontextprotocol/server-everart", "npm", env={"EVERART_API_KEY": DUMMY}),
    Server(
        "aws_kb",
        "@modelcontextprotocol/server-aws-kb-retrieval",
        "npm",
        env={"AWS_ACCESS_KEY_ID": DUMMY, "AWS_SECRET_ACCESS_KEY": DUMMY, "AWS_REGION": "us-east-1"},
    ),
    Server("fetch", "mcp-server-fetch", "pypi"),
    Server("git", "mcp-server-git", "pypi"),
    Server("time", "mcp-server-time", "pypi"),
    Server("sqlite", "mcp-server-sqlite", "pypi", args=("--db-path", "{tmp}/test.db")),
    # Popular third-party servers.
    Server("playwright", "@playwright/mcp", "npm"),
    Server("notion", "@notionhq/notion-mcp-server", "npm", env={"NOTION_TOKEN": DUMMY}),
    Server("context7", "@upstash/context7-mcp", "npm"),
    Server("firecrawl", "firecrawl-mcp", "npm", env={"FIRECRAWL_API_KEY": DUMMY}),
    Server("supabase", "@supabase/mcp-server-supabase", "npm", args=("--access-token", DUMMY)),
    Server("kubernetes", "mcp-server-kubernetes", "npm"),
    Server("stripe", "@stripe/mcp", "npm", args=("--tools=all", "--api-key=sk_test_" + "0" * 24)),
    Server("sentry", "@sentry/mcp-server", "npm", args=("--access-token", DUMMY)),
    Server("tavily", "tavily-mcp", "npm", env={"TAVILY_API_KEY": DUMMY}),
    Server("exa", "exa-mcp-server", "npm", env={"EXA_API_KEY": DUMMY}),
    Server("hubspot", "@hubspot/mcp-server", "npm", env={"PRIVATE_APP_ACCESS_TOKEN": DUMMY}),
    Server("figma", "figma-developer-mcp", "npm", args=("--figma-api-key", DUMMY, "--stdio")),
    Server("chrome_devtools", "chrome-devtools-mcp", "npm"),
    Server("desktop_commander", "@wonderwhy-er/desktop-commander", "npm"),
    Server("mongodb", "mongodb-mcp-server", "npm"),
    Server("elasticsearch", "@elastic/mcp-server-elasticsearch", "npm", env={"ES_URL": "http://127.0.0.1:1"}),
    Server("airtable", "airtable-mcp-server", "npm", env={"AIRTABLE_API_KEY": DUMMY}),
    Server("mysql", "@benborla29/mcp-server-mysql", "npm", env={"MYSQL_HOST": "127.0.0.1", "MYSQL_PORT": "1"}),
    Server("perplexity", "@perplexity-ai/mcp-server", "npm", env={"PERPLEXITY_API_KEY": DUMMY}),
    Server("airbnb", "@openbnb/mcp-server-airbnb", "npm"),
    Server("youtube_transcript", "@kimtaeyoon83/mcp-server-youtube-transcript", "npm"),
    Server("heroku", "@heroku/mcp-server", "npm", env={"HEROKU_API_KEY": DUMMY}),
    Server("atlassian", "mcp-atlassian", "pypi", env={"JIRA_URL": "http://127.0.0.1:1", "CONFLUENCE_URL": "http://127.0.0.1:1", "JIRA_PERSONAL_TOKEN": DUMMY, "CONFLUENCE_PERSONAL_TOKEN": DUMMY}),
    Server("arxiv", "arxiv-mcp-server", "pypi"),
    Server("netlify", "@netlify/mcp", "npm"),
    Server("shopify_dev", "@shopify/dev-mcp", "npm"),
    Server("pinecone", "@pinecone-database/mcp", "npm", env={"PINECONE_API_KEY": DUMMY}),
    Server("neon", "@neondatabase/mcp-server-neon", "npm", args=("start", DUMMY)),
    Server("apify", "@apify/actors-mcp-server", "npm", env={"APIFY_TOKEN": DUMMY}),
    Server("browser_tools", "@agentdeskai/browser-tools-mcp", "npm"),
    Server("todoist", "@doist/todoist-mcp", "npm", env={"TODOIST_API_KEY": DUMMY}),
)


def _npm_install(server: Server, root: Path) -> list[str]:
    prefix = root / "npm" / server.name
    prefix.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PUPPETEER_SKIP_DOWNLOAD": "1", "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"}
    subprocess.run(
        ["npm", "install", "--prefix", str(prefix), "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error", server.package],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
        timeout=600,
    )
    meta = json.loads((prefix / "node_modules" / server.package / "package.json").read_text())
    bins = meta.get("bin")
    if isinstance(bins, str):
        script = bins
    elif server.bin is not None:
        script = bins[server.bin]
    else:
        script = next(iter(bins.values()))
    return ["node", str(prefix / "node_modules" / server.package / script), "__VERSION__" + meta["version"]]


def _pypi_install(server: Server, root: Path) -> list[str]:
    venv = root / "venv" / server.name
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", server.package],
        check=True,
        timeout=900,
    )
    version = subprocess.run(
        [str(venv / "bin" / "python"), "-c", f"import importlib.metadata as m; print(m.version({server.package!r}))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return [str(venv / "bin" / (server.bin or server.package)), "__VERSION__" + version]


async def _list(command: list[str], server: Server, tmp: Path) -> list[dict[str, Any]]:
    """initialize, then tools/list page by page, as plain JSON-RPC lines.

    Plain JSON rather than the SDK's typed client: some real servers list schemas the SDK's models
    reject (an inputSchema without "type"), and the fixture keeps what they say as they say it.
    """
    args = [a.replace("{tmp}", str(tmp)) for a in (*command[1:], *server.args)]
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp), **server.env}
    tools: list[dict[str, Any]] = []
    with open(os.devnull, "w") as errlog, anyio.fail_after(90):
        async with await anyio.open_process([command[0], *args], cwd=tmp, env=env, stderr=errlog) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            lines = TextReceiveStream(proc.stdout)
            buffer = ""

            async def request(ident: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
                nonlocal buffer
                message = {"jsonrpc": "2.0", "id": ident, "method": method, "params": params}
                await proc.stdin.send((json.dumps(message) + "\n").encode())
                while True:
                    while "\n" not in buffer:
                        buffer += await lines.receive()
                    line, buffer = buffer.split("\n", 1)
                    try:
                        reply = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a server that logs to stdout
                    if reply.get("id") == ident:
                        if "error" in reply:
                            raise RuntimeError(f"{method}: {reply['error']}")
                        return reply["result"]

            client = {"name": "manifold-dump", "version": "1"}
            await request(1, "initialize", {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": client})
            await proc.stdin.send(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
            cursor, ident = None, 2
            while True:
                page = await request(ident, "tools/list", {"cursor": cursor} if cursor else {})
                tools += page.get("tools", [])
                cursor, ident = page.get("nextCursor"), ident + 1
                if not cursor:
                    break
            proc.terminate()
    keep = ("name", "title", "description", "inputSchema", "annotations")
    return [{k: t[k] for k in keep if k in t} for t in tools]


def _dump(server: Server, root: Path) -> dict[str, Any] | None:
    """Install, start and list one server; None (and a line on stderr) when it fails."""
    tmp = root / "run" / server.name
    tmp.mkdir(parents=True)
    try:
        command = (_npm_install if server.registry == "npm" else _pypi_install)(server, root)
        version = command.pop().removeprefix("__VERSION__")
        tools = anyio.run(_list, command, server, tmp)
    except Exception as exc:  # noqa: BLE001 - one server's failure skips it, with the reason
        while isinstance(exc, BaseExceptionGroup):
            exc = exc.exceptions[0]
        print(f"SKIP {server.name} ({server.package}): {type(exc).__name__}: {exc}"[:300], file=sys.stderr)
        return None
    print(f"ok   {server.name:20} {len(tools):4} tools  {server.package}@{version}", file=sys.stderr)
    return {"package": server.package, "registry": server.registry, "version": version, "tools": tools}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="Comma-separated server names (default: all).")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--jobs", type=int, default=4, help="Servers installed and listed at once.")
    parser.add_argument("--merge", action="store_true", help="Keep servers already in --out that are not re-dumped.")
    args = parser.parse_args()
    wanted = set(args.only.split(",")) if args.only else None
    catalog: dict[str, Any] = {"servers": {}}
    if args.merge and args.out.exists():
        catalog = json.loads(args.out.read_text())
    chosen = [s for s in SERVERS if wanted is None or s.name in wanted]
    scratch = Path(tempfile.mkdtemp(prefix="manifold-dump-"))
    try:
        with ThreadPoolExecutor(args.jobs) as pool:
            for server, entry in zip(chosen, pool.map(lambda s: _dump(s, scratch), chosen), strict=True):
                if entry is not None:
                    catalog["servers"][server.name] = entry
        catalog["servers"] = {s.name: catalog["servers"][s.name] for s in SERVERS if s.name in catalog["servers"]}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(catalog, indent=1, sort_keys=False) + "\n")
        total = sum(len(s["tools"]) for s in catalog["servers"].values())
        print(f"{len(catalog['servers'])} servers, {total} tools -> {args.out}", file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # node_modules of every server: takes a while


if __name__ == "__main__":
    main()
