"""Lambda's FilterCriteria: EventBridge-style event patterns, compiled once, matched per record.

Lambda (reference 1.8) keeps only the records that match at least one of a mapping's filters
(filters are OR-ed). A pattern mirrors the record's structure: every named field must be present
(unless its condition is `exists: false`) and match one of the values of its leaf array; sibling
fields are AND-ed. A field that holds an array matches when any element matches. The conditions:

* exact values: a string, a number, `true`/`false` or `null`; a string never equals a number nor
  a number a string (`["10"]` does not match 10). Numbers compare by value (300 matches 300.0:
  JSON parsing already made them the same float, as EventBridge compares them);
* `{"prefix": s}`, `{"suffix": s}`, either with `{"equals-ignore-case": s}` inside;
  `{"equals-ignore-case": s}`; `{"wildcard": "a*b"}` (`*` is any run of characters);
* `{"numeric": [">", 0, "<=", 5]}`: one or two comparisons, numbers only;
* `{"exists": true|false}`: present (any value but an object absent) / absent;
* `{"anything-but": v | [v, …] | {"prefix"|"suffix"|"wildcard"|"equals-ignore-case": …}}`;
* `{"cidr": "10.0.0.0/24"}` (IPv4 and IPv6) on a string holding an address;
* `"$or": [pattern, …]` at any level: any of the sub-patterns.

Lambda documents the exact, null, empty, numeric, exists, prefix and anything-but forms; the rest
are EventBridge's and accepted here as LocalStack accepts them (reference 1.8 [R]).

Patterns are compiled into small closures once, at config load; `matches` does no parsing.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

MAX_FILTERS = 5

Leaf = Callable[[Any], bool]  # one condition on one value (never a list)
Node = Callable[[Mapping[str, Any]], bool]
_MISSING = object()
_NUMERIC_OPS: dict[str, Callable[[float, float], bool]] = {
    "=": lambda a, b: a == b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}


class FilterError(ValueError):
    """A pattern Lambda would refuse; the message starts with the pattern's path."""


@dataclass(frozen=True)
class CompiledFilters:
    needs_data: bool  # some pattern has a top-level "data" key: callers parse data only then
    _filters: tuple[Node, ...]

    def matches(self, document: Mapping[str, Any]) -> bool:
        for match in self._filters:  # noqa: SIM110 (per record: a loop, not a generator; see _all_of)
            if match(document):
                return True
        return False


def compile_patterns(patterns: Sequence[str]) -> CompiledFilters:
    if not patterns:
        raise FilterError("filters: must list at least one filter")
    if len(patterns) > MAX_FILTERS:
        raise FilterError(f"filters: at most {MAX_FILTERS} filters per mapping (got {len(patterns)})")
    nodes: list[Node] = []
    needs_data = False
    for i, text in enumerate(patterns):
        where = f"filters[{i}].pattern"
        try:
            pattern = json.loads(text)
        except (TypeError, ValueError):
            raise FilterError(f"{where}: not valid JSON") from None
        if not isinstance(pattern, dict) or not pattern:
            raise FilterError(f"{where}: must be a non-empty JSON object")
        needs_data = needs_data or "data" in pattern or "$or" in pattern
        nodes.append(_object(pattern, where, ""))
    return CompiledFilters(needs_data, tuple(nodes))


def stream_document(
    partition_key: str, sequence_number: str, approximate_arrival_timestamp: float, data: bytes, parse_data: bool
) -> dict[str, Any]:
    """The Kinesis record fields stream patterns see, with `data` parsed from the raw bytes; data
    that is not UTF-8 JSON leaves `data` out, so only patterns not reaching into it can match."""
    document: dict[str, Any] = {
        "kinesisSchemaVersion": "1.0", "partitionKey": partition_key, "sequenceNumber": sequence_number,
        "approximateArrivalTimestamp": approximate_arrival_timestamp,
    }
    if parse_data:
        try:
            value = orjson.loads(data)
        except ValueError:  # not JSON, not UTF-8, or an integer past 64 bits
            return document
        document["data"] = value
    return document


