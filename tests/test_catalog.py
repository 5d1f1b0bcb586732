"""The catalogue's naming, clash and routing rules, example by example and as properties."""

from __future__ import annotations

import copy
import hashlib
import random
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manifold.catalog import NAME_RE, Catalog, Route, ServerListing, exposed_name

FAST = settings(max_examples=120, deadline=None)


def sha(server: str, name: str, n: int = 8) -> str:
    return hashlib.sha256(f"{server}\x00{name}".encode()).hexdigest()[:n]


def tool(name: str, **extra: object) -> dict[str, Any]:
    return {"name": name, "inputSchema": {"type": "object"}, **extra}


def names(items: list[dict[str, Any]]) -> list[str]:
    return [item["name"] for item in items]


def build(*listings: ServerListing, separator: str = "__") -> Catalog:
    return Catalog.build(listings, separator=separator)


# --- exposed_name: prefixing, separators, sanitizing, length -------------------------------------


def test_prefix_uses_server_and_default_separator() -> None:
    assert exposed_name("time", "now") == "time__now"


def test_prefix_false_exposes_the_bare_name() -> None:
    assert exposed_name("time", "now", prefix=False) == "now"


@pytest.mark.parametrize("separator", ["_", "-", "x", "--", "_via_", "9"])
def test_custom_separator(separator: str) -> None:
    assert exposed_name("time", "now", separator=separator) == f"time{separator}now"
    catalog = build(ServerListing("time", tools=[tool("now")]), separator=separator)
    assert names(catalog.tools) == [f"time{separator}now"]


@pytest.mark.parametrize("separator", ["", ".", " ", "::", "/", "é", "a.b"])
def test_invalid_separator_is_refused(separator: str) -> None:
    with pytest.raises(ValueError, match="separator"):
        Catalog.build([], separator=separator)
    with pytest.raises(ValueError, match="separator"):
        exposed_name("s", "t", separator=separator)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.b", "a_b"),
        ("a b", "a_b"),
        ("a/b", "a_b"),
        ("a:b", "a_b"),
        ("café", "caf_"),
        ("日本", "__"),
        ("a🙂b", "a_b"),
        ("a\tb\n", "a_b_"),
        ("keep-Dash_and_9", "keep-Dash_and_9"),
    ],
)
def test_every_invalid_char_becomes_underscore(name: str, expected: str) -> None:
    assert exposed_name("s", name, prefix=False) == expected
    assert exposed_name(name, "t") == f"{expected}__t"


def test_empty_names_never_give_an_empty_exposed_name() -> None:
    assert exposed_name("s", "", prefix=False) == "_"
    assert exposed_name("s", "") == "s__"
    assert exposed_name("", "t") == "__t"
    assert names(build(ServerListing("s", prefix=False, tools=[tool("")])).tools) == ["_"]


@pytest.mark.parametrize("length", [63, 64])
def test_names_up_to_64_chars_are_kept(length: int) -> None:
    assert exposed_name("s", "a" * length, prefix=False) == "a" * length
    assert exposed_name("s", "a" * (length - 3)) == "s__" + "a" * (length - 3)


def test_names_over_64_chars_are_shortened_with_a_hash_of_the_original() -> None:
    name = "a" * 65
    assert exposed_name("s", name, prefix=False) == "a" * 55 + "_" + sha("s", name)
    assert len(exposed_name("s", "b" * 500)) == 64
    assert exposed_name("s", "a" * 62) == "s__" + "a" * 52 + "_" + sha("s", "a" * 62)


def test_hash_is_stable_across_runs() -> None:
    # Hard-coded once: a change here renames every long tool for every user.
    assert exposed_name("srv", "x" * 70) == "srv__" + "x" * 50 + "_fe6c03e8"


def test_hash_is_of_the_unsanitized_strings() -> None:
    a = exposed_name("s", "é" * 70, prefix=False)
    b = exposed_name("s", "è" * 70, prefix=False)
    assert a[:55] == b[:55] == "_" * 55
    assert a != b
    assert exposed_name("s1", "x" * 70, prefix=False) != exposed_name("s2", "x" * 70, prefix=False)


def test_lone_surrogates_from_json_do_not_crash() -> None:
    catalog = build(ServerListing("s", tools=[tool("\ud800" * 70)]))
    assert NAME_RE.match(catalog.tools[0]["name"])


