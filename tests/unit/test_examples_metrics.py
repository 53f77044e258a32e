import base64
import json

from router.examples.metrics import aggregate, handler


def _record(data: bytes, seq: int) -> dict:
    return {
        "eventID": f"shardId-000000000002:{seq}",
        "kinesis": {"data": base64.b64encode(data).decode(), "sequenceNumber": str(seq)},
    }


def test_aggregates_views_and_latency_per_page_and_counts_malformed() -> None:
    records = [
        _record(json.dumps({"page": "/a", "ms": 10}).encode(), 1),
        _record(json.dumps({"page": "/a", "ms": 30}).encode(), 2),
        _record(json.dumps({"page": "/b"}).encode(), 3),
        _record(b"\xff not json", 4),
    ]
    assert aggregate(records) == {
        "records": 4,
        "malformed": 1,
        "pages": {"/a": {"views": 2, "avg_ms": 20.0}, "/b": {"views": 1, "avg_ms": 0.0}},
    }


def test_handler_reports_the_shard_and_sequence_range(capsys) -> None:
    out = handler({"Records": [_record(b'{"page": "/x"}', 7), _record(b'{"page": "/x"}', 9)]}, None)
    assert out["shardId"] == "shardId-000000000002"
    assert (out["firstSequenceNumber"], out["lastSequenceNumber"]) == ("7", "9")
    emf = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert emf["Records"] == 2 and emf["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "router-example"
