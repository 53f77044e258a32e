"""fast_json gives exactly what json.loads gives, whichever decoder ran, and fails as it fails."""

from __future__ import annotations

import json

import pytest

from router.runtime.fast_json import json_loads, strict_loads

CORPUS = [
    b'{"Records":[{"s3":{"object":{"key":"a%20b.jpg","size":1024}}}]}',
    b'{"b":1,"a":2,"b":3}',  # duplicate key: last value, first position
    b'[1, 1.0, -0, -0.0, 1e2, 1E-400, 1e400, 12345678901234567890, 123456789012345678901234567890]',
    b'{"nan": NaN, "inf": Infinity, "ninf": -Infinity}',  # json.loads takes these, orjson does not
    b'"\\ud800 lone surrogate"',
    b'"caf\xc3\xa9 \\u00e9 \\ud83d\\ude00"',
    b'  {"spaced" :  [ true , false , null ] }  ',
    b"[" * 900 + b"]" * 900,
    b'0.1', b'"x"', b'null', b'{}', b'[]',
]


@pytest.mark.parametrize("body", CORPUS, ids=range(len(CORPUS)))
def test_results_are_json_loads_results(body: bytes) -> None:
    expected = json.loads(body.decode())
    got = json_loads()(body)
    assert repr(got) == repr(expected)  # repr tells 1 from 1.0 from True, and -0.0 from 0.0
    assert json.dumps(got) == json.dumps(expected)  # and key order


@pytest.mark.parametrize("body", [
    b"{not json", b"", b'{"a":1} trailing', b"\xff\xfe{}", b'{"a":\x80}',
    b"[" * 1100 + b"]" * 1100,  # past orjson's depth and json's recursion limit alike
])
def test_malformed_input_fails_as_json_loads_fails(body: bytes) -> None:
    with pytest.raises((ValueError, RecursionError)) as expected:
        strict_loads(body)
    with pytest.raises((ValueError, RecursionError)) as got:
        json_loads()(body)
    assert type(got.value) is type(expected.value)
    assert str(got.value) == str(expected.value)


def test_orjson_is_used_where_installed() -> None:
    assert json_loads() is not strict_loads  # a dependency of router, so always here
