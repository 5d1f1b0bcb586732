"""OpenTelemetry traces, on only when an OTLP endpoint is configured.

The MCP SDK already opens a SERVER span for each request a client sends and a
CLIENT span for each request sent upstream (with W3C context in `_meta`), so a
call through the gateway is one trace: client -> gateway -> upstream. All that
is needed here is a provider and an exporter; with neither, the spans are the
OpenTelemetry API's no-ops.
"""

from __future__ import annotations

import os

import structlog

log = structlog.get_logger("manifold.tracing")

enabled = False
"""True once an exporter is installed: the lean stdio path then steps aside so every call gets its spans."""


def setup_tracing(service_name: str = "manifold") -> bool:
    """Install an OTLP exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces one) is set."""
    if not (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.error("an OTLP endpoint is set but tracing is not installed: pip install 'mcp-manifold[otel]'")
        return False
    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    global enabled
    enabled = True
    log.info("tracing on", endpoint=os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    return True
