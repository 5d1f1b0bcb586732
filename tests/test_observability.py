"""Metrics and traces of calls through the gateway, read the way an operator's tools read them."""

from __future__ import annotations

import sys
from typing import Any

import anyio
import pytest
from mcp.client.session import ClientSession
from mcp.shared.memory import create_client_server_memory_streams
from prometheus_client.parser import text_string_to_metric_families
from support import FIXTURE

from manifold.config import parse_config
from manifold.faces.mcp import McpFace
from manifold.gateway import Gateway

pytestmark = pytest.mark.anyio


def fixture(name: str) -> dict[str, Any]:
    return {"mcp_server_type": "stdio", "command": sys.executable, "args": [FIXTURE, "--name", name]}


async def run_calls(gateway: Gateway, calls: list[tuple[str, dict[str, Any]]]) -> None:
    """Drive the real MCP face in-process over memory streams with the SDK client."""
    face = McpFace(gateway)
    gateway.metrics.watch(gateway, clients=lambda: len(face.tracker.connections))
    async with gateway.running(), create_client_server_memory_streams() as (client_streams, server_streams):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: face.server.run(*server_streams, face.initialization_options()))
            async with ClientSession(*client_streams) as session:
                await session.initialize()
                for name, args in calls:
                    await session.call_tool(name, args)
            tg.cancel_scope.cancel()


def samples(gateway: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = gateway.metrics.render().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_count_calls_by_server_tool_and_outcome() -> None:
    gateway = Gateway(parse_config({"mcp_servers": {"alpha": fixture("alpha"), "beta": fixture("beta")}}))
    await run_calls(
        gateway,
        [("alpha__echo", {"text": "a"})] * 3 + [("beta__fail", {"message": "no"})] + [("beta__whoami", {})],
    )
    got = samples(gateway)
    assert got[("manifold_tool_calls_total", (("outcome", "ok"), ("server", "alpha"), ("tool", "echo")))] == 3
    assert got[("manifold_tool_calls_total", (("outcome", "error"), ("server", "beta"), ("tool", "fail")))] == 1
    assert got[("manifold_tool_calls_total", (("outcome", "ok"), ("server", "beta"), ("tool", "whoami")))] == 1
    assert got[("manifold_tool_call_seconds_count", (("server", "alpha"), ("tool", "echo")))] == 3
    assert got[("manifold_upstream_state", (("server", "alpha"), ("state", "ready")))] == 1
    assert got[("manifold_upstream_state", (("server", "alpha"), ("state", "failed")))] == 0
    assert got[("manifold_catalog_tools", ())] >= 10
    # Label values are only server names, catalogue tool names, states and outcomes.
    labels = {value for (_, pairs) in got for _, value in pairs}
    assert not any("no" == value or "a" == value for value in labels)


async def test_a_call_is_one_trace_from_client_to_upstream() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    gateway = Gateway(parse_config({"mcp_servers": {"alpha": fixture("alpha")}}))
    await run_calls(gateway, [("alpha__echo", {"text": "traced"})])
    spans = exporter.get_finished_spans()
    server = [s for s in spans if s.kind == trace.SpanKind.SERVER and s.name == "tools/call alpha__echo"]
    upstream = [s for s in spans if s.kind == trace.SpanKind.CLIENT and s.name == "MCP send tools/call echo"]
    assert server and upstream, [s.name for s in spans]
    # The upstream call is a child of the client's call, in the same trace.
    assert upstream[0].context.trace_id == server[0].context.trace_id
    assert upstream[0].parent is not None and upstream[0].parent.span_id == server[0].context.span_id


def test_metrics_endpoint_of_the_http_gateway(tmp_path: Any) -> None:
    import httpx2
    import yaml
    from support import PYTHON, running_process, subprocess_env

    config = tmp_path / "m.yaml"
    config.write_text(yaml.safe_dump({"mcp_servers": {"alpha": fixture("alpha")}}))
    cmd = [PYTHON, "-m", "manifold", "serve", "--transport", "http", "--port", "0", "--config", str(config)]
    with running_process(cmd, env=subprocess_env({"MANIFOLD_DB": f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"})) as (_, url):
        response = httpx2.get(url + "/metrics")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        names = {family.name for family in text_string_to_metric_families(response.text)}
        assert {"manifold_upstream_state", "manifold_connected_clients", "manifold_catalog_tools"} <= names


def test_json_logs_on_stderr_with_the_server_bound(tmp_path: Any) -> None:
    import json
    import subprocess

    import yaml
    from support import PYTHON, subprocess_env

    config = tmp_path / "m.yaml"
    config.write_text(yaml.safe_dump({"mcp_servers": {"alpha": fixture("alpha")}}))
    proc = subprocess.Popen(
        [PYTHON, "-m", "manifold", "serve", "--config", str(config), "--log-format", "json", "--no-watch"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=subprocess_env({"MANIFOLD_DB": f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"}),
    )
    try:
        assert proc.stderr is not None and proc.stdin is not None
        ready = None
        for line in proc.stderr:
            event = json.loads(line)  # every line is one JSON object
            if event.get("event") == "upstream ready":
                ready = event
                break
        assert ready is not None and ready["server"] == "alpha" and ready["level"] == "info"
        proc.stdin.close()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