# --- clashes -------------------------------------------------------------------------------------


def test_same_tool_on_two_unprefixed_servers() -> None:
    catalog = build(
        ServerListing("b", prefix=False, tools=[tool("search")]),
        ServerListing("a", prefix=False, tools=[tool("search")]),
    )
    assert names(catalog.tools) == ["search", "search_" + sha("b", "search")]
    assert catalog.route_tool("search") == Route("a", "search")
    assert catalog.route_tool("search_" + sha("b", "search")) == Route("b", "search")
    assert len(catalog.clashes) == 1
    assert "'search'" in catalog.clashes[0] and "'a'" in catalog.clashes[0] and "'b'" in catalog.clashes[0]


def test_sanitize_induced_clash_leaves_the_exact_name_to_its_owner() -> None:
    catalog = build(ServerListing("s", tools=[tool("a.b"), tool("a_b")]))
    assert names(catalog.tools) == ["s__a_b_" + sha("s", "a.b"), "s__a_b"]
    assert catalog.route_tool("s__a_b") == Route("s", "a_b")
    assert len(catalog.clashes) == 1 and "'a.b'" in catalog.clashes[0]


def test_exact_name_beats_server_order() -> None:
    catalog = build(
        ServerListing("a", prefix=False, tools=[tool("x.y")]),
        ServerListing("b", prefix=False, tools=[tool("x_y")]),
    )
    assert catalog.route_tool("x_y") == Route("b", "x_y")
    assert catalog.exposed_tool_name("a", "x.y") == "x_y_" + sha("a", "x.y")


def test_without_an_exact_name_server_then_upstream_order_decides() -> None:
    catalog = build(
        ServerListing("b", prefix=False, tools=[tool("x.y")]),
        ServerListing("a", prefix=False, tools=[tool("x y"), tool("x/y")]),
    )
    assert catalog.route_tool("x_y") == Route("a", "x y")
    assert catalog.exposed_tool_name("a", "x/y") == "x_y_" + sha("a", "x/y")
    assert catalog.exposed_tool_name("b", "x.y") == "x_y_" + sha("b", "x.y")
    assert len(catalog.clashes) == 2


def test_clash_with_a_shortened_name_extends_the_hash() -> None:
    long = "y" * 70
    shortened = exposed_name("a_long", long, prefix=False)
    catalog = build(
        ServerListing("a_long", prefix=False, tools=[tool(long)]),
        ServerListing("z_literal", prefix=False, tools=[tool(shortened)]),
    )
    # The 8-hex form is the shortened name itself, already taken: 12 hex it is.
    renamed = "y" * 51 + "_" + sha("a_long", long, 12)
    assert catalog.route_tool(shortened) == Route("z_literal", shortened)
    assert catalog.route_tool(renamed) == Route("a_long", long)
    assert len(renamed) == 64 and len(catalog.clashes) == 1


def test_renamed_item_never_takes_another_items_exact_name() -> None:
    hashed = "x_" + sha("a", "x")
    catalog = build(
        ServerListing("a", prefix=False, tools=[tool("x")]),
        ServerListing("b", prefix=False, tools=[tool("x"), tool(hashed)]),
        ServerListing("c", prefix=False, tools=[tool("x")]),
    )
    assert catalog.route_tool("x") == Route("a", "x")
    assert catalog.route_tool(hashed) == Route("b", hashed)
    assert len(set(names(catalog.tools))) == 4


def test_duplicates_within_one_server_keep_the_first() -> None:
    catalog = build(
        ServerListing("s", tools=[tool("t", description="first"), tool("u"), tool("t", description="second")])
    )
    assert names(catalog.tools) == ["s__t", "s__u"]
    assert catalog.tools[0]["description"] == "first"
    assert len(catalog.clashes) == 1 and "'t'" in catalog.clashes[0] and "'s'" in catalog.clashes[0]


def test_items_without_a_string_name_are_dropped_with_a_warning() -> None:
    catalog = build(ServerListing("s", tools=[{"description": "no name"}, {"name": 3}, tool("ok")]))
    assert names(catalog.tools) == ["s__ok"]
    assert len(catalog.clashes) == 2


def test_duplicate_server_names_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        build(ServerListing("s"), ServerListing("s"))


# --- catalogue shape, routes and passthrough -----------------------------------------------------


