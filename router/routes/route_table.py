"""HTTP routes: which function an HTTP request goes to, picked the way API Gateway HTTP APIs pick.

A route is a method (or `ANY`) and a path template; `$default` catches whatever no other route
claims. AWS documents the order (reference 2.5): (a) a route whose static segments and `{var}`
single-segment variables match the whole path, (b) a route with a greedy `{proxy+}` variable,
(c) `$default`; `ANY` counts only for methods no route on that path names. Unmatched → API Gateway
answers 404 `{"message":"Not Found"}`, also when the path exists under another method: HTTP APIs
have no 405, so `match` returns None in both cases and never tells the two apart.

Tie-breaks AWS does not document (router's choices, reference 2.5 [R]):
* within (a) or (b), segments compare left to right: a literal beats `{var}`, which beats the
  greedy variable, so `/pets/dog/{proxy+}` beats `/pets/{proxy+}` and `/pets/{id}` beats `/{x}/1`;
* then a named method beats `ANY`;
* matching is case-sensitive and `/a/` is not `/a`; `{var}` never matches an empty segment and
  `{proxy+}` needs at least one character after its prefix (so `/{proxy+}` does not match `/`);
* methods other than the seven API Gateway (and Powertools' event model) accept — DELETE GET HEAD
  OPTIONS PATCH POST PUT — match nothing, `$default` included (reference 1.7: answer 404 without
  invoking, since handlers built on Powertools would reject the event).

`match` takes the path as it arrived on the request line, still percent-encoded: segments are
split on a real `/` first and decoded afterwards, so `%2F` stays inside its segment; literal
segments compare with the decoded text and path parameters are decoded (`unquote`, `+` kept).

Template rules (RouteError otherwise): starts with `/`; no empty segment (so no `//` and no
trailing `/` except the root `/`); a segment is a literal without braces, `{name}` or, as the last
segment only, `{name+}`, with ASCII identifier names used once per template; `$default` only with
`ANY`. Two routes with the same method and the same template up to variable names (`/a/{x}` and
`/a/{y}`) would claim exactly the same requests, so they are refused as duplicates.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

DEFAULT_ROUTE = "$default"
ANY = "ANY"
# What API Gateway HTTP APIs route and Powertools' APIGatewayProxyEventV2Model accepts.
METHODS = frozenset({"DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT"})

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Segment kinds, also their rank: lower is more specific.
_LITERAL, _VARIABLE, _GREEDY = 0, 1, 2


class RouteError(ValueError):
    """A route template API Gateway would not accept; the message says why."""


@dataclass(frozen=True)
class Route:
    name: str
    method: str  # "GET", "POST", ... or "ANY"
    path: str  # "/hello/{name}", "/gallery/{proxy+}" or "$default"

    @property
    def route_key(self) -> str:
        """The event's `routeKey`: "GET /hello/{name}", "ANY /{proxy+}" or "$default"."""
        if self.path == DEFAULT_ROUTE:
            return DEFAULT_ROUTE
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class RouteMatch:
    route: Route
    path_parameters: dict[str, str]


@dataclass(frozen=True, slots=True)
class _Segment:
    kind: int  # _LITERAL, _VARIABLE or _GREEDY
    text: str  # the literal, or the variable's name (without braces and "+")


def _parse(path: str) -> tuple[_Segment, ...]:
    """The segments of a template other than `$default`; RouteError when API Gateway would refuse it."""
    if not path.startswith("/"):
        raise RouteError(f"route path {path!r} must start with '/' (or be {DEFAULT_ROUTE!r})")
    if path == "/":
        return ()
    parts = path[1:].split("/")
    segments: list[_Segment] = []
    names: set[str] = set()
    for position, part in enumerate(parts):
        if not part:
            raise RouteError(f"route path {path!r} has an empty segment ('//' or a trailing '/')")
        if part.startswith("{") and part.endswith("}"):
            inner = part[1:-1]
            greedy = inner.endswith("+")
            name = inner[:-1] if greedy else inner
            if not _NAME_RE.fullmatch(name):
                raise RouteError(f"route path {path!r}: {part!r} needs a variable name made of letters, digits and '_'")
            if greedy and position != len(parts) - 1:
                raise RouteError(f"route path {path!r}: the greedy variable {part!r} must be the last segment")
            if name in names:
                raise RouteError(f"route path {path!r} uses the variable {name!r} twice")
            names.add(name)
            segments.append(_Segment(_GREEDY if greedy else _VARIABLE, name))
        elif "{" in part or "}" in part:
            raise RouteError(f"route path {path!r}: {part!r} mixes text and a variable; a variable is a whole segment")
        else:
            segments.append(_Segment(_LITERAL, part))
    return tuple(segments)


