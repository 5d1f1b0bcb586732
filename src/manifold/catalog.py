"""The merged catalogue: exposed names and reverse routes, computed from the upstreams' lists.

Pure on purpose (no I/O, stdlib only): every naming rule is a function of the listings alone, so
it can be tested exhaustively and a name never changes between runs unless an upstream changes it.

Tools and prompts are renamed to ``<server><separator><name>`` (see :func:`exposed_name`) and made
unique. Resources and resource templates keep their URI unless two servers list the same one; then
every copy is exposed under an alias in the ``manifold://`` scheme:

- a resource URI ``u`` of server ``s``: ``manifold://<quote(s)>/<quote(u)>`` (quoted whole, so no
  URL normaliser on the way can alter it);
- a template ``t`` of server ``s``: ``manifold://<quote(s)>/<t>`` (``t`` verbatim, so the client can
  still expand its ``{...}`` expressions; the expansion then routes back unchanged).

:meth:`Catalog.route_resource` accepts ``manifold://<quote(s)>/<rest>`` for every server: ``rest``
is percent-decoded when it is in the canonical quoted form, and taken verbatim otherwise.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import quote, unquote_to_bytes

__all__ = ["ALIAS_SCHEME", "NAME_RE", "Catalog", "Route", "ServerListing", "exposed_name"]

NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
ALIAS_SCHEME = "manifold://"

_MAX_LEN = 64
_HASH_LEN = 8
_INVALID_CHARS = re.compile(r"[^a-zA-Z0-9_-]")
_SEPARATOR_RE = re.compile(r"[a-zA-Z0-9_-]+")
_EXPRESSION = re.compile(r"\{([^{}]*)\}")

Item = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ServerListing:
    """What one upstream lists, as received on the wire."""

    server: str
    prefix: bool = True
    tools: Sequence[Item] = ()
    prompts: Sequence[Item] = ()
    resources: Sequence[Item] = ()
    resource_templates: Sequence[Item] = ()


@dataclass(frozen=True, slots=True)
class Route:
    """Where an exposed item lives: the owning server and the upstream's own name or URI."""

    server: str
    name: str


def exposed_name(server: str, name: str, *, separator: str = "__", prefix: bool = True) -> str:
    """The exposed name of one tool or prompt before clashes with other items are resolved."""
    _check_separator(separator)
    return _base_name(server, name, separator, prefix)


def _check_separator(separator: str) -> None:
    if not _SEPARATOR_RE.fullmatch(separator):
        raise ValueError(f"invalid name separator {separator!r}: use one or more of [a-zA-Z0-9_-]")


def _digest(server: str, name: str) -> str:
    """A stable hash of an item's identity; surrogatepass because JSON can carry lone surrogates."""
    data = f"{server}\x00{name}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()


def _raw_name(server: str, name: str, separator: str, prefix: bool) -> str:
    return f"{server}{separator}{name}" if prefix else name


def _base_name(server: str, name: str, separator: str, prefix: bool) -> str:
    base = _INVALID_CHARS.sub("_", _raw_name(server, name, separator, prefix)) or "_"
    if len(base) > _MAX_LEN:
        base = _hashed(base, _digest(server, name), _HASH_LEN)
    return base


def _hashed(base: str, digest: str, hash_len: int) -> str:
    return f"{base[: _MAX_LEN - 1 - hash_len]}_{digest[:hash_len]}"


def _server_host(server: str) -> str:
    return quote(server, safe="", errors="surrogatepass")


def _quoted_alias(server: str, uri: str) -> str:
    return f"{ALIAS_SCHEME}{_server_host(server)}/{quote(uri, safe='', errors='surrogatepass')}"


def _verbatim_alias(server: str, uri: str) -> str:
    return f"{ALIAS_SCHEME}{_server_host(server)}/{uri}"


def _alias_target(rest: str) -> str:
    """Decode the part of an alias after the host, telling a quoted URI from a verbatim one.

    Only the canonical quoted form is decoded: a real URI has a scheme, and ``:`` is never left
    bare by quoting, so a verbatim URI (an expanded template) is never mistaken for a quoted one.
    """
    try:
        decoded = unquote_to_bytes(rest).decode("utf-8", "surrogatepass")
    except UnicodeError:
        return rest
    return decoded if quote(decoded, safe="", errors="surrogatepass") == rest else rest


