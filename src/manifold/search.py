"""Lexical tool search over the catalogue: BM25 over names, descriptions and parameters.

Pure and offline: no service, no model. A tool's text is its exposed name split
into words, its server's name, its title and description, and its parameter
names and descriptions; the name and parameters weigh more than prose. Words
are folded to a crude stem and a query is widened with a few verb synonyms,
since people ask for "find" where a tool says "search".
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

_WORD = re.compile(r"[A-Za-z][a-z]+|[A-Z]+(?![a-z])|\d+")
_STOP = frozenset(
    "a an and are as at be by for from how i in into is it me my of on or please the this that to up use "
    "using what when which with you your can do does get some want need".split()
)
# Verbs people use for the same action; a query word brings its group along (at a lower weight).
_SYNONYMS: tuple[frozenset[str], ...] = tuple(
    frozenset(group.split())
    for group in (
        "find search look lookup query locate",
        "create make add new insert",
        "delete remove drop destroy erase",
        "update edit modify change set patch",
        "list show enumerate browse",
        "read get fetch retrieve open view load download show display",
        "content contents inside",
        "write save store put upload",
        "run execute call invoke start launch",
        "stop kill terminate cancel",
        "send post publish message notify",
        "file document doc",
        "directory folder dir",
        "issue ticket bug",
        "pr pull merge",
        "repo repository",
        "weather forecast rain snow temperature sunny wind tomorrow",
        "time clock date now",
        "sum add total",
    )
)
_K1 = 1.2
_B = 0.75


def stem(word: str) -> str:
    """A light suffix fold: enough to meet 'files'/'file', 'created'/'create', 'searching'/'search'."""
    word = word.lower()
    if len(word) <= 3:
        return word
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith(("sses", "xes", "ches", "shes", "zes")):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    return word.rstrip("e") if len(word) > 3 else word


def words(text: str) -> list[str]:
    return [stem(w) for w in _WORD.findall(text or "") if w.lower() not in _STOP]


_FILENAME = re.compile(r"\b[\w-]+\.[A-Za-z0-9]{1,5}\b")


def query_words(query: str) -> list[str]:
    """A query's words, plus 'file' when it names one (config.yaml, notes.txt)."""
    found = words(query)
    if _FILENAME.search(query):
        found.append(stem("file"))
    return found


def _expand(terms: Iterable[str]) -> dict[str, float]:
    """Query terms with weight 1, their synonyms with weight 0.5."""
    weights: dict[str, float] = {}
    for term in terms:
        weights[term] = 1.0
        for group in _SYNONYMS:
            stems = {stem(w) for w in group}
            if term in stems:
                for other in stems:
                    weights.setdefault(other, 0.5)
    return weights


def tool_text(tool: dict[str, Any], server: str) -> list[str]:
    """The words a tool is found by; name and parameter names count twice."""
    name_words = words(str(tool.get("name", "")).replace("__", " ").replace("_", " ").replace("-", " "))
    schema = tool.get("inputSchema") or {}
    props = schema.get("properties") if isinstance(schema, dict) else None
    param_words: list[str] = []
    if isinstance(props, dict):
        for key, prop in props.items():
            param_words += words(str(key).replace("_", " "))
            if isinstance(prop, dict):
                param_words += words(str(prop.get("description", "")))
    prose = words(str(tool.get("title") or "")) + words(str(tool.get("description") or ""))
    return name_words * 2 + words(server.replace("_", " ")) + prose + param_words


@dataclass(frozen=True, slots=True)
class Hit:
    name: str
    server: str
    score: float
    description: str


class ToolIndex:
    """BM25 over the catalogue's tools, rebuilt whenever the catalogue changes."""

    def __init__(self, tools: Sequence[dict[str, Any]], server_of: Callable[[str], str]) -> None:
        self._tools = list(tools)
        self._servers = [server_of(str(t.get("name", ""))) for t in self._tools]
        self._docs = [Counter(tool_text(t, s)) for t, s in zip(self._tools, self._servers, strict=True)]
        self._lengths = [sum(doc.values()) for doc in self._docs]
        self._avg = (sum(self._lengths) / len(self._lengths)) if self._lengths else 1.0
        self._postings: dict[str, list[int]] = {}
        for i, doc in enumerate(self._docs):
            for term in doc:
                self._postings.setdefault(term, []).append(i)
        n = len(self._docs)
        self._idf = {t: math.log(1 + (n - len(p) + 0.5) / (len(p) + 0.5)) for t, p in self._postings.items()}

    def __len__(self) -> int:
        return len(self._tools)

    def search(self, query: str, limit: int = 5) -> list[Hit]:
        scores: dict[int, float] = {}
        for term, weight in _expand(query_words(query)).items():
            idf = self._idf.get(term)
            if idf is None:
                continue
            for i in self._postings[term]:
                tf = self._docs[i][term]
                norm = tf * (_K1 + 1) / (tf + _K1 * (1 - _B + _B * self._lengths[i] / self._avg))
                scores[i] = scores.get(i, 0.0) + weight * idf * norm
        best = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:limit]
        return [
            Hit(
                name=str(self._tools[i].get("name")),
                server=self._servers[i],
                score=round(score, 4),
                description=_first_line(str(self._tools[i].get("description") or "")),
            )
            for i, score in best
        ]


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= 160 else line[:157] + "..."


def estimate_tokens(tools: Sequence[dict[str, Any]]) -> int:
    """Roughly what a tools/list costs in a model's context: ~4 characters a token."""
    import json

    return len(json.dumps(list(tools), separators=(",", ":"))) // 4
