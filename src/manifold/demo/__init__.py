"""Manifold's bundled demo MCP server (`python -m manifold.demo`)."""

from manifold.demo.server import build_server, main

__all__ = ["build_server", "main"]
