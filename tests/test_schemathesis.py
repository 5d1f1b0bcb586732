"""Schemathesis over `/openapi.json`: no 5xx, every response as documented.

The gateway under test refuses stdio registration (`gateway.allow_stdio_api: false`), so
fuzzed bodies can never start a command on this machine; it has no token, so the API
serves loopback clients only, which is also checked here.
"""

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from support import PYTHON, running_process, subprocess_env

SCHEMATHESIS = str(Path(PYTHON).with_name("schemathesis"))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("fuzz")
    config = tmp / "manifold.yaml"
    config.write_text(yaml.safe_dump({"gateway": {"allow_stdio_api": False}, "mcp_servers": {}}))
    cmd = [
        PYTHON,
        "-m",
        "manifold",
        "serve",
        "--transport",
        "http",
        "--port",
        "0",
        "--config",
        str(config),
        "--no-watch",
    ]
    env = subprocess_env({"MANIFOLD_DB": f"sqlite+aiosqlite:///{tmp / 'fuzz.db'}"})
    env.pop("MANIFOLD_API_TOKEN", None)
    with running_process(cmd, env=env) as (_, base):
        yield base


def test_openapi_and_docs_describe_the_api(gateway: str) -> None:
    with httpx.Client(base_url=gateway) as http:
        schema = http.get("/openapi.json").json()
        assert http.get("/docs").status_code == 200
    paths = schema["paths"]
    assert set(paths["/v1/mcp-servers/"]) == {"get", "post"}
    assert set(paths["/v1/mcp-servers/{mcp_server_id}"]) == {"get", "patch", "delete"}
    assert set(paths["/v1/mcp-servers/{mcp_server_id}/refresh"]) == {"patch"}
    assert set(paths["/v1/mcp-servers/{mcp_server_id}/tools"]) == {"get"}
    assert set(paths["/v1/mcp-servers/{mcp_server_id}/tools/{tool_id}"]) == {"get"}
    assert set(paths["/v1/mcp-servers/{mcp_server_id}/tools/{tool_id}/run"]) == {"post"}
    operations = {op["operationId"] for ops in paths.values() for op in ops.values()}
    assert {
        "mcp_create_mcp_server",
        "mcp_list_mcp_servers",
        "mcp_run_tool",
        "mcp_refresh_mcp_server_tools",
    } <= operations


def test_stdio_registration_can_be_switched_off(gateway: str) -> None:
    body = {
        "server_name": "cmd",
        "config": {"mcp_server_type": "stdio", "command": "touch", "args": ["/tmp/pwned"]},
    }
    with httpx.Client(base_url=gateway) as http:
        response = http.post("/v1/mcp-servers/", json=body)
        assert response.status_code == 403 and "allow_stdio_api" in response.json()["detail"]
        assert "cmd" not in {s["server_name"] for s in http.get("/v1/mcp-servers/").json()}


def test_without_a_token_only_loopback_hosts_are_served(gateway: str) -> None:
    with httpx.Client(base_url=gateway) as http:
        assert http.get("/v1/mcp-servers/").status_code == 200
        # A DNS-rebinding page reaches 127.0.0.1 under its own host name: refused.
        rebound = http.get("/v1/mcp-servers/", headers={"Host": "evil.example:80"})
        assert rebound.status_code == 403 and "MANIFOLD_API_TOKEN" in rebound.json()["detail"]


def test_schemathesis_finds_no_server_error_and_no_schema_violation(gateway: str, tmp_path: Path) -> None:
    cmd = [
        SCHEMATHESIS,
        "run",
        f"{gateway}/openapi.json",
        "--checks",
        "all",
        "--exclude-checks",
        # No token on this gateway, so auth is (rightly) not required from loopback.
        "ignored_auth,positive_data_acceptance,allow_header_conformance",
        "--max-examples",
        "25",
        "--seed",
        "20261122",
        "--workers",
        "1",  # hypothesis' lambda introspection is not thread-safe on CPython 3.11
        "--request-timeout",
        "20",
        "--no-color",
        "--suppress-health-check",
        "all",
    ]
    env = dict(os.environ, NO_COLOR="1")
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