@dataclass(frozen=True, slots=True)
class _Entry:
    server: str
    key: str  # the upstream's name or URI
    item: Item


def _entries(
    listings: Sequence[ServerListing], kind: str, attr: str, key: str, warnings: list[str]
) -> Iterator[tuple[ServerListing, _Entry]]:
    """Yield (listing, entry) with usable keys, keeping only the first of a server's duplicates."""
    for listing in listings:
        seen: set[str] = set()
        for item in getattr(listing, attr):
            value = item.get(key)
            if not isinstance(value, str):
                warnings.append(f"{kind} of server {listing.server!r} has no string {key!r}; dropped")
            elif value in seen:
                warnings.append(
                    f"{kind} {value!r} is listed more than once by server {listing.server!r}; "
                    "the first is kept, the others dropped"
                )
            else:
                seen.add(value)
                yield listing, _Entry(listing.server, value, item)


class _Candidate(NamedTuple):
    entry: _Entry
    base: str
    pristine: bool  # the base is the raw name: nothing replaced, nothing shortened


@dataclass(frozen=True, slots=True)
class _Names:
    """One name space (tools or prompts): exposed items and the maps both ways."""

    items: list[Item]
    routes: dict[str, Route]
    exposed: dict[tuple[str, str], str]

    @classmethod
    def build(
        cls, listings: Sequence[ServerListing], kind: str, attr: str, separator: str, warnings: list[str]
    ) -> _Names:
        candidates: list[_Candidate] = []
        for listing, entry in _entries(listings, kind, attr, "name", warnings):
            base = _base_name(entry.server, entry.key, separator, listing.prefix)
            raw = _raw_name(entry.server, entry.key, separator, listing.prefix)
            candidates.append(_Candidate(entry, base, base == raw))

        groups: dict[str, list[_Candidate]] = {}
        for candidate in candidates:
            groups.setdefault(candidate.base, []).append(candidate)
        # min() keeps the first of equals and candidates are in (server, upstream) order: the tie-break.
        winners = {base: min(group, key=lambda c: not c.pristine).entry for base, group in groups.items()}
        taken = set(groups)

        items: list[Item] = []
        routes: dict[str, Route] = {}
        exposed: dict[tuple[str, str], str] = {}
        for entry, base, _ in candidates:
            name = base
            winner = winners[base]
            if winner is not entry:
                name = _unused_hashed(base, _digest(entry.server, entry.key), taken)
                taken.add(name)
                warnings.append(
                    f"{kind} {entry.key!r} of server {entry.server!r} is exposed as {name!r}: "
                    f"{base!r} belongs to {kind} {winner.key!r} of server {winner.server!r}"
                )
            items.append({**entry.item, "name": name})
            routes[name] = Route(entry.server, entry.key)
            exposed[(entry.server, entry.key)] = name
        return cls(items, routes, exposed)


def _unused_hashed(base: str, digest: str, taken: set[str]) -> str:
    """The shortest hash suffix not already taken; longer suffixes only defeat crafted collisions."""
    for hash_len in range(_HASH_LEN, _MAX_LEN - 3, 4):
        name = _hashed(base, digest, hash_len)
        if name not in taken:
            return name
    raise RuntimeError(f"no free exposed name for {base!r}: sha256 prefixes collide")


