"""The command line against real upstreams, from a config and against a running gateway."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from support import PYTHON, running_process, subprocess_env
from test_gateway import fixture_stdio, write_config


def manifold(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "manifold", *args], capture_output=True,
        text=True,
        timeout=60,
        env=subprocess_env(),
        stdin=subprocess.DEVNULL,
        check=False,
    )


def two_servers(tmp_path: Path) -> Path:
    return write_config(tmp_path, {"alpha": fixture_stdio("alpha"), "beta": fixture_stdio("beta")})


def test_tools_from_a_config(tmp_path: Path) -> None:
    config = two_servers(tmp_path)
    listed = manifold("tools", "--config", str(config), "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["beta__whoami"]["server"] == "beta" and rows["alpha__echo"]["description"] == "Return the text unchanged."

    table = manifold("tools", "--config", str(config))
    assert "alpha__whoami" in table.stdout and "Return this server's name." in table.stdout

    found = manifold("tools", "--config", str(config), "--search", "what is this server called", "--limit", "2", "--json")
    assert json.loads(found.stdout)[0]["name"].endswith("__whoami")
    neither = manifold("tools")
    assert neither.returncode == 2 and "--config FILE or --url URL" in neither.stderr


def test_call_from_a_config(tmp_path: Path) -> None:
    config = two_servers(tmp_path)
    ok = manifold("call", "alpha__echo", '{"text": "hi there"}', "--config", str(config))
    assert ok.returncode == 0 and json.loads(ok.stdout)["content"][0]["text"] == "hi there"
    failed = manifold("call", "beta__fail", '{"message": "nope"}', "--config", str(config))
    assert failed.returncode == 1 and json.loads(failed.stdout)["isError"] is True
    unknown = manifold("call", "gamma__echo", "{}", "--config", str(config))
    assert unknown.returncode == 1 and "unknown tool 'gamma__echo'" in unknown.stderr
    bad = manifold("call", "alpha__echo", "[1]", "--config", str(config))
    assert bad.returncode == 2 and "arguments must be a JSON object" in bad.stderr


def test_cli_against_a_running_gateway(tmp_path: Path) -> None:
    config = two_servers(tmp_path)
    cmd = [PYTHON, "-m", "manifold", "serve", "--transport", "http", "--port", "0", "--config", str(config)]
    env = subprocess_env({"MANIFOLD_DB": f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"})
    with running_process(cmd, env=env) as (_, url):
        remote = manifold("tools", "--url", url, "--json")
        assert remote.returncode == 0, remote.stderr
        assert {r["name"]: r["server"] for r in json.loads(remote.stdout)}["alpha__whoami"] == "alpha"
        called = manifold("call", "beta__whoami", "{}", "--url", url)
        assert called.returncode == 0 and json.loads(called.stdout)["content"][0]["text"] == "beta"
        states = manifold("servers", "--url", url, "--json")
        assert {name: s["state"] for name, s in json.loads(states.stdout).items()} == {"alpha": "ready", "beta": "ready"}
        assert "ready" in manifold("servers", "--url", url).stdout
    gone = manifold("servers", "--url", url)
    assert gone.returncode == 1 and "cannot reach" in gone.stderr
