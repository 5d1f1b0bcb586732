"""Prometheus metrics: calls, errors and latency per server and tool; upstream state.

Labels are bounded: server names, catalogue tool names, MCP method names and
a fixed set of outcomes. Never arguments, URIs, ids or error texts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from manifold.gateway import Gateway

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
STATES = ("connecting", "ready", "idle", "backing_off", "failed", "disabled", "stopped")


class _GatewayCollector(Collector):
    """Reads state at scrape time, so nothing is kept in step on the hot path."""

    def __init__(self, gateway: Gateway, clients: Callable[[], int]) -> None:
        self.gateway = gateway
        self.clients = clients

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily("manifold_upstream_state", "1 for the state each server is in.", labels=["server", "state"])
        restarts = GaugeMetricFamily("manifold_upstream_restarts", "Times each server was (re)started after a failure.", labels=["server"])
        tools = GaugeMetricFamily("manifold_upstream_tools", "Tools each server offers.", labels=["server"])
        for name, upstream in list(self.gateway.upstreams.items()):
            for value in STATES:
                state.add_metric([name, value], 1.0 if upstream.state.value == value else 0.0)
            restarts.add_metric([name], float(upstream.restarts))
            tools.add_metric([name], float(len(upstream.listing.tools) if upstream.listing else 0))
        yield state
        yield restarts
        yield tools
        yield GaugeMetricFamily("manifold_catalog_tools", "Tools in the merged catalogue.", value=len(self.gateway.catalog.tools))
        yield GaugeMetricFamily("manifold_connected_clients", "MCP client sessions connected now.", value=self.clients())


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.calls = Counter(
            "manifold_tool_calls",
            "Tool calls through the gateway, by outcome (ok, error result, failed).",
            ["server", "tool", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "manifold_tool_call_seconds",
            "Time from a tool call's arrival to its answer, per server and tool.",
            ["server", "tool"],
            buckets=_BUCKETS,
            registry=self.registry,
        )

        self.lean_calls = Counter(
            "manifold_lean_tool_calls",
            "Tool calls that took the lean forwarding path (no SDK session on either side), by face.",
            ["face"],
            registry=self.registry,
        )
        self.lean_lists = Counter(
            "manifold_lean_tool_lists",
            "tools/list requests answered with a cached, encoded page (no SDK session), by face.",
            ["face"],
            registry=self.registry,
        )

    def watch(self, gateway: Gateway, clients: Callable[[], int] = lambda: 0) -> None:
        self.registry.register(_GatewayCollector(gateway, clients))

    def observe_call(self, server: str, tool: str, seconds: float, outcome: str) -> None:
        self.calls.labels(server, tool, outcome).inc()
        self.latency.labels(server, tool).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