def test_order_is_by_server_then_upstream_and_independent_of_listing_order() -> None:
    listings = [
        ServerListing("zeta", tools=[tool("b"), tool("a")]),
        ServerListing("alpha", tools=[tool("z"), tool("y")]),
        ServerListing("mid", prefix=False, tools=[tool("m")]),
    ]
    forward = Catalog.build(listings)
    backward = Catalog.build(reversed(listings))
    assert names(forward.tools) == ["alpha__z", "alpha__y", "m", "zeta__b", "zeta__a"]
    assert forward == backward


def test_routes_round_trip_for_every_item() -> None:
    catalog = build(
        ServerListing("a.b", tools=[tool("x"), tool("y.z"), tool("w" * 80)], prompts=[{"name": "p"}]),
        ServerListing("c", prefix=False, tools=[tool("x"), tool("a.b__x")]),
    )
    for item in catalog.tools:
        route = catalog.route_tool(item["name"])
        assert route is not None
        assert catalog.exposed_tool_name(route.server, route.name) == item["name"]
    assert catalog.route_prompt("a_b__p") == Route("a.b", "p")
    assert catalog.exposed_prompt_name("a.b", "p") == "a_b__p"


def test_unknown_names_do_not_route() -> None:
    catalog = build(ServerListing("s", tools=[tool("t")]))
    assert catalog.route_tool("s__nope") is None
    assert catalog.route_tool("t") is None
    assert catalog.route_prompt("s__t") is None
    assert catalog.exposed_tool_name("s", "nope") is None
    assert catalog.exposed_tool_name("other", "t") is None
    assert catalog.exposed_prompt_name("s", "t") is None


def test_prompts_are_a_name_space_of_their_own() -> None:
    catalog = build(
        ServerListing("s", tools=[tool("x")], prompts=[{"name": "x", "arguments": []}]),
        ServerListing("t", prefix=False, prompts=[{"name": "s__x"}]),
    )
    assert names(catalog.tools) == ["s__x"]
    assert names(catalog.prompts) == ["s__x", "s__x_" + sha("t", "s__x")]
    assert catalog.route_prompt("s__x") == Route("s", "x")
    assert catalog.route_tool("s__x") == Route("s", "x")
    assert len(catalog.clashes) == 1 and catalog.clashes[0].startswith("prompt")


def test_every_other_key_passes_through_and_inputs_are_not_mutated() -> None:
    original = {
        "name": "get.weather",
        "title": "Weather",
        "description": "Forecast",
        "inputSchema": {"type": "object", "properties": {"city": {"type": "string"}}},
        "outputSchema": {"type": "object"},
        "annotations": {"readOnlyHint": True},
        "_meta": {"x": [1, 2]},
        "icons": [{"src": "data:,"}],
        "x-unknown": None,
    }
    prompt = {"name": "p", "arguments": [{"name": "a", "required": True}]}
    resource = {"uri": "file:///x", "name": "x", "mimeType": "text/plain"}
    template = {"uriTemplate": "file:///{p}", "name": "t"}
    listings = [
        ServerListing(
            "s", tools=[original], prompts=[prompt], resources=[resource], resource_templates=[template]
        ),
        ServerListing("t", resources=[dict(resource)], resource_templates=[dict(template)]),
    ]
    snapshot = copy.deepcopy(listings)
    catalog = Catalog.build(listings)
    assert listings == snapshot
    exposed = catalog.tools[0]
    assert exposed is not original
    assert exposed == {**original, "name": "s__get_weather"}
    assert list(exposed) == list(original)
    assert catalog.prompts[0] == {**prompt, "name": "s__p"}
    assert catalog.resources[0] == {**resource, "uri": "manifold://s/file%3A%2F%2F%2Fx"}
    assert catalog.resource_templates[0] == {**template, "uriTemplate": "manifold://s/file:///{p}"}
    given = {id(item) for item in [original, prompt, resource, template]}
    exposed_ids = {
        id(i) for i in [*catalog.tools, *catalog.prompts, *catalog.resources, *catalog.resource_templates]
    }
    assert not given & exposed_ids


def test_empty_catalog() -> None:
    catalog = Catalog.build([])
    assert catalog.tools == catalog.prompts == catalog.resources == catalog.resource_templates == []
    assert catalog.route_resource("file:///x") is None
    assert catalog.resource_candidates("file:///x") == []


