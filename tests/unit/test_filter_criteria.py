"""Lambda's filter pattern grammar (reference 1.8): a true and a false case for every operator."""

from __future__ import annotations

import json
from typing import Any

import pytest

from router.delivery.filter_criteria import FilterError, compile_patterns, stream_document

CASES: list[tuple[str, Any, dict[str, Any], bool]] = [
    # (what, pattern, document, matches)
    ("exact string", {"a": ["x"]}, {"a": "x"}, True),
    ("exact string, other value", {"a": ["x"]}, {"a": "y"}, False),
    ("exact string is case-sensitive", {"a": ["x"]}, {"a": "X"}, False),
    ("values in one array are OR-ed", {"a": ["x", "y"]}, {"a": "y"}, True),
    ("siblings are AND-ed", {"a": ["x"], "b": ["y"]}, {"a": "x", "b": "z"}, False),
    ("siblings all match", {"a": ["x"], "b": ["y"]}, {"a": "x", "b": "y"}, True),
    ("a named field must be present", {"a": ["x"]}, {"b": "x"}, False),
    ("fields not named are ignored", {"a": ["x"]}, {"a": "x", "z": 1}, True),
    ("null", {"a": [None]}, {"a": None}, True),
    ("null is not missing", {"a": [None]}, {}, False),
    ("empty string", {"a": [""]}, {"a": ""}, True),
    ("empty string is not null", {"a": [""]}, {"a": None}, False),
    ("number", {"n": [300]}, {"n": 300.0}, True),
    ("number vs string", {"n": [10]}, {"n": "10"}, False),
    ("string vs number", {"n": ["10"]}, {"n": 10}, False),
    ("boolean", {"b": [True]}, {"b": True}, True),
    ("boolean is not 1", {"b": [True]}, {"b": 1}, False),
    ("numeric =", {"n": [{"numeric": ["=", 100]}]}, {"n": 100}, True),
    ("numeric = false", {"n": [{"numeric": ["=", 100]}]}, {"n": 101}, False),
    ("numeric <", {"n": [{"numeric": ["<", 5]}]}, {"n": 4.9}, True),
    ("numeric < false", {"n": [{"numeric": ["<", 5]}]}, {"n": 5}, False),
    ("numeric <=", {"n": [{"numeric": ["<=", 5]}]}, {"n": 5}, True),
    ("numeric >=", {"n": [{"numeric": [">=", 5]}]}, {"n": 4}, False),
    ("numeric range", {"n": [{"numeric": [">", 10, "<=", 20]}]}, {"n": 20}, True),
    ("numeric range, outside", {"n": [{"numeric": [">", 10, "<=", 20]}]}, {"n": 10}, False),
    ("numeric on a string", {"n": [{"numeric": [">", 1]}]}, {"n": "5"}, False),
    ("exists true", {"a": [{"exists": True}]}, {"a": 0}, True),
    ("exists true, absent", {"a": [{"exists": True}]}, {}, False),
    ("exists false, absent", {"a": [{"exists": False}]}, {"b": 1}, True),
    ("exists false, present", {"a": [{"exists": False}]}, {"a": 1}, False),
    ("prefix", {"a": [{"prefix": "eu-"}]}, {"a": "eu-west"}, True),
    ("prefix false", {"a": [{"prefix": "eu-"}]}, {"a": "us-east"}, False),
    ("prefix ignoring case", {"a": [{"prefix": {"equals-ignore-case": "EU-"}}]}, {"a": "eu-1"}, True),
    ("suffix", {"k": [{"suffix": ".jpg"}]}, {"k": "a.jpg"}, True),
    ("suffix false", {"k": [{"suffix": ".jpg"}]}, {"k": "a.png"}, False),
    ("suffix ignoring case", {"k": [{"suffix": {"equals-ignore-case": ".JPG"}}]}, {"k": "a.jpg"}, True),
    ("equals-ignore-case", {"a": [{"equals-ignore-case": "ALICE"}]}, {"a": "alice"}, True),
    ("equals-ignore-case false", {"a": [{"equals-ignore-case": "ALICE"}]}, {"a": "bob"}, False),
    ("wildcard", {"k": [{"wildcard": "dir/*.png"}]}, {"k": "dir/a/b.png"}, True),
    ("wildcard false", {"k": [{"wildcard": "dir/*.png"}]}, {"k": "dir/a.jpg"}, False),
    ("anything-but value", {"w": [{"anything-but": "Raining"}]}, {"w": "Sunny"}, True),
    ("anything-but value false", {"w": [{"anything-but": "Raining"}]}, {"w": "Raining"}, False),
    ("anything-but list", {"w": [{"anything-but": ["a", "b"]}]}, {"w": "b"}, False),
    ("anything-but number", {"n": [{"anything-but": [1, 2]}]}, {"n": 3}, True),
    ("anything-but prefix", {"w": [{"anything-but": {"prefix": "tmp/"}}]}, {"w": "img/a"}, True),
    ("anything-but prefix false", {"w": [{"anything-but": {"prefix": "tmp/"}}]}, {"w": "tmp/a"}, False),
    ("anything-but suffix", {"w": [{"anything-but": {"suffix": ".tmp"}}]}, {"w": "a.tmp"}, False),
    ("anything-but wildcard", {"w": [{"anything-but": {"wildcard": "*.tmp"}}]}, {"w": "a.txt"}, True),
    ("anything-but ignore case", {"w": [{"anything-but": {"equals-ignore-case": ["X"]}}]}, {"w": "x"}, False),
    ("cidr v4", {"ip": [{"cidr": "10.0.0.0/24"}]}, {"ip": "10.0.0.7"}, True),
    ("cidr v4 false", {"ip": [{"cidr": "10.0.0.0/24"}]}, {"ip": "10.0.1.7"}, False),
    ("cidr v6", {"ip": [{"cidr": "2001:db8::/32"}]}, {"ip": "2001:db8::1"}, True),
    ("cidr on garbage", {"ip": [{"cidr": "10.0.0.0/8"}]}, {"ip": "not-an-ip"}, False),
    ("$or", {"$or": [{"a": ["x"]}, {"b": ["y"]}]}, {"b": "y"}, True),
    ("$or false", {"$or": [{"a": ["x"]}, {"b": ["y"]}]}, {"a": "y", "b": "x"}, False),
    ("nested", {"data": {"order": {"type": ["buy"]}}}, {"data": {"order": {"type": "buy"}}}, True),
    ("nested false", {"data": {"order": {"type": ["buy"]}}}, {"data": {"order": {"type": "sell"}}}, False),
    ("nested, parent missing", {"data": {"type": ["buy"]}}, {}, False),
    ("nested, parent not an object", {"data": {"type": ["buy"]}}, {"data": "buy"}, False),
    ("array of scalars, any element", {"tags": ["b"]}, {"tags": ["a", "b"]}, True),
    ("array of scalars, none", {"tags": ["c"]}, {"tags": ["a", "b"]}, False),
    ("array of objects", {"items": {"sku": [{"prefix": "X"}]}}, {"items": [{"sku": "A"}, {"sku": "X1"}]}, True),
    ("array of objects, none", {"items": {"sku": ["X"]}}, {"items": [{"sku": "A"}]}, False),
]


