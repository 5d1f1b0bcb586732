"""Config: both file shapes, ${VAR} expansion, and one clear message per problem."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from manifold.config import (
    ConfigError,
    SseServerConfig,
    StdioServerConfig,
    StreamableHttpServerConfig,
    load_config,
    parse_config,
)


def problems(data: object, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, environ=environ or {})
    return info.value.problems


def test_letta_fields_and_defaults() -> None:
    config = parse_config(
        {
            "mcp_servers": {
                "time": {"mcp_server_type": "stdio", "command": "python", "args": ["-m", "x y"], "env": {"TZ": "UTC"}},
                "search": {
                    "mcp_server_type": "streamable_http",
                    "server_url": "https://example.com/mcp",
                    "auth_header": "X-Api-Key",
                    "auth_token": "k-123",
                    "custom_headers": {"X-Team": "blue"},
                    "timeout": 5,
                },
            }
        },
        environ={},
    )
    time, search = config.servers["time"], config.servers["search"]
    assert isinstance(time, StdioServerConfig)
    assert time.args == ["-m", "x y"]  # never split on spaces
    assert (time.prefix, time.timeout, time.connect_timeout, time.enabled) == (True, 60, 15, True)
    assert isinstance(search, StreamableHttpServerConfig)
    # The header name is kept and the token survives next to custom headers (unlike Letta).
    assert search.headers() == {"X-Team": "blue", "X-Api-Key": "k-123"}
    assert search.timeout == 5
    assert list(config.servers) == ["time", "search"]


def test_client_style_mcpservers_map() -> None:
    config = parse_config(
        {
            "mcpServers": {
                "fs": {"command": "npx", "args": ["-y", "server-fs", "/tmp"], "env": {"A": "b"}},
                "remote": {"url": "https://example.com/mcp", "headers": {"Authorization": "Bearer t"}},
                "legacy": {"type": "sse", "url": "https://example.com/sse"},
                "vscode": {"type": "http", "url": "https://example.com/mcp", "prefix": False},
                "off": {"command": "x", "disabled": True},
            }
        },
        environ={},
    )
    s = config.servers
    assert isinstance(s["fs"], StdioServerConfig) and s["fs"].args == ["-y", "server-fs", "/tmp"]
    assert isinstance(s["remote"], StreamableHttpServerConfig)
    assert s["remote"].headers() == {"Authorization": "Bearer t"}
    assert isinstance(s["legacy"], SseServerConfig)
    assert isinstance(s["vscode"], StreamableHttpServerConfig) and s["vscode"].prefix is False
    assert s["off"].enabled is False


def test_variable_expansion() -> None:
    config = parse_config(
        {
            "mcp_servers": {
                "a": {
                    "mcp_server_type": "sse",
                    "server_url": "http://${HOST:-127.0.0.1}:${PORT}/sse",
                    "auth_token": "Bearer ${TOKEN}",
                }
            }
        },
        environ={"PORT": "9000", "TOKEN": "s3cret"},
    )
    server = config.servers["a"]
    assert server.server_url == "http://127.0.0.1:9000/sse"
    assert server.headers() == {"Authorization": "Bearer s3cret"}
    assert "s3cret" in server.secrets()


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"mcp_server_type": "websocket", "command": "x"}, "server 'bad': field 'mcp_server_type': unknown type 'websocket'"),
        ({"command": "x"}, "server 'bad': field 'mcp_server_type': required"),
        ({"mcp_server_type": "stdio"}, "server 'bad': field 'command': required"),
        ({"mcp_server_type": "stdio", "command": "x", "cmd": "y"}, "server 'bad': field 'cmd': unknown key"),
        ({"mcp_server_type": "sse", "server_url": "ftp://host/x"}, "server 'bad': field 'server_url': must be an http"),
        ({"mcp_server_type": "sse", "server_url": "not a url"}, "server 'bad': field 'server_url': must be an http"),
        ({"mcp_server_type": "stdio", "command": "x", "timeout": -1}, "server 'bad': field 'timeout':"),
        ({"mcp_server_type": "stdio", "command": "${NOPE}"}, "server 'bad': environment variable 'NOPE' is not set"),
        ("just a string", "server 'bad': expected a mapping"),
    ],
)
def test_each_bad_entry_names_server_and_field(entry: object, expected: str) -> None:
    found = problems({"mcp_servers": {"bad": entry}})
    assert any(p.startswith(expected) for p in found), found


def test_every_problem_is_listed_at_once() -> None:
    found = problems(
        {
            "gateway": {"separator": "::"},
            "extra": 1,
            "mcp_servers": {"a": {"mcp_server_type": "stdio"}, "b": {"mcp_server_type": "nope"}},
            "mcpServers": {"a": {"command": "dup"}},
        }
    )
    text = "\n".join(found)
    assert "config: unknown top-level key 'extra'" in text
    assert "gateway: field 'separator'" in text
    assert "server 'a': field 'command': required" in text
    assert "server 'b': field 'mcp_server_type': unknown type 'nope'" in text
    assert "server 'a': defined more than once" in text


def test_load_yaml_and_json_files(tmp_path: Path) -> None:
    data = {"mcp_servers": {"x": {"mcp_server_type": "stdio", "command": "echo"}}}
    (tmp_path / "c.json").write_text(json.dumps(data))
    (tmp_path / "c.yaml").write_text("mcp_servers:\n  x:\n    mcp_server_type: stdio\n    command: echo\n")
    assert list(load_config(tmp_path / "c.json").servers) == ["x"]
    assert list(load_config(tmp_path / "c.yaml").servers) == ["x"]
    (tmp_path / "broken.yaml").write_text("mcp_servers: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_example_config_is_valid() -> None:
    config = load_config(Path(__file__).parent.parent / "config.example.yaml")
    assert config.servers


def test_validate_and_serve_stop_on_a_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("mcp_servers:\n  x:\n    mcp_server_type: stdio\n  y:\n    mcp_server_type: sse\n    server_url: nope\n")
    for argv in (["validate", "--config", str(bad)], ["serve", "--config", str(bad)]):
        proc = subprocess.run(
            [sys.executable, "-m", "manifold", *argv], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
        )
        assert proc.returncode == 1
        assert "server 'x': field 'command': required" in proc.stderr
        assert "server 'y': field 'server_url'" in proc.stderr
        assert proc.stdout == ""
    proc = subprocess.run(
        [sys.executable, "-m", "manifold", "validate", "--json", "--config", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 1 and json.loads(proc.stdout)["valid"] is False


def test_tool_shaping_keys_are_validated() -> None:
    found = problems({"mcp_servers": {"a": {"mcp_server_type": "stdio", "command": "x", "tools": {"allow": "echo", "hide": []}}}})
    text = "\n".join(found)
    assert "server 'a': field 'tools.allow'" in text
    assert "server 'a': field 'tools.hide': unknown key" in text
