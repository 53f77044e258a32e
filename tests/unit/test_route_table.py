"""HTTP route templates, selection in API Gateway's order, and reserved-path conflicts."""

from __future__ import annotations

import pytest

from router.routes.route_table import Route, RouteError, RouteTable, reserved_conflict

RESERVED = ["/healthz", "/readyz", "/metrics", "/status", "/webhooks/", "/2015-03-31/"]


def _table(*specs: str) -> RouteTable:
    """Routes from route keys ("GET /a", "$default"), each named after its key."""
    routes = []
    for spec in specs:
        method, _, path = spec.partition(" ")
        routes.append(Route(spec, "ANY", "$default") if spec == "$default" else Route(spec, method, path))
    return RouteTable(routes)


def _key(table: RouteTable, method: str, path: str) -> str | None:
    match = table.match(method, path)
    return None if match is None else match.route.route_key


def test_route_keys() -> None:
    assert Route("f", "GET", "/hello/{name}").route_key == "GET /hello/{name}"
    assert Route("f", "ANY", "/gallery/{proxy+}").route_key == "ANY /gallery/{proxy+}"
    assert Route("f", "ANY", "$default").route_key == "$default"


# AWS's own example (reference 2.5): the documented three priorities.
AWS_EXAMPLE = _table("GET /pets/dog/1", "GET /pets/dog/{id}", "GET /pets/{proxy+}", "ANY /{proxy+}", "$default")


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/pets/dog/1", "GET /pets/dog/1"),
        ("GET", "/pets/dog/2", "GET /pets/dog/{id}"),
        ("GET", "/pets/cat/1", "GET /pets/{proxy+}"),
        ("POST", "/test/5", "ANY /{proxy+}"),
        ("POST", "/pets/dog/1", "ANY /{proxy+}"),
        ("GET", "/", "$default"),  # a greedy variable needs something to match
    ],
)
def test_aws_documented_selection(method: str, path: str, expected: str) -> None:
    assert _key(AWS_EXAMPLE, method, path) == expected


@pytest.mark.parametrize(
    ("routes", "method", "path", "expected"),
    [
        # literal over {param} over greedy, whatever order the routes are listed in
        (("GET /{x}/b", "GET /a/{y}", "GET /a/b"), "GET", "/a/b", "GET /a/b"),
        (("GET /{x}/b", "GET /a/{y}"), "GET", "/a/b", "GET /a/{y}"),
        # every non-greedy full match beats every greedy route (AWS's rule (a) before (b))
        (("GET /a/{proxy+}", "GET /{x}/b"), "GET", "/a/b", "GET /{x}/b"),
        # the longer greedy prefix wins
        (
            ("GET /{proxy+}", "GET /pets/{proxy+}", "GET /pets/dog/{proxy+}"),
            "GET",
            "/pets/dog/1",
            "GET /pets/dog/{proxy+}",
        ),
        (("GET /{proxy+}", "GET /pets/{proxy+}", "GET /pets/dog/{proxy+}"), "GET", "/pets/cat/1", "GET /pets/{proxy+}"),
        # a named method beats ANY on the same path; ANY takes the other methods
        (("ANY /a", "GET /a"), "GET", "/a", "GET /a"),
        (("ANY /a", "GET /a"), "DELETE", "/a", "ANY /a"),
        # ANY on a more specific path still beats a named method on a less specific one
        (("GET /a/{x}", "ANY /a/b"), "GET", "/a/b", "ANY /a/b"),
        # $default only takes what nothing else claims
        (("GET /a", "$default"), "GET", "/a", "GET /a"),
        (("GET /a", "$default"), "POST", "/a", "$default"),
        (("GET /a", "$default"), "GET", "/nothing/here", "$default"),
        # the root route
        (("GET /", "GET /{x}"), "GET", "/", "GET /"),
        (("GET /", "GET /{x}"), "GET", "/y", "GET /{x}"),
    ],
)
def test_most_specific_route_wins(routes: tuple[str, ...], method: str, path: str, expected: str) -> None:
    assert _key(_table(*routes), method, path) == expected
    assert _key(_table(*reversed(routes)), method, path) == expected


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/hello/world"),  # the path exists, the method does not: 404 like API Gateway, no 405
        ("GET", "/hello"),  # {name} needs a segment
        ("GET", "/hello/"),  # ... a non-empty one
        ("GET", "/hello/a/b"),  # {name} is one segment only
        ("GET", "/Hello/world"),  # case-sensitive
        ("GET", "/files"),  # {proxy+} needs something after its prefix
        ("GET", "/files/"),
        ("CONNECT", "/hello/world"),  # not a method API Gateway routes
        ("get", "/hello/world"),  # methods are case-sensitive
    ],
)
def test_no_route_is_none(method: str, path: str) -> None:
    assert _table("GET /hello/{name}", "GET /files/{proxy+}").match(method, path) is None


def test_unroutable_methods_skip_default_too() -> None:
    table = _table("$default")
    assert table.match("CONNECT", "/x") is None
    match = table.match("PATCH", "/x")
    assert match is not None and match.route.route_key == "$default" and match.path_parameters == {}


def test_trailing_slash_is_another_path() -> None:
    table = _table("GET /a")
    assert table.match("GET", "/a") is not None
    assert table.match("GET", "/a/") is None