# --- resources -----------------------------------------------------------------------------------


def res(uri: str, **extra: object) -> dict[str, Any]:
    return {"uri": uri, "name": uri, **extra}


def test_unique_resource_uris_are_kept_and_route() -> None:
    catalog = build(
        ServerListing("a", prefix=False, resources=[res("file:///a")]),
        ServerListing("b", resources=[res("file:///b")]),
    )
    assert [r["uri"] for r in catalog.resources] == ["file:///a", "file:///b"]
    assert catalog.route_resource("file:///a") == Route("a", "file:///a")
    assert catalog.route_resource("file:///b") == Route("b", "file:///b")
    assert catalog.route_resource("file:///c") is None
    assert catalog.clashes == []


def test_shared_resource_uri_is_aliased_on_every_server() -> None:
    uri = "file:///shared?x=1#f"
    catalog = build(
        ServerListing("b", resources=[res(uri)]),
        ServerListing("a", resources=[res(uri), res("file:///own")]),
    )
    alias_a = "manifold://a/" + quote(uri, safe="")
    alias_b = "manifold://b/" + quote(uri, safe="")
    assert [r["uri"] for r in catalog.resources] == [alias_a, "file:///own", alias_b]
    assert alias_a == "manifold://a/file%3A%2F%2F%2Fshared%3Fx%3D1%23f"
    assert catalog.route_resource(alias_a) == Route("a", uri)
    assert catalog.route_resource(alias_b) == Route("b", uri)
    assert catalog.route_resource(uri) is None
    assert catalog.resource_candidates(uri) == [Route("a", uri), Route("b", uri)]
    assert catalog.exposed_uri("a", uri) == alias_a
    assert len(catalog.clashes) == 2 and all(repr(uri) in line for line in catalog.clashes)


def test_alias_is_accepted_for_any_server_and_any_uri() -> None:
    catalog = build(ServerListing("a", resources=[res("file:///x")]), ServerListing("b"))
    assert catalog.route_resource("manifold://a/file%3A%2F%2F%2Fx") == Route("a", "file:///x")
    assert catalog.route_resource("manifold://b/file%3A%2F%2F%2Fx") == Route("b", "file:///x")
    assert catalog.route_resource("manifold://a/mem%3A%2F%2Fnot-listed") == Route("a", "mem://not-listed")
    assert catalog.route_resource("manifold://a/file:///verbatim%20x") == Route("a", "file:///verbatim%20x")
    assert catalog.route_resource("manifold://a/a%252F") == Route("a", "a%2F")
    assert catalog.route_resource("manifold://a/%FF") == Route("a", "%FF")
    assert catalog.route_resource("manifold://nobody/file%3A%2F%2F%2Fx") is None
    assert catalog.route_resource("manifold://a") is None


def test_server_names_are_quoted_in_the_alias_host() -> None:
    server = "My Server/é"
    catalog = build(
        ServerListing(server, resources=[res("file:///x")]), ServerListing("b", resources=[res("file:///x")])
    )
    alias = catalog.resources[0]["uri"]
    assert alias == "manifold://My%20Server%2F%C3%A9/file%3A%2F%2F%2Fx"
    assert catalog.route_resource(alias) == Route(server, "file:///x")


def test_prefix_false_does_not_change_resources() -> None:
    resources, templates = [res("file:///x")], [tpl("file:///{p}")]
    unprefixed = build(ServerListing("s", prefix=False, resources=resources, resource_templates=templates))
    assert unprefixed == build(ServerListing("s", resources=resources, resource_templates=templates))


def test_duplicate_uris_within_one_server_keep_the_first() -> None:
    catalog = build(ServerListing("s", resources=[res("file:///x", size=1), res("file:///x", size=2)]))
    assert catalog.resources == [res("file:///x", size=1)]
    assert len(catalog.clashes) == 1


def test_an_upstream_uri_that_is_another_items_alias_is_aliased_too() -> None:
    alias_of_a = "manifold://a/file%3A%2F%2F%2Fx"
    catalog = build(
        ServerListing("a", resources=[res("file:///x")]),
        ServerListing("b", resources=[res(alias_of_a)]),
        ServerListing("c", resources=[res("file:///x")]),
    )
    uris = [r["uri"] for r in catalog.resources]
    assert len(set(uris)) == 3
    assert catalog.route_resource(alias_of_a) == Route("a", "file:///x")
    assert catalog.route_resource(uris[1]) == Route("b", alias_of_a)
    assert len(catalog.clashes) == 3