@pytest.mark.parametrize(("pattern", "document", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_pattern(pattern: Any, document: dict[str, Any], expected: bool) -> None:
    assert compile_patterns([json.dumps(pattern)]).matches(document) is expected


def test_filters_are_or_ed() -> None:
    filters = compile_patterns(['{"a": ["x"]}', '{"b": ["y"]}'])
    assert filters.matches({"b": "y"}) and filters.matches({"a": "x"}) and not filters.matches({"a": "y"})


def test_stream_document_parses_data_only_when_asked_and_drops_non_json() -> None:
    filters = compile_patterns(['{"data": {"t": ["click"]}}', '{"partitionKey": [{"prefix": "eu-"}]}'])
    assert filters.needs_data
    def doc(key: str, data: bytes) -> dict[str, Any]:
        return stream_document(partition_key=key, sequence_number="7", approximate_arrival_timestamp=1.5, data=data,
                               parse_data=filters.needs_data)
    assert filters.matches(doc("us-1", b'{"t": "click"}'))
    assert not filters.matches(doc("us-1", b"not json"))  # only patterns outside data could match
    assert filters.matches(doc("eu-1", b"\xff\xfe"))  # not UTF-8: the metadata pattern still does
    assert "data" not in stream_document(partition_key="k", sequence_number="1", approximate_arrival_timestamp=0,
                                         data=b'{"a": 1}', parse_data=False)
    assert not compile_patterns(['{"partitionKey": ["k"]}']).needs_data


@pytest.mark.parametrize(("patterns", "message"), [
    (["{not json"], "filters[0].pattern: not valid JSON"),
    (["[1]"], "filters[0].pattern: must be a non-empty JSON object"),
    (['{"a": "x"}'], "filters[0].pattern: a: must be an array"),
    (['{"a": [{"numerc": [">", 1]}]}'], "filters[0].pattern: a: unknown operator 'numerc'"),
    (['{"a": [{"numeric": [">"]}]}'], "filters[0].pattern: a: numeric takes"),
    (['{"a": [{"numeric": ["~", 1]}]}'], "numeric operator '~'"),
    (['{"a": [{"prefix": 1}]}'], "a: prefix takes a string"),
    (['{"a": [{"cidr": "300.1.1.1/8"}]}'], "a: cidr"),
    (['{"a": [{"exists": "yes"}]}'], "exists takes true or false"),
    (['{"a": ["x"]}', '{"b": {"c": []}}'], "filters[1].pattern: b.c: an empty array"),
    (['{"a": ["x"]}'] * 6, "at most 5 filters"),
    ([], "at least one filter"),
])
def test_invalid_patterns_are_refused_with_their_path(patterns: list[str], message: str) -> None:
    with pytest.raises(FilterError) as raised:
        compile_patterns(patterns)
    assert message in str(raised.value)
