"""Who asked: tie an upstream's requests back to the client call that caused them.

A client's request runs with `CURRENT_CALLER` set. Each upstream remembers the
callers of its requests in flight, so when the upstream turns around and asks
for sampling, elicitation or roots, the question goes to the client whose call
is waiting on it. On streamable HTTP the SDK carries the caller's context onto
the upstream's reply stream, so even concurrent callers are told apart there.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

CURRENT_CALLER: ContextVar[Any] = ContextVar("manifold_current_caller", default=None)