# --- resource templates --------------------------------------------------------------------------


def tpl(template: str) -> dict[str, Any]:
    return {"uriTemplate": template, "name": template}


@pytest.mark.parametrize(
    ("template", "uri", "matches"),
    [
        ("file:///{path}", "file:///a", True),
        ("file:///{path}", "file:///a%20b", True),
        ("file:///{path}", "file:///a/b", False),
        ("file:///{path}", "file:///", False),
        ("file:///{+path}", "file:///a/b?c", True),
        ("file:///{+path}", "file:///", False),
        ("db://{schema}/{table}", "db://s/t", True),
        ("db://{schema}/{table}", "db://s", False),
        ("db://{a,b}", "db://x,y", True),
        ("db://{var*}", "db://x", True),
        ("db://{var:3}", "db://abc", True),
        ("db://x{/segments}", "db://x/a/b", True),
        ("db://x{/segments}", "db://x", True),
        ("db://x{.ext}", "db://x.tar.gz", True),
        ("db://x{;p}", "db://x;p=1", True),
        ("db://x{?q,page}", "db://x?q=a&page=2", True),
        ("db://x{?q}{&page}", "db://x?q=a&page=2", True),
        ("db://x{?q}", "db://x#frag", False),
        ("db://x{#frag}", "db://x#a/b", True),
        ("a+b://{x}", "a+b://1", True),
        ("a+b://{x}", "aab://1", False),
        ("plain://no-vars", "plain://no-vars", True),
        ("plain://no-vars", "plain://no-vars/", False),
        ("broken://{x", "broken://{x", True),
    ],
)
def test_template_matching(template: str, uri: str, matches: bool) -> None:
    catalog = build(ServerListing("s", resource_templates=[tpl(template)]))
    expected = Route("s", uri) if matches else None
    assert catalog.route_resource(uri) == expected


def test_longest_literal_prefix_wins() -> None:
    catalog = build(
        ServerListing("a", resource_templates=[tpl("file:///{+path}")]),
        ServerListing("b", resource_templates=[tpl("file:///docs/{name}")]),
    )
    assert catalog.route_resource("file:///docs/readme") == Route("b", "file:///docs/readme")
    assert catalog.route_resource("file:///src/main.py") == Route("a", "file:///src/main.py")


def test_equally_good_templates_are_ambiguous() -> None:
    catalog = build(
        ServerListing("b", resource_templates=[tpl("db://{table}")]),
        ServerListing("a", resource_templates=[tpl("db://{+anything}"), tpl("other://{x}")]),
        ServerListing("c", resource_templates=[tpl("d{+x}")]),
    )
    assert catalog.route_resource("db://users") is None
    assert catalog.resource_candidates("db://users") == [Route("a", "db://users"), Route("b", "db://users")]
    assert catalog.route_resource("db://users/1") == Route("a", "db://users/1")


def test_a_listed_uri_beats_templates() -> None:
    catalog = build(
        ServerListing("a", resource_templates=[tpl("file:///{name}")]),
        ServerListing("b", resources=[res("file:///readme")]),
    )
    assert catalog.route_resource("file:///readme") == Route("b", "file:///readme")
    assert catalog.route_resource("file:///other") == Route("a", "file:///other")


def test_a_shared_uri_is_not_routed_by_a_template() -> None:
    catalog = build(
        ServerListing("a", resources=[res("file:///readme")], resource_templates=[tpl("file:///{n}")]),
        ServerListing("b", resources=[res("file:///readme")]),
    )
    assert catalog.route_resource("file:///readme") is None


def test_shared_template_is_aliased_and_still_expandable() -> None:
    catalog = build(
        ServerListing("a", resource_templates=[tpl("file:///{path}")]),
        ServerListing("b", resource_templates=[tpl("file:///{path}")]),
    )
    templates = [t["uriTemplate"] for t in catalog.resource_templates]
    assert templates == ["manifold://a/file:///{path}", "manifold://b/file:///{path}"]
    # What a client gets by expanding the aliased template routes to the upstream's own URI.
    assert catalog.route_resource("manifold://b/file:///a%20b") == Route("b", "file:///a%20b")
    assert catalog.route_resource("file:///x") is None
    assert catalog.resource_candidates("file:///x") == [Route("a", "file:///x"), Route("b", "file:///x")]
    assert len(catalog.clashes) == 2