@dataclass(frozen=True, slots=True)
class _Uris:
    """Resources or templates: exposed items, routes of the exposed URIs, and shared URIs."""

    items: list[Item]
    routes: dict[str, Route]
    exposed: dict[tuple[str, str], str]
    shared: dict[str, list[Route]]

    @classmethod
    def build(
        cls,
        listings: Sequence[ServerListing],
        kind: str,
        attr: str,
        key: str,
        alias: Callable[[str, str], str],
        warnings: list[str],
    ) -> _Uris:
        entries = [entry for _, entry in _entries(listings, kind, attr, key, warnings)]
        owners: dict[str, list[Route]] = {}
        for entry in entries:
            owners.setdefault(entry.key, []).append(Route(entry.server, entry.key))
        shared = {uri: routes for uri, routes in owners.items() if len(routes) > 1}

        # An upstream URI that is itself another item's alias must not keep it: alias it too,
        # until no original URI equals any alias (each round aliases more, so this ends).
        aliased = set(shared)
        while True:
            aliases = {alias(e.server, e.key) for e in entries if e.key in aliased}
            hidden = {e.key for e in entries if e.key not in aliased and e.key in aliases}
            if not hidden:
                break
            aliased |= hidden

        items: list[Item] = []
        routes: dict[str, Route] = {}
        exposed: dict[tuple[str, str], str] = {}
        for entry in entries:
            uri = entry.key
            if uri in aliased:
                uri = alias(entry.server, entry.key)
                others = [r.server for r in owners[entry.key] if r.server != entry.server]
                reason = (
                    f"also listed by {', '.join(map(repr, others))}"
                    if others
                    else "its URI is another item's alias"
                )
                warnings.append(
                    f"{kind} {entry.key!r} of server {entry.server!r} is exposed as {uri!r}: {reason}"
                )
            items.append({**entry.item, key: uri})
            routes[uri] = Route(entry.server, entry.key)
            exposed[(entry.server, entry.key)] = uri
        return cls(items, routes, exposed, shared)


@dataclass(frozen=True, slots=True)
class _Template:
    """One upstream template compiled for matching concrete URIs."""

    pattern: re.Pattern[str]
    literal_prefix: int
    aliased: bool


# Each RFC 6570 operator as what its expansion can look like. Matching is deliberately loose:
# it only picks the server, and the upstream validates the URI itself.
_OPERATOR_PATTERNS = {
    "": r"[^/?#]+",  # {var}: one non-empty segment
    "+": r".+",  # {+var}: reserved expansion, may span segments
    "#": r"(?:#.*)?",
    ".": r"(?:\.[^/?#]*)*",
    "/": r"(?:/[^/?#]*)*",
    ";": r"(?:;[^/?#]*)*",
    "?": r"(?:\?[^#]*)?",
    "&": r"(?:&[^#]*)*",
}


def _compile_template(template: str, aliased: bool) -> _Template:
    """Turn a URI template into a regex; the ``{...}`` expressions match by operator only."""
    parts: list[str] = []
    position = 0
    literal_prefix: int | None = None
    for match in _EXPRESSION.finditer(template):
        parts.append(re.escape(template[position : match.start()]))
        if literal_prefix is None:
            literal_prefix = match.start()
        expression = match.group(1)
        parts.append(_OPERATOR_PATTERNS.get(expression[:1], _OPERATOR_PATTERNS[""]))
        position = match.end()
    parts.append(re.escape(template[position:]))
    prefix = len(template) if literal_prefix is None else literal_prefix
    return _Template(re.compile("".join(parts), re.DOTALL), prefix, aliased)


