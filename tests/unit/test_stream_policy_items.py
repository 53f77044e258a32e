"""ReportBatchItemFailures: every row of the reference 1.6 table."""

from __future__ import annotations

from typing import Any

import pytest

from router.delivery.batch_item_failures import parse_batch_item_failures

BATCH = ["100", "101", "102", "1000"]


@pytest.mark.parametrize(
    "response",
    [None, {}, {"batchItemFailures": []}, {"batchItemFailures": None}, "", [], "ok", 42, ["x"],
     {"unrelated": 1}],
    ids=["none", "empty-dict", "empty-list", "null-list", "empty-string", "empty-array", "string", "number",
         "list", "unrelated-dict"],
)
def test_full_success(response: Any) -> None:
    assert parse_batch_item_failures(response, BATCH).verdict == "success"


@pytest.mark.parametrize(
    "response",
    [
        {"batchItemFailures": [{"itemIdentifier": ""}]},
        {"batchItemFailures": [{"itemIdentifier": None}]},
        {"batchItemFailures": [{"foo": 123}]},
        {"batchItemFailures": [{"itemIdentifier": 123}]},
        {"batchItemFailures": [{"itemIdentifier": 101}]},  # an int, even one naming a record
        {"batchItemFailures": [{"itemIdentifier": "999"}]},
        {"batchItemFailures": [{"itemIdentifier": "101"}, {"itemIdentifier": "nope"}]},
        {"batchItemFailures": ["101"]},
        {"batchItemFailures": "101"},
        {"batchItemFailures": {"itemIdentifier": "101"}},
    ],
    ids=["empty-id", "null-id", "bad-key", "unknown-int", "int-in-batch", "unknown-seq", "one-bad-of-two",
         "bare-string-entry", "string-list", "dict-list"],
)
def test_whole_batch_failed(response: Any) -> None:
    assert parse_batch_item_failures(response, BATCH).verdict == "invalid"


def test_partial_restarts_from_the_numerically_lowest() -> None:
    verdict = parse_batch_item_failures(
        {"batchItemFailures": [{"itemIdentifier": "1000"}, {"itemIdentifier": "101"}]}, BATCH)
    assert (verdict.verdict, verdict.first_failed) == ("partial", 1)
    # "1000" < "101" as strings, but not as numbers: the lowest is by number.
    verdict = parse_batch_item_failures({"batchItemFailures": [{"itemIdentifier": "1000"}]}, BATCH)
    assert (verdict.verdict, verdict.first_failed) == ("partial", 3)
    verdict = parse_batch_item_failures({"batchItemFailures": [{"itemIdentifier": "100", "extra": 1}]}, BATCH)
    assert (verdict.verdict, verdict.first_failed) == ("partial", 0)
