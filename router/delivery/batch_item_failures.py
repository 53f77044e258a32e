"""ReportBatchItemFailures for stream batches, exactly as Lambda reads a handler's response.

Only consulted when the mapping lists `ReportBatchItemFailures`; otherwise any return value of a
handler that did not raise is a full success. The rules (reference 1.6, AWS-recorded):

| response | verdict |
| --- | --- |
| None, {}, "", [], a dict without `batchItemFailures` | success |
| `batchItemFailures` null or [] | success |
| every entry `{"itemIdentifier": "<a sequence number of this batch>"}` | partial: retry from the lowest |
| an entry whose identifier is "", null, missing, not a string, or not in the batch | whole batch failed |
| `batchItemFailures` that is not a list (our choice; AWS not recorded) | whole batch failed |

Other shapes (a string, a number, a non-empty list) are successes, as LocalStack treats them; AWS
has no recording of those. Identifiers must be strings: AWS's type is a string and it rejects an
integer identifier, so we do not coerce one even when it happens to equal an offset.

A partial verdict names the index of the lowest (numerically) failed record; everything before it
is done and the rest, including records that succeeded, is delivered again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

Verdict = Literal["success", "partial", "invalid"]


@dataclass(frozen=True, slots=True)
class ItemFailures:
    verdict: Verdict
    # With "partial": index in the batch of the lowest failed record (everything before it is done).
    first_failed: int = 0
    # With "invalid": why the response failed the whole batch (for the log, never the payload).
    reason: str = ""

    @property
    def success(self) -> bool:
        return self.verdict == "success"


SUCCESS = ItemFailures("success")


def _invalid(reason: str) -> ItemFailures:
    return ItemFailures("invalid", reason=reason)


def parse_batch_item_failures(response: Any, sequence_numbers: Sequence[str]) -> ItemFailures:
    """Judge a handler's return value against the batch it was given (in batch order)."""
    if not isinstance(response, dict) or "batchItemFailures" not in response:
        return SUCCESS
    failures = response["batchItemFailures"]
    if failures is None:
        return SUCCESS
    if not isinstance(failures, list):
        return _invalid("batchItemFailures is not a list")
    if not failures:
        return SUCCESS
    position = {seq: index for index, seq in enumerate(sequence_numbers)}
    lowest: int | None = None
    for entry in failures:
        if not isinstance(entry, dict) or "itemIdentifier" not in entry:
            return _invalid("an entry has no itemIdentifier")
        identifier = entry["itemIdentifier"]
        if not isinstance(identifier, str) or not identifier:
            return _invalid("an itemIdentifier is empty or not a string")
        index = position.get(identifier)
        if index is None:
            return _invalid("an itemIdentifier is not a sequence number of this batch")
        if lowest is None or index < lowest:
            lowest = index
    assert lowest is not None
    return ItemFailures("partial", first_failed=lowest)
