"""The data-and-analytics example's handler without a broker: state folded per invocation, metrics
only on the final invocation of a window."""

import base64
import json
from typing import Any

from router.examples.metrics import emf_line, fold, handler


def _record(data: bytes, seq: int) -> dict[str, Any]:
    return {"eventID": f"shardId-000000000002:{seq}",
            "kinesis": {"data": base64.b64encode(data).decode(), "sequenceNumber": str(seq)}}


def _event(records: list[dict[str, Any]], state: dict[str, Any], final: bool) -> dict[str, Any]:
    return {"Records": records, "window": {"start": "2026-12-06T10:00:00Z", "end": "2026-12-06T10:00:10Z"},
            "state": state, "shardId": "shardId-000000000002", "eventSourceARN": "arn:aws:kinesis:x",
            "isFinalInvokeForWindow": final, "isWindowTerminatedEarly": False}


def test_fold_counts_types_and_distinct_users_and_malformed_records() -> None:
    first = fold({}, [_record(b'{"type": "click", "user": "a"}', 1), _record(b'{"type": "view", "user": "b"}', 2)])
    second = fold(first, [_record(b'{"type": "click", "user": "a"}', 3), _record(b"\xff not json", 4),
                          _record(b'{"type": 7}', 5), _record(b"[1]", 6)])
    assert first == {"records": 2, "malformed": 0, "counts": {"click": 1, "view": 1}, "users": ["a", "b"]}
    assert second == {"records": 6, "malformed": 3, "counts": {"click": 2, "view": 1}, "users": ["a", "b"]}


def test_only_the_final_invocation_reports_and_the_state_is_returned(capsys: Any) -> None:
    out = handler(_event([_record(b'{"type": "click", "user": "u1"}', 7)], {}, final=False), None)
    assert out == {"state": {"records": 1, "malformed": 0, "counts": {"click": 1}, "users": ["u1"]}}
    assert capsys.readouterr().out == ""
    out = handler(_event([], out["state"], final=True), None)
    line = json.loads(capsys.readouterr().out)
    assert line["Records"] == 1 and line["Clicks"] == 1 and line["DistinctUsers"] == 1
    assert line["windowStart"] == "2026-12-06T10:00:00Z"
    assert {m["Name"] for m in line["_aws"]["CloudWatchMetrics"][0]["Metrics"]} == {
        "Records", "Malformed", "DistinctUsers", "Clicks"}
    assert out["state"]["records"] == 1


def test_emf_names_every_type() -> None:
    line = json.loads(emf_line({"window": {"start": "s"}, "shardId": "x", "records": 2, "malformed": 0,
                                "counts": {"view": 2, "click": 0}, "distinctUsers": 1}))
    assert line["Views"] == 2 and line["Clicks"] == 0