# -- compiling ---------------------------------------------------------------------------------------


def _object(pattern: Mapping[str, Any], where: str, path: str) -> Node:
    checks: list[Node] = []
    for key, value in pattern.items():
        here = f"{path}.{key}" if path else key
        if key == "$or":
            if not isinstance(value, list) or len(value) < 2 or not all(isinstance(v, dict) and v for v in value):
                raise FilterError(f"{where}: {here}: $or needs a list of at least two objects")
            checks.append(_any_of([_object(v, where, path) for v in value]))
        elif isinstance(value, dict):
            if not value:
                raise FilterError(f"{where}: {here}: an empty object matches nothing")
            inner = _object(value, where, here)
            checks.append(_nested(key, inner))
        elif isinstance(value, list):
            checks.append(_field(key, value, where, here))
        else:
            raise FilterError(f"{where}: {here}: must be an array of conditions or an object")
    return _all_of(checks)


def _all_of(checks: list[Node]) -> Node:
    # Explicit loops and a one-check shortcut: this runs per stream record, and generator
    # expressions cost a few hundred nanoseconds each there.
    if len(checks) == 1:
        return checks[0]

    def check(doc: Mapping[str, Any]) -> bool:
        for one in checks:  # noqa: SIM110
            if not one(doc):
                return False
        return True
    return check


def _any_of(options: list[Node]) -> Node:
    return lambda doc: any(option(doc) for option in options)


def _nested(key: str, inner: Node) -> Node:
    def check(doc: Mapping[str, Any]) -> bool:
        value = doc.get(key, _MISSING)
        if isinstance(value, dict):
            return inner(value)
        if isinstance(value, list):
            return any(isinstance(v, dict) and inner(v) for v in value)
        return inner({})  # only patterns of exists:false can match an absent object
    return check


def _field(key: str, conditions: list[Any], where: str, here: str) -> Node:
    if not conditions:
        raise FilterError(f"{where}: {here}: an empty array matches nothing")
    absent_ok = False
    present: list[Leaf] = []
    for condition in conditions:
        if isinstance(condition, dict) and set(condition) == {"exists"}:
            if not isinstance(condition["exists"], bool):
                raise FilterError(f"{where}: {here}: exists takes true or false")
            if condition["exists"]:
                present.append(lambda _v: True)
            else:
                absent_ok = True
        else:
            present.append(_leaf(condition, where, here))

    def check(doc: Mapping[str, Any]) -> bool:
        value = doc.get(key, _MISSING)
        if value is _MISSING:
            return absent_ok
        if type(value) is list:
            if not value:
                return absent_ok
            for item in value:
                for leaf in present:
                    if leaf(item):
                        return True
            return False
        for leaf in present:  # noqa: SIM110
            if leaf(value):
                return True
        return False
    return check


def _leaf(condition: Any, where: str, here: str) -> Leaf:
    if condition is None or isinstance(condition, (str, bool)):
        return _exact(condition)
    if isinstance(condition, (int, float)):
        return _exact(condition)
    if not isinstance(condition, dict) or len(condition) != 1:
        raise FilterError(f"{where}: {here}: a condition is a value or an object with one operator")
    (operator, argument), = condition.items()
    if operator == "prefix":
        return _affix(argument, where, here, operator, str.startswith)
    if operator == "suffix":
        return _affix(argument, where, here, operator, str.endswith)
    if operator == "equals-ignore-case":
        text = _string(argument, where, here, operator).casefold()
        return lambda v: isinstance(v, str) and v.casefold() == text
    if operator == "wildcard":
        regex = _wildcard(_string(argument, where, here, operator))
        return lambda v: isinstance(v, str) and regex.fullmatch(v) is not None
    if operator == "numeric":
        return _numeric(argument, where, here)
    if operator == "cidr":
        try:
            network = ipaddress.ip_network(_string(argument, where, here, operator), strict=False)
        except ValueError:
            raise FilterError(f"{where}: {here}: cidr {argument!r} is not an IP network") from None
        return lambda v: _in_network(v, network)
    if operator == "anything-but":
        return _anything_but(argument, where, here)
    if operator == "exists":
        raise FilterError(f"{where}: {here}: exists must be the only key of its condition")
    raise FilterError(f"{where}: {here}: unknown operator {operator!r}")


