"""Bucket notification payloads of every store → the record AWS S3 would have sent."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.utilities.parser.models import S3Model

from router.events.s3 import (
    MalformedNotification,
    aws_record,
    event_record,
    parse_notification,
    split_bucket_path,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MINIO = sorted((FIXTURES / "minio").glob("*.json"))
MINIO_ONLY_OBJECT_FIELDS = {"contentType", "userMetadata"}


def fixture(name: str) -> bytes:
    return next(FIXTURES.glob(f"*/{name}")).read_bytes()


def only_aws(payload: bytes, *, region: str = "eu-west-1", config_id: str = "m") -> dict[str, Any]:
    parsed = parse_notification(payload)
    assert len(parsed.events) == 1
    record = aws_record(parsed.events[0], region=region, configuration_id=config_id)
    S3Model.model_validate({"Records": [record]})
    return record


@pytest.mark.parametrize("path", MINIO, ids=lambda p: p.name)
def test_every_minio_fixture_becomes_an_aws_record_powertools_accepts(path: Path) -> None:
    source = json.loads(path.read_bytes())["Records"][0]
    record = only_aws(path.read_bytes(), region="eu-west-1", config_id="photos-to-thumbnails")

    assert record["eventSource"] == "aws:s3"
    assert record["eventVersion"] == "2.1"
    assert record["awsRegion"] == "eu-west-1"
    assert not record["eventName"].startswith("s3:")
    assert record["eventTime"] == source["eventTime"]
    assert record["s3"]["configurationId"] == "photos-to-thumbnails"
    assert record["s3"]["bucket"] == {
        "name": source["s3"]["bucket"]["name"],
        "ownerIdentity": {"principalId": source["s3"]["bucket"]["ownerIdentity"]["principalId"]},
        "arn": f"arn:aws:s3:::{source['s3']['bucket']['name']}",
    }
    # MinIO-only fields are gone; AWS's two response elements remain.
    assert "source" not in record
    assert not MINIO_ONLY_OBJECT_FIELDS & record["s3"]["object"].keys()
    assert set(record["responseElements"]) == {"x-amz-request-id", "x-amz-id-2"}
    assert set(record["requestParameters"]) == {"sourceIPAddress"}
    assert record["s3"]["object"]["sequencer"] == source["s3"]["object"]["sequencer"]


def test_minio_key_is_reencoded_the_aws_way() -> None:
    record = only_aws(fixture("mqtt_put_encoded_key.json"))
    assert record["s3"]["object"]["key"] == "albums/summer+2024/caf%C3%A9+%2B+friends+%C3%BC.jpg"
    assert record["eventName"] == "ObjectCreated:Put"
    assert record["s3"]["object"]["size"] == 2483917
    assert record["s3"]["object"]["eTag"] == "961477a2b9cc9b01ddf2246c002768e8"
    event = parse_notification(fixture("mqtt_put_encoded_key.json")).events[0]
    assert event.key == "albums/summer 2024/café + friends ü.jpg"
    assert event.bucket == "photos"


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("webhook_body_put.json", "invoices/2025/06/INV-0042+%28final%29.pdf"),
        ("kafka_value_put.json", "devices/sensor-17/2025-06-14T12%3A00Z.json"),
        ("mqtt_complete_multipart_upload.json", "videos/lecture+01.mp4"),
        ("mqtt_delete_marker_created.json", "2025/acme+corp/NDA+v2.pdf"),
    ],
)
def test_keys_with_parentheses_colons_and_spaces(name: str, key: str) -> None:
    assert only_aws(fixture(name))["s3"]["object"]["key"] == key


def test_zero_byte_object_gets_size_zero_as_aws_sends_on_create() -> None:
    record = only_aws(fixture("mqtt_put_zero_byte_object.json"))
    assert record["s3"]["object"]["size"] == 0
    assert record["s3"]["object"]["eTag"] == "d41d8cd98f00b204e9800998ecf8427e"


@pytest.mark.parametrize(
    "name",
    ["mqtt_delete.json", "mqtt_delete_marker_created.json", "mqtt_ilm_expiry_delete.json", "mqtt_removed_noop.json"],
)
def test_removal_events_carry_no_size_or_etag(name: str) -> None:
    obj = only_aws(fixture(name))["s3"]["object"]
    assert "size" not in obj
    assert "eTag" not in obj


def test_delete_marker_keeps_its_version_id() -> None:
    record = only_aws(fixture("mqtt_delete_marker_created.json"))
    assert record["eventName"] == "ObjectRemoved:DeleteMarkerCreated"
    assert record["s3"]["object"]["versionId"] == "0f6c2a51-8d3e-4b9a-a7c4-5e21d0b9f38c"


def test_versioned_put_keeps_version_id_and_drops_user_metadata() -> None:
    obj = only_aws(fixture("mqtt_put_user_metadata.json"))["s3"]["object"]
    assert obj == {
        "key": "ingest/2025-06-14/sales.csv",
        "size": 48213,
        "eTag": "73c4b56aa3b7a6df52e6e2c39fe4b817",
        "versionId": "9d1e7b3c-2f44-4c1e-8a6d-b05f3e91c2a7",
        "sequencer": "1848E10E9DD3CD5C",
    }


def test_noop_delete_is_reported_as_the_delete_s3_sends_but_matches_by_its_own_name() -> None:
    event = parse_notification(fixture("mqtt_removed_noop.json")).events[0]
    assert event.event_name == "s3:ObjectRemoved:NoOP"
    assert only_aws(fixture("mqtt_removed_noop.json"))["eventName"] == "ObjectRemoved:Delete"


def test_internal_lifecycle_event_looks_service_initiated() -> None:
    record = only_aws(fixture("mqtt_ilm_expiry_delete.json"))
    assert record["requestParameters"] == {"sourceIPAddress": "s3.amazonaws.com"}
    assert record["userIdentity"] == {"principalId": "s3.amazonaws.com"}
    assert record["responseElements"] == {"x-amz-request-id": "", "x-amz-id-2": ""}


def test_minio_format_hands_on_the_record_untouched() -> None:
    payload = fixture("mqtt_put_user_metadata.json")
    event = parse_notification(payload).events[0]
    record = event_record(event, event_format="minio", region="us-east-1", configuration_id="m")
    assert record == json.loads(payload)["Records"][0]


def test_listen_stream_line_with_a_raw_key_is_not_decoded_twice() -> None:
    lines = (FIXTURES / "minio" / "listen_stream_ping10.ndjson").read_bytes().splitlines()
    assert parse_notification(lines[0]).events == []
    assert parse_notification(lines[0]).shape == "empty"
    event = parse_notification(lines[1]).events[0]
    assert event.key == "albums/summer 2024/café + friends ü.jpg"


def _aws_style(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "eventVersion": "2.2",
        "eventSource": "ceph:s3",
        "awsRegion": "default",
        "eventTime": "2025-06-14T10:00:00.000Z",
        "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "tester"},
        "requestParameters": {"sourceIPAddress": "10.0.0.5"},
        "responseElements": {"x-amz-request-id": "abc", "x-amz-id-2": "def"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "notif-1",
            "bucket": {"name": "media", "ownerIdentity": {"principalId": "tester"}, "arn": "arn:aws:s3:::media",
                       "id": "ceph-bucket-id"},
            "object": {"key": "raw dir/a+b.png", "size": "2048", "eTag": "0123", "sequencer": "0A",
                       "metadata": [{"key": "x-amz-meta-a", "val": "b"}], "tags": []},
        },
        "eventId": "1234", "opaqueData": "",
    }
    record.update(overrides)
    return record


def test_ceph_bare_records_with_raw_keys_and_string_size() -> None:
    payload = json.dumps({"Records": [_aws_style()]}).encode()
    parsed = parse_notification(payload)
    assert parsed.shape == "aws"
    event = parsed.events[0]
    assert event.key == "raw dir/a+b.png"
    assert event.event_name == "s3:ObjectCreated:Put"
    record = only_aws(payload)
    assert record["s3"]["object"] == {"key": "raw+dir/a%2Bb.png", "size": 2048, "eTag": "0123", "sequencer": "0A"}
    assert "eventId" not in record and "opaqueData" not in record


def test_versitygw_principal_spelling_and_raw_keys() -> None:
    record = _aws_style(eventSource="aws:s3", userIdentity={"PrincipalId": "gwuser"})
    record["s3"]["configurationId"] = "webhook-global"
    record["s3"]["object"]["size"] = 5
    record["eventName"] = "s3:ObjectCreated:Put"
    record["eventTime"] = "2025-06-14T10:00:00Z"
    for payload in (json.dumps({"Records": [record]}).encode(), json.dumps([record]).encode()):
        aws = only_aws(payload)
        assert aws["userIdentity"] == {"principalId": "gwuser"}
        assert aws["s3"]["object"]["key"] == "raw+dir/a%2Bb.png"
        assert aws["eventName"] == "ObjectCreated:Put"


def test_rustfs_mqtt_records_nested_under_data() -> None:
    inner = json.loads(fixture("mqtt_put_encoded_key.json"))["Records"][0]
    inner["eventSource"] = "rustfs:s3"
    inner["eventVersion"] = "2.1"
    payload = json.dumps({
        "EventName": "s3:ObjectCreated:Put",
        "Key": "photos/albums/summer 2024/café + friends ü.jpg",
        "Records": [{"object_name": "albums/summer 2024/café + friends ü.jpg", "bucket_name": "photos",
                     "event_name": "s3:ObjectCreated:Put", "data": inner}],
    }).encode()
    parsed = parse_notification(payload)
    assert parsed.shape == "rustfs-mqtt"
    assert parsed.events[0].key == "albums/summer 2024/café + friends ü.jpg"
    assert only_aws(payload)["s3"]["object"]["key"] == "albums/summer+2024/caf%C3%A9+%2B+friends+%C3%BC.jpg"
    minio = event_record(parsed.events[0], event_format="minio", region="r", configuration_id="c")
    assert minio == inner


def test_ipv6_source_address_in_brackets_is_accepted() -> None:
    record = _aws_style(requestParameters={"sourceIPAddress": "[::1]"})
    assert only_aws(json.dumps({"Records": [record]}).encode())["requestParameters"] == {"sourceIPAddress": "::1"}


# -- SeaweedFS ------------------------------------------------------------------------------------


def test_seaweedfs_create_becomes_object_created_put() -> None:
    record = only_aws(fixture("webhook_create_object.json"))
    assert record["eventName"] == "ObjectCreated:Put"
    assert record["s3"]["bucket"]["name"] == "photos"
    obj = record["s3"]["object"]
    assert obj["key"] == "x/y+z.jpg"
    assert obj["size"] == 11
    assert obj["eTag"] == hashlib.md5(b"hello world").hexdigest()
    # sequencer: the newest chunk's modification time in ns, 16 upper-case hex digits
    assert obj["sequencer"] == f"{1795753087191441812:016X}"
    assert record["eventTime"] == "2026-11-27T04:18:07.191Z"
    assert record["userIdentity"] == {"principalId": "admin"}


def test_seaweedfs_delete_has_no_size_and_sorts_after_the_create() -> None:
    created = only_aws(fixture("webhook_create_object.json"))["s3"]["object"]
    deleted_record = only_aws(fixture("webhook_delete_object.json"))
    assert deleted_record["eventName"] == "ObjectRemoved:Delete"
    deleted = deleted_record["s3"]["object"]
    assert "size" not in deleted and "eTag" not in deleted
    assert deleted["sequencer"] > created["sequencer"]


def test_seaweedfs_request_id_is_stable_across_redeliveries() -> None:
    first = parse_notification(fixture("webhook_create_object.json")).events[0]
    again = parse_notification(fixture("webhook_create_object.json")).events[0]
    assert first.request_id == again.request_id and len(first.request_id) == 16


def _seaweed(kind: str, **message: Any) -> bytes:
    return json.dumps({"event_type": kind, "key": message.pop("key", "/buckets/photos/a.jpg"),
                       "message": message}).encode()


def _entry(name: str, **attributes: Any) -> dict[str, Any]:
    return {"name": name, "attributes": {"file_size": 3, "mtime": 1700000000, **attributes},
            "extended": {}}


def test_seaweedfs_update_is_an_overwrite_put_with_md5_etag() -> None:
    md5 = hashlib.md5(b"abc").digest()
    payload = _seaweed("update", key="/buckets/photos/a.jpg", old_entry=_entry("a.jpg"),
                       new_entry=_entry("a.jpg", md5=base64.b64encode(md5).decode()),
                       new_parent_path="/buckets/photos")
    record = only_aws(payload)
    assert record["eventName"] == "ObjectCreated:Put"
    assert record["s3"]["object"]["eTag"] == md5.hex()
    assert record["s3"]["object"]["sequencer"] == f"{1700000000 * 10**9:016X}"


def test_seaweedfs_rename_is_a_removal_then_a_creation() -> None:
    payload = _seaweed("rename", key="/buckets/photos/old name.jpg", old_entry=_entry("old name.jpg"),
                       new_entry=_entry("new.jpg", file_size=0), new_parent_path="/buckets/photos/moved")
    events = parse_notification(payload, store="seaweedfs").events
    assert [(e.event_name, e.key) for e in events] == [
        ("s3:ObjectRemoved:Delete", "old name.jpg"), ("s3:ObjectCreated:Put", "moved/new.jpg")]
    created = aws_record(events[1], region="r", configuration_id="c")
    assert created["s3"]["object"]["size"] == 0
    assert created["s3"]["object"]["eTag"] == hashlib.md5(b"").hexdigest()


@pytest.mark.parametrize(
    ("key", "entry"),
    [
        ("/buckets/photos/albums", {"name": "albums", "is_directory": True, "attributes": {}}),
        ("/buckets/photos", {"name": "photos", "is_directory": True, "attributes": {}}),
        ("/buckets/photos/.uploads/123/0001.part", _entry("0001.part")),
        ("/buckets/photos/a.jpg.versions/v_1", _entry("v_1")),
        ("/etc/iam/identity.json", _entry("identity.json")),
    ],
)
def test_seaweedfs_directories_and_s3_internals_are_skipped(key: str, entry: dict[str, Any]) -> None:
    parsed = parse_notification(_seaweed("create", key=key, new_entry=entry))
    assert parsed.shape == "seaweedfs"
    assert parsed.events == []
    assert parsed.note


def test_split_bucket_path() -> None:
    assert split_bucket_path("/buckets/b/k/with/slashes") == ("b", "k/with/slashes")
    assert split_bucket_path("/buckets/b/") is None
    assert split_bucket_path("/other/b/k") is None


# -- payloads that are not notifications -------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"hello", "not JSON"),
        (b"\xff\xfe\x00", "not JSON (not UTF-8 text)"),
        (b"42", "not an object with Records"),
        (b'{"EventName": "s3:ObjectCreated:Put"}', "without Records"),
        (b'{"Records": {"a": 1}}', "Records is not a list"),
        (b'{"Records": [1]}', "Records[0] is not an object"),
        (b'{"Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {"object": {"key": "k"}}}]}',
         "s3.bucket.name"),
        (b'{"Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": "b"}}}]}',
         "s3.object.key"),
        (b'{"Records": [{"s3": {"bucket": {"name": "b"}, "object": {"key": "k"}}}]}', "eventName"),
        (b'{"Records": [{"eventName": "x", "s3": {"bucket": {"name": "b"}, "object": {"key": "k", "size": "big"}}}]}',
         "size is not a number"),
        (b'{"event_type": "chmod", "key": "/buckets/b/k", "message": {}}', "not create, update, delete or rename"),
        (b'{"event_type": "create", "key": "/buckets/b/k", "message": {}}', "without new_entry"),
    ],
)
def test_malformed_payloads_say_why(payload: bytes, reason: str) -> None:
    with pytest.raises(MalformedNotification, match=re.escape(reason)):
        parse_notification(payload)


def test_seaweedfs_store_refuses_other_shapes() -> None:
    with pytest.raises(MalformedNotification, match="event_type, key and message"):
        parse_notification(fixture("mqtt_put_encoded_key.json"), store="seaweedfs")


def test_test_events_and_keepalives_hold_no_records() -> None:
    test_event = b'{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"Test-Bucket"}'
    assert parse_notification(test_event).events == []
    assert parse_notification(b'{"Records": []}').events == []
    assert parse_notification(b'{"Records": null}').note == "keep-alive"