def _match_segments(segments: tuple[_Segment, ...], raw_path: str) -> dict[str, str] | None:
    """Path parameters (decoded) when the template matches the still-encoded path, else None."""
    if not raw_path.startswith("/"):
        return None
    rest: str | None = raw_path[1:]
    if not segments:
        return {} if rest == "" else None
    params: dict[str, str] = {}
    for segment in segments:
        if not rest:  # path exhausted, or an empty segment / nothing left for the greedy variable
            return None
        if segment.kind == _GREEDY:
            params[segment.text] = unquote(rest)
            return params
        head, slash, tail = rest.partition("/")
        if not head:
            return None
        if segment.kind == _LITERAL:
            if unquote(head) != segment.text:
                return None
        else:
            params[segment.text] = unquote(head)
        rest = tail if slash else None
    return params if rest is None else None


@dataclass(frozen=True, slots=True)
class _Compiled:
    route: Route
    segments: tuple[_Segment, ...]
    # Sort key, lowest first: non-greedy before greedy, segment ranks left to right, method before ANY.
    rank: tuple[int, tuple[int, ...], int]


class RouteTable:
    """The routes of one HTTP listener, validated once, matched per request."""

    def __init__(self, routes: Iterable[Route]) -> None:
        compiled: list[_Compiled] = []
        seen: dict[tuple[str, tuple[tuple[int, str], ...]], Route] = {}
        default: Route | None = None
        for route in routes:
            if route.path == DEFAULT_ROUTE:
                if route.method != ANY:
                    raise RouteError(
                        f"route {route.name!r}: {DEFAULT_ROUTE} takes every method; its method must be ANY"
                    )
                if default is not None:
                    raise RouteError(f"route {route.name!r}: {DEFAULT_ROUTE} is already the route {default.name!r}")
                default = route
                continue
            if route.method != ANY and route.method not in METHODS:
                raise RouteError(
                    f"route {route.name!r}: method {route.method!r} must be ANY or one of {', '.join(sorted(METHODS))}"
                )
            try:
                segments = _parse(route.path)
            except RouteError as error:
                raise RouteError(f"route {route.name!r}: {error}") from None
            # Variable names do not change which requests a template claims.
            shape = tuple((s.kind, s.text if s.kind == _LITERAL else "") for s in segments)
            other = seen.get((route.method, shape))
            if other is not None:
                raise RouteError(
                    f"route {route.name!r}: {route.route_key!r} claims the same requests as route {other.name!r} "
                    f"({other.route_key!r})"
                )
            seen[(route.method, shape)] = route
            greedy = 1 if segments and segments[-1].kind == _GREEDY else 0
            rank = (greedy, tuple(s.kind for s in segments), 1 if route.method == ANY else 0)
            compiled.append(_Compiled(route, segments, rank))
        compiled.sort(key=lambda c: c.rank)
        self._routes = tuple(compiled)
        self._default = default

    @property
    def routes(self) -> tuple[Route, ...]:
        """Every route, `$default` last, in the order `match` tries them."""
        ordered = tuple(c.route for c in self._routes)
        return (*ordered, self._default) if self._default is not None else ordered

    def match(self, method: str, path: str) -> RouteMatch | None:
        """The most specific route for a request, or None (API Gateway's 404) when none claims it.

        `path` is the request-line path, still percent-encoded, without the query string.
        """
        if method not in METHODS:
            return None
        for candidate in self._routes:
            if candidate.route.method != method and candidate.route.method != ANY:
                continue
            params = _match_segments(candidate.segments, path)
            if params is not None:
                return RouteMatch(candidate.route, params)
        if self._default is not None:
            return RouteMatch(self._default, {})
        return None


def reserved_conflict(path: str, reserved_prefixes: Sequence[str]) -> str | None:
    """Why a route template would claim a path router serves itself, or None when it cannot.

    A reserved entry ending in "/" reserves everything below it ("/webhooks/" → "/webhooks/minio");
    any other entry reserves exactly that path ("/healthz"). A template conflicts when some request
    it would match is reserved: `/healthz`, `/{name}` and `/{proxy+}` all claim "/healthz";
    `/{name}/x` claims "/webhooks/x". `$default` conflicts with nothing: it only receives what no
    other route (and no path of router's own) claims. Raises RouteError for an invalid template.
    """
    if path == DEFAULT_ROUTE:
        return None
    segments = _parse(path)
    for reserved in reserved_prefixes:
        if reserved.endswith("/"):
            prefix = [unquote(p) for p in reserved.strip("/").split("/") if p]
            if _claims_below(segments, prefix):
                return f"route path {path!r} would match paths under {reserved!r}, which router serves itself"
        elif _match_segments(segments, reserved) is not None:
            return f"route path {path!r} would match {reserved!r}, which router serves itself"
    return None


def _claims_below(segments: tuple[_Segment, ...], prefix: list[str]) -> bool:
    """Whether the template matches some path of the form "/<prefix>/<at least one more character>"."""
    for position, wanted in enumerate(prefix):
        if position >= len(segments):
            return False
        segment = segments[position]
        if segment.kind == _GREEDY:
            return True
        if segment.kind == _LITERAL and segment.text != wanted:
            return False
    return len(segments) > len(prefix)
