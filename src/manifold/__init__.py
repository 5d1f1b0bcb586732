"""Manifold: one MCP server in front of many."""

import sys

__version__ = "0.1.0"


def _structlog_without_rich() -> None:
    """Import structlog with `rich` out of its sight.

    structlog's dev module imports rich (and pygments under it) for pretty
    tracebacks when it can: 15 MB of a long-running server's memory, for
    tracebacks that end up in log files. The CLI's tables still import rich
    when a command draws one.
    """
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # import rich -> ImportError
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]


_structlog_without_rich()