def test_path_parameters_are_percent_decoded() -> None:
    table = _table("GET /hello/{name}", "POST /photos/{album}/{proxy+}", "GET /caf\u00e9")
    match = table.match("GET", "/hello/J%C3%B6rg%20M+ller")
    assert match is not None
    assert match.path_parameters == {"name": "J\u00f6rg M+ller"}  # unquote, not unquote_plus
    # %2F stays inside its segment while matching; the value then holds the "/".
    match = table.match("GET", "/hello/a%2Fb")
    assert match is not None and match.path_parameters == {"name": "a/b"}
    match = table.match("POST", "/photos/holiday/2024/cat%20one.jpg")
    assert match is not None and match.path_parameters == {"album": "holiday", "proxy": "2024/cat one.jpg"}
    # Literal segments compare with the decoded text.
    match = table.match("GET", "/caf%C3%A9")
    assert match is not None and match.route.route_key == "GET /caf\u00e9" and match.path_parameters == {}


def test_greedy_variable_keeps_its_name_without_plus() -> None:
    match = _table("ANY /{path+}").match("GET", "/hello/world/")
    assert match is not None and match.path_parameters == {"path": "hello/world/"}


def test_routes_are_listed_in_the_order_they_are_tried() -> None:
    table = _table("$default", "ANY /{proxy+}", "GET /a/{x}", "GET /a/b", "ANY /a/b")
    assert [r.route_key for r in table.routes] == ["GET /a/b", "ANY /a/b", "GET /a/{x}", "ANY /{proxy+}", "$default"]


@pytest.mark.parametrize(
    ("method", "path", "why"),
    [
        ("GET", "hello", "must start with '/'"),
        ("GET", "", "must start with '/'"),
        ("GET", "/a//b", "empty segment"),
        ("GET", "/a/", "empty segment"),
        ("GET", "/{proxy+}/x", "must be the last segment"),
        ("GET", "/{}", "variable name"),
        ("GET", "/{a-b}", "variable name"),
        ("GET", "/{1a}", "variable name"),
        ("GET", "/{+}", "variable name"),
        ("GET", "/a{b}", "mixes text and a variable"),
        ("GET", "/{a}}", "variable name"),
        ("GET", "/{a}/{a}", "twice"),
        ("FETCH", "/a", "method 'FETCH'"),
        ("get", "/a", "method 'get'"),
        ("GET", "$default", "must be ANY"),
    ],
)
def test_bad_templates_are_refused_with_a_reason(method: str, path: str, why: str) -> None:
    with pytest.raises(RouteError, match=why) as info:
        RouteTable([Route("bad", method, path)])
    assert "'bad'" in str(info.value)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("GET", "/a/{x}"), ("GET", "/a/{x}")),
        (("GET", "/a/{x}"), ("GET", "/a/{y}")),  # same requests, other name
        (("ANY", "/{proxy+}"), ("ANY", "/{rest+}")),
        (("ANY", "$default"), ("ANY", "$default")),
    ],
)
def test_duplicates_are_refused(first: tuple[str, str], second: tuple[str, str]) -> None:
    with pytest.raises(RouteError, match="'two'"):
        RouteTable([Route("one", *first), Route("two", *second)])


def test_same_path_other_method_is_not_a_duplicate() -> None:
    table = RouteTable([Route("g", "GET", "/a/{x}"), Route("p", "POST", "/a/{y}"), Route("any", "ANY", "/a/{z}")])
    post = table.match("POST", "/a/1")
    assert post is not None and post.route.name == "p" and post.path_parameters == {"y": "1"}
    put = table.match("PUT", "/a/1")
    assert put is not None and put.route.name == "any" and put.path_parameters == {"z": "1"}


@pytest.mark.parametrize(
    ("path", "reserved"),
    [
        ("/healthz", "/healthz"),
        ("/metrics", "/metrics"),
        ("/{name}", "/healthz"),  # a root parameter matches /healthz
        ("/{proxy+}", "/healthz"),  # so does a root greedy route
        ("/webhooks/{source}", "/webhooks/"),
        ("/webhooks/minio", "/webhooks/"),
        ("/{name}/x", "/webhooks/"),  # would match /webhooks/x
        ("/2015-03-31/functions/{name}/invocations", "/2015-03-31/"),
        ("/{a}/{proxy+}", "/2015-03-31/"),
    ],
)
def test_reserved_conflicts_name_the_reserved_path(path: str, reserved: str) -> None:
    message = reserved_conflict(path, [reserved])
    assert message is not None
    assert path in message and reserved in message
    assert reserved_conflict(path, RESERVED) is not None


@pytest.mark.parametrize(
    "path",
    [
        "$default",
        "/",
        "/hello/{name}",
        "/healthz/extra",  # /healthz is reserved exactly, not what is below it
        "/health",
        "/webhooks",  # the prefix reserves what is below it, not itself
        "/api/{proxy+}",
        "/status2",
    ],
)
def test_routes_that_cannot_shadow_reserved_paths(path: str) -> None:
    assert reserved_conflict(path, RESERVED) is None


def test_only_overlapping_entries_conflict() -> None:
    assert reserved_conflict("/webhooks/{source}", ["/healthz", "/2015-03-31/"]) is None
    assert reserved_conflict("/{name}", ["/webhooks/", "/2015-03-31/"]) is None  # one segment never reaches below
    assert reserved_conflict("/{name}", []) is None


def test_reserved_conflict_checks_the_template() -> None:
    with pytest.raises(RouteError):
        reserved_conflict("healthz", RESERVED)