def test_exposed_uri_translates_upstream_notifications() -> None:
    catalog = build(
        ServerListing(
            "a", resources=[res("file:///r"), res("mem://u")], resource_templates=[tpl("file:///{p}")]
        ),
        ServerListing("b", resources=[res("file:///r")], resource_templates=[tpl("file:///{p}")]),
        ServerListing("c", resource_templates=[tpl("db://{t}")]),
    )
    assert catalog.exposed_uri("a", "mem://u") == "mem://u"
    assert catalog.exposed_uri("a", "file:///r") == "manifold://a/file%3A%2F%2F%2Fr"
    assert catalog.exposed_uri("c", "db://users") == "db://users"
    assert catalog.exposed_uri("b", "file:///x%20y") == "manifold://b/file:///x%20y"
    assert catalog.exposed_uri("c", "mem://u") == "manifold://c/mem%3A%2F%2Fu"
    for server, uri in [("a", "mem://u"), ("a", "file:///r"), ("b", "file:///x%20y"), ("c", "mem://u")]:
        assert catalog.route_resource(catalog.exposed_uri(server, uri)) == Route(server, uri)


# --- properties ----------------------------------------------------------------------------------

# Few characters make clashes likely; arbitrary text covers unicode and length.
clashy_text = st.text(alphabet="ab._ é", max_size=4)
any_text = st.text(max_size=90)
server_names = st.lists(st.one_of(clashy_text, any_text), min_size=1, max_size=5, unique=True)


@st.composite
def tool_listings(draw: st.DrawFn) -> list[ServerListing]:
    return [
        ServerListing(
            server,
            prefix=draw(st.booleans()),
            tools=[tool(n) for n in draw(st.lists(st.one_of(clashy_text, any_text), max_size=6))],
        )
        for server in draw(server_names)
    ]


@FAST
@given(tool_listings(), st.randoms(use_true_random=False))
def test_property_names_are_valid_unique_routable_and_order_free(
    listings: list[ServerListing], rng: random.Random
) -> None:
    catalog = Catalog.build(listings)
    exposed = names(catalog.tools)
    assert all(NAME_RE.match(name) for name in exposed)
    assert len(set(exposed)) == len(exposed)
    assert len(exposed) == sum(len({t["name"] for t in listing.tools}) for listing in listings)
    for name in exposed:
        route = catalog.route_tool(name)
        assert route is not None
        assert catalog.exposed_tool_name(route.server, route.name) == name
    for listing in listings:
        for item in listing.tools:
            exposed_as = catalog.exposed_tool_name(listing.server, item["name"])
            assert exposed_as is not None
            assert catalog.route_tool(exposed_as) == Route(listing.server, item["name"])
    shuffled = list(listings)
    rng.shuffle(shuffled)
    assert Catalog.build(shuffled) == catalog


@FAST
@given(any_text, any_text, st.booleans())
def test_property_exposed_name_is_always_valid(server: str, name: str, prefix: bool) -> None:
    assert NAME_RE.match(exposed_name(server, name, prefix=prefix))


uri_text = st.text(alphabet="ab:/%2F{}+", max_size=6)


@st.composite
def uri_listings(draw: st.DrawFn) -> list[ServerListing]:
    return [
        ServerListing(
            server,
            resources=[res(u) for u in draw(st.lists(uri_text, max_size=4))],
            resource_templates=[tpl(t) for t in draw(st.lists(uri_text, max_size=3))],
        )
        for server in draw(server_names)
    ]


@FAST
@given(uri_listings(), uri_text)
def test_property_every_exposed_uri_routes_back(listings: list[ServerListing], other: str) -> None:
    catalog = Catalog.build(listings)
    exposed = [r["uri"] for r in catalog.resources]
    assert len(set(exposed)) == len(exposed)
    assert len({t["uriTemplate"] for t in catalog.resource_templates}) == len(catalog.resource_templates)
    for listing in listings:
        for uri in [*(r["uri"] for r in listing.resources), other]:
            route = Route(listing.server, uri)
            assert catalog.route_resource(catalog.exposed_uri(listing.server, uri)) == route
    assert Catalog.build(reversed(listings)) == catalog