@dataclass(frozen=True, slots=True)
class Catalog:
    """The exposed catalogue and its reverse routes. Build it with :meth:`Catalog.build`.

    Exposed items are new dicts with every upstream key kept; nested values are shared with the
    input, so treat both as read-only.
    """

    tools: list[Item]
    prompts: list[Item]
    resources: list[Item]
    resource_templates: list[Item]
    clashes: list[str]
    _tools: _Names = field(repr=False)
    _prompts: _Names = field(repr=False)
    _resources: _Uris = field(repr=False)
    _templates: dict[str, list[_Template]] = field(repr=False)
    _hosts: dict[str, str] = field(repr=False)

    @classmethod
    def build(cls, listings: Iterable[ServerListing], separator: str = "__") -> Catalog:
        """Merge the listings; their order does not matter, server names must be unique."""
        _check_separator(separator)
        ordered = sorted(listings, key=lambda listing: listing.server)
        servers = [listing.server for listing in ordered]
        if len(set(servers)) != len(servers):
            raise ValueError(f"duplicate server names in {servers!r}")

        warnings: list[str] = []
        tools = _Names.build(ordered, "tool", "tools", separator, warnings)
        prompts = _Names.build(ordered, "prompt", "prompts", separator, warnings)
        resources = _Uris.build(ordered, "resource", "resources", "uri", _quoted_alias, warnings)
        templates = _Uris.build(
            ordered, "resource template", "resource_templates", "uriTemplate", _verbatim_alias, warnings
        )
        compiled: dict[str, list[_Template]] = {server: [] for server in servers}
        for (server, template), exposed in templates.exposed.items():
            compiled[server].append(_compile_template(template, aliased=exposed != template))
        return cls(
            tools=tools.items,
            prompts=prompts.items,
            resources=resources.items,
            resource_templates=templates.items,
            clashes=warnings,
            _tools=tools,
            _prompts=prompts,
            _resources=resources,
            _templates=compiled,
            _hosts={_server_host(server): server for server in servers},
        )

    def route_tool(self, exposed_name: str) -> Route | None:
        return self._tools.routes.get(exposed_name)

    def server_of_tool(self, exposed_name: str) -> str:
        """The server behind an exposed tool name ("" for none): what search results name."""
        route = self._tools.routes.get(exposed_name)
        return route.server if route else ""

    def route_prompt(self, exposed_name: str) -> Route | None:
        return self._prompts.routes.get(exposed_name)

    def exposed_tool_name(self, server: str, upstream_name: str) -> str | None:
        return self._tools.exposed.get((server, upstream_name))

    def exposed_prompt_name(self, server: str, upstream_name: str) -> str | None:
        return self._prompts.exposed.get((server, upstream_name))

    def route_resource(self, uri: str) -> Route | None:
        """The one server to read ``uri`` from, or None when no server or several could serve it."""
        candidates = self.resource_candidates(uri)
        return candidates[0] if len(candidates) == 1 else None

    def resource_candidates(self, uri: str) -> list[Route]:
        """Every equally good route for ``uri``, so an ambiguity can be reported by server name.

        In order: a listed (or aliased) URI; a URI that several servers list; a ``manifold://``
        alias of a known server; else the servers whose templates match, keeping only those whose
        matching template has the longest literal text before its first expression.
        """
        route = self._resources.routes.get(uri)
        if route is not None:
            return [route]
        if uri in self._resources.shared:
            return list(self._resources.shared[uri])
        route = self._alias_route(uri)
        if route is not None:
            return [route]
        scores = {
            server: max((t.literal_prefix for t in templates if t.pattern.fullmatch(uri)), default=-1)
            for server, templates in self._templates.items()
        }
        best = max(scores.values(), default=-1)
        return [Route(server, uri) for server, score in scores.items() if score == best >= 0]

    def exposed_uri(self, server: str, upstream_uri: str) -> str:
        """The URI a client knows for ``upstream_uri`` of ``server``, one that routes back there.

        An unlisted URI stays as it is when it already routes to ``server``; one that fits an
        aliased template gets the template's verbatim alias (what the client got by expanding
        it); anything else gets the quoted alias. (The one exception: an upstream that lists that
        very alias as a URI of its own keeps it, as a listed URI always does.)
        """
        listed = self._resources.exposed.get((server, upstream_uri))
        if listed is not None:
            return listed
        route = Route(server, upstream_uri)
        if self.resource_candidates(upstream_uri) == [route]:
            return upstream_uri
        verbatim = _verbatim_alias(server, upstream_uri)
        fits_alias = any(
            t.aliased and t.pattern.fullmatch(upstream_uri) for t in self._templates.get(server, ())
        )
        if fits_alias and self.resource_candidates(verbatim) == [route]:
            return verbatim
        return _quoted_alias(server, upstream_uri)

    def _alias_route(self, uri: str) -> Route | None:
        if not uri.startswith(ALIAS_SCHEME):
            return None
        host, slash, rest = uri[len(ALIAS_SCHEME) :].partition("/")
        server = self._hosts.get(host)
        if server is None or not slash:
            return None
        return Route(server, _alias_target(rest))