def _exact(expected: Any) -> Leaf:
    if expected is None:
        return lambda v: v is None
    if isinstance(expected, bool):
        return lambda v: v is expected
    if isinstance(expected, str):
        return lambda v: v == expected and type(v) is str
    number = float(expected)
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v == number


def _string(argument: Any, where: str, here: str, operator: str) -> str:
    if not isinstance(argument, str):
        raise FilterError(f"{where}: {here}: {operator} takes a string")
    return argument


def _affix(argument: Any, where: str, here: str, operator: str, test: Callable[[str, str], bool]) -> Leaf:
    if isinstance(argument, dict) and set(argument) == {"equals-ignore-case"}:
        folded = _string(argument["equals-ignore-case"], where, here, operator).casefold()
        return lambda v: isinstance(v, str) and test(v.casefold(), folded)
    text = _string(argument, where, here, operator)
    return lambda v: isinstance(v, str) and test(v, text)


def _wildcard(text: str) -> re.Pattern[str]:
    if "**" in text:
        raise FilterError("wildcard: consecutive '*' are not allowed")
    return re.compile(".*".join(re.escape(part) for part in text.split("*")), re.DOTALL)


def _numeric(argument: Any, where: str, here: str) -> Leaf:
    if not isinstance(argument, list) or len(argument) not in (2, 4):
        raise FilterError(f"{where}: {here}: numeric takes one or two [operator, number] pairs")
    tests: list[tuple[Callable[[float, float], bool], float]] = []
    for op, bound in zip(argument[::2], argument[1::2], strict=True):
        if op not in _NUMERIC_OPS:
            raise FilterError(f"{where}: {here}: numeric operator {op!r} is not one of = < <= > >=")
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound):
            raise FilterError(f"{where}: {here}: numeric bound {bound!r} is not a number")
        tests.append((_NUMERIC_OPS[op], float(bound)))
    if len(tests) == 2 and ("=" in (argument[0], argument[2])):
        raise FilterError(f"{where}: {here}: numeric '=' cannot be part of a range")

    def check(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        return all(test(v, bound) for test, bound in tests)
    return check


def _in_network(value: Any, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return ipaddress.ip_address(value) in network
    except ValueError:
        return False


def _anything_but(argument: Any, where: str, here: str) -> Leaf:
    if isinstance(argument, dict):
        if len(argument) != 1 or next(iter(argument)) not in ("prefix", "suffix", "wildcard", "equals-ignore-case"):
            raise FilterError(f"{where}: {here}: anything-but takes values, or prefix, suffix, wildcard or "
                              "equals-ignore-case")
        (operator, inner), = argument.items()
        if operator == "equals-ignore-case" and isinstance(inner, list):
            folded = {_string(i, where, here, operator).casefold() for i in inner}
            return lambda v: isinstance(v, str) and v.casefold() not in folded
        matched = _leaf({operator: inner}, where, here)
        return lambda v: isinstance(v, str) and not matched(v)
    values = argument if isinstance(argument, list) else [argument]
    if not values or not all(v is None or isinstance(v, (str, int, float)) for v in values):
        raise FilterError(f"{where}: {here}: anything-but takes a value or a list of values")
    excluded = [_exact(v) for v in values]
    return lambda v: not any(test(v) for test in excluded)
