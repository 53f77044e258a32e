"""Bucket notifications from any S3-compatible store, turned into the records AWS S3 would send.

Every store speaks a dialect: MinIO wraps each record in `{"EventName","Key","Records"}` and
escapes `/` in keys; Ceph RGW and versitygw send bare `{"Records": [...]}` with raw keys; RustFS's
MQTT target nests each record under `data`; SeaweedFS has no S3 notifications at all, only filer
metadata webhooks. Handlers written for Lambda expect exactly one shape, so the shape is detected
from the payload here and every record becomes an `ObjectEvent`, from which the AWS record is
rebuilt field by field (reference 3.1's MinIO→AWS table) or, with `event_format: minio`, the
record the store sent is handed on untouched.

Decisions where AWS has no counterpart (documented in the README):
* A key is decoded once (`unquote_plus`, or taken raw where the store does not encode it) and
  re-encoded the AWS way, `quote_plus(key, safe="/")`; matching uses the decoded key.
* MinIO omits `size` for zero-byte objects (Go `omitempty`); AWS always sends `size` and `eTag` on
  creates, so a missing size on a non-removal event means 0. Removal events carry neither.
* MinIO's `s3:ObjectRemoved:NoOP` (a DELETE of a missing key) becomes `ObjectRemoved:Delete`, the
  event S3 reports for every successful DeleteObject call; the original name still drives matching.
* Internal events (MinIO ILM: `requestParameters` null) get `sourceIPAddress` "s3.amazonaws.com",
  which is what S3 puts on service-initiated events.
* SeaweedFS events carry no request id, client address or event time for deletes; the request id
  is derived from the entry (stable across the filer's retries, so deduplication works), the
  address is "0.0.0.0" (unknown), and a delete's sequencer sorts just after the version it removed.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote_plus, unquote_plus

Store = Literal["auto", "seaweedfs"]
Shape = Literal["minio", "aws", "rustfs-mqtt", "seaweedfs", "empty"]

# Names AWS never sends, mapped to the event S3 reports for the same operation.
_AWS_EVENT_NAMES = {"ObjectRemoved:NoOP": "ObjectRemoved:Delete"}
# Optional AWS blocks kept when a store already sends them in AWS's own shape.
_AWS_EXTRAS = ("glacierEventData", "replicationEventData", "intelligentTieringEventData", "lifecycleEventData")
SERVICE_SOURCE = "s3.amazonaws.com"
UNKNOWN_ADDRESS = "0.0.0.0"
SEAWEEDFS_BUCKETS_DIR = "/buckets/"
_EMPTY_MD5 = hashlib.md5(b"").hexdigest()


class MalformedNotification(ValueError):
    """The payload is not a bucket notification we can read; the message says why (no payload)."""


@dataclass(frozen=True)
class ObjectEvent:
    """One object event, store-neutral. `key` is decoded; `event_name` keeps the `s3:` prefix used
    by bucket notification configurations (s3:ObjectCreated:Put), whatever the store sent."""

    bucket: str
    key: str
    event_name: str
    event_time: str
    principal_id: str = ""
    source_ip: str = SERVICE_SOURCE
    request_id: str = ""
    host_id: str = ""
    owner_principal_id: str = ""
    size: int | None = None
    etag: str | None = None
    version_id: str | None = None
    sequencer: str | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)
    # The record exactly as the store sent it (event_format: minio), when there was one.
    original: Mapping[str, Any] | None = None

    @property
    def aws_event_name(self) -> str:
        name = self.event_name.removeprefix("s3:")
        return _AWS_EVENT_NAMES.get(name, name)

    @property
    def is_removal(self) -> bool:
        return self.aws_event_name.startswith(("ObjectRemoved:", "LifecycleExpiration:"))


@dataclass(frozen=True)
class ParsedNotification:
    shape: Shape
    events: list[ObjectEvent]
    # Why a well-formed payload carries no object event (a ping, a directory entry...), for logs.
    note: str = ""


# -- encoding helpers ----------------------------------------------------------------------------


def aws_key(key: str) -> str:
    """The key as AWS puts it in an event: form-encoded (space → +), `/` kept."""
    return quote_plus(key, safe="/")


def aws_record(event: ObjectEvent, *, region: str, configuration_id: str) -> dict[str, Any]:
    """The record AWS S3 would have sent for `event` (field order as AWS sends it)."""
    obj: dict[str, Any] = {"key": aws_key(event.key)}
    if not event.is_removal:
        obj["size"] = event.size if event.size is not None else 0
        obj["eTag"] = event.etag if event.etag is not None else ""
    if event.version_id:
        obj["versionId"] = event.version_id
    if event.sequencer:
        obj["sequencer"] = event.sequencer
    record: dict[str, Any] = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": region,
        "eventTime": event.event_time,
        "eventName": event.aws_event_name,
        "userIdentity": {"principalId": event.principal_id},
        "requestParameters": {"sourceIPAddress": event.source_ip},
        "responseElements": {"x-amz-request-id": event.request_id, "x-amz-id-2": event.host_id},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": configuration_id,
            "bucket": {
                "name": event.bucket,
                "ownerIdentity": {"principalId": event.owner_principal_id},
                "arn": f"arn:aws:s3:::{event.bucket}",
            },
            "object": obj,
        },
    }
    record.update(event.extras)
    return record


def event_record(
    event: ObjectEvent, *, event_format: Literal["aws", "minio"], region: str, configuration_id: str
) -> dict[str, Any]:
    """The record a mapping's function receives. `minio` hands on what the store sent; SeaweedFS
    sends no S3 record at all, so its events are always AWS-shaped."""
    if event_format == "minio" and event.original is not None:
        return dict(event.original)
    return aws_record(event, region=region, configuration_id=configuration_id)


def format_event_time(moment: datetime) -> str:
    """AWS's eventTime: UTC with milliseconds, e.g. 2025-06-14T09:15:02.471Z."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# -- detection -----------------------------------------------------------------------------------


def parse_notification(payload: bytes, *, store: Store = "auto") -> ParsedNotification:
    """Detect the payload's shape and read every object event in it; raises MalformedNotification."""
    try:
        document = json.loads(payload)
    except UnicodeDecodeError:
        raise MalformedNotification("not JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise MalformedNotification(f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if store == "seaweedfs" or _looks_like_seaweedfs(document):
        return parse_seaweedfs(document)
    if isinstance(document, list):  # versitygw before its {"Records": [...]} envelope
        return _parse_records(document, envelope=None)
    if not isinstance(document, dict):
        raise MalformedNotification(f"JSON {type(document).__name__}, not an object with Records")
    if "Records" not in document:
        if document.get("Event") == "s3:TestEvent":
            return ParsedNotification("empty", [], note="s3:TestEvent")
        raise MalformedNotification("JSON object without Records")
    records = document["Records"]
    if records is None:  # MinIO's ListenNotification keep-alive
        return ParsedNotification("empty", [], note="keep-alive")
    if not isinstance(records, list):
        raise MalformedNotification("Records is not a list")
    return _parse_records(records, envelope=document)


def _looks_like_seaweedfs(document: Any) -> bool:
    return isinstance(document, dict) and "event_type" in document and "message" in document


def _parse_records(records: list[Any], *, envelope: Mapping[str, Any] | None) -> ParsedNotification:
    minio_envelope = envelope is not None and ("EventName" in envelope or "Key" in envelope)
    shape: Shape = "minio" if minio_envelope else "aws"
    events: list[ObjectEvent] = []
    for index, item in enumerate(records):
        where = f"Records[{index}]"
        if not isinstance(item, dict):
            raise MalformedNotification(f"{where} is not an object")
        raw_key: str | None = None
        if "s3" not in item and isinstance(item.get("data"), dict):
            # RustFS MQTT: {"object_name","bucket_name","event_name","data": {record}}; the record's
            # own key is encoded like MinIO's, which is documented, so that is the one decoded.
            shape = "rustfs-mqtt"
            item = item["data"]
            where += ".data"
        elif minio_envelope and len(records) == 1 and envelope is not None:
            raw_key = _envelope_key(envelope, item)
        events.append(_parse_record(item, where, raw_key))
    return ParsedNotification(shape, events, note="" if events else "no records")


def _envelope_key(envelope: Mapping[str, Any], record: Mapping[str, Any]) -> str | None:
    """MinIO's envelope `Key` is `<bucket>/<object>` already decoded: the most faithful key there is."""
    key = envelope.get("Key")
    bucket = _get(record, "s3", "bucket", "name")
    if isinstance(key, str) and isinstance(bucket, str) and key.startswith(bucket + "/"):
        return key[len(bucket) + 1 :]
    return None


def _get(document: Any, *path: str) -> Any:
    for step in path:
        if not isinstance(document, dict):
            return None
        document = document.get(step)
    return document


def _text(record: Mapping[str, Any], where: str, *path: str) -> str:
    value = _get(record, *path)
    if not isinstance(value, str) or not value:
        raise MalformedNotification(f"{where}.{'.'.join(path)} is missing or not a string")
    return value


def _optional_text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _size(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise MalformedNotification(f"{where}.s3.object.size is not a number")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.isdigit():  # older Ceph RGW sends it as a string
        return int(value)
    raise MalformedNotification(f"{where}.s3.object.size is not a number")


def _raw_keys(record: Mapping[str, Any], key: str) -> bool:
    """Ceph RGW and versitygw put the key in the record unencoded; MinIO, RustFS and AWS encode it.
    MinIO's ListenNotification stream does not encode either, but a QueryEscaped key can never
    hold a `/` or a space, so such a key from MinIO or RustFS is taken as it is."""
    source = record.get("eventSource")
    config_id = _get(record, "s3", "configurationId")
    if source == "ceph:s3" or (isinstance(config_id, str) and config_id.endswith("-global")):
        return True
    return source in ("minio:s3", "rustfs:s3") and any(c in key for c in "/ ")


def _filled_in(value: Any) -> bool:
    """Whether an extra block (`glacierEventData`, ...) says something: a non-empty object whose
    every leaf has a value. S3 sends these blocks only on the events they describe (a restore, a
    replication); RustFS and versitygw send `glacierEventData` with empty strings on every PUT, which
    S3 never does and which powertools' `S3Model` rejects (an empty `lifecycleRestorationExpiryTime`
    is not a datetime). Such a block is dropped rather than passed on zero-valued."""
    if not isinstance(value, dict) or not value:
        return False
    return all(_filled_in(v) if isinstance(v, dict) else v not in (None, "") for v in value.values())


def _source_ip(record: Mapping[str, Any]) -> str:
    params = record.get("requestParameters")
    if not isinstance(params, dict):
        return SERVICE_SOURCE  # internal (ILM, replication, scanner) events have none
    address = params.get("sourceIPAddress")
    if not isinstance(address, str):
        return SERVICE_SOURCE
    return _normalised_ip(address)


@functools.lru_cache(maxsize=1024)
def _normalised_ip(address: str) -> str:
    """Cached: a store sees few client addresses, and ipaddress parsing was ~6% of the push hot path."""
    address = address.strip().removeprefix("[").removesuffix("]")  # MinIO writes IPv6 as [::1]
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return SERVICE_SOURCE


def _parse_record(record: Mapping[str, Any], where: str, raw_key: str | None) -> ObjectEvent:
    name = _text(record, where, "eventName")
    bucket = _text(record, where, "s3", "bucket", "name")
    encoded = _get(record, "s3", "object", "key")
    if not isinstance(encoded, str):
        raise MalformedNotification(f"{where}.s3.object.key is missing or not a string")
    if raw_key is not None:
        key = raw_key
    elif _raw_keys(record, encoded):
        key = encoded
    else:
        key = unquote_plus(encoded)
    if not key:
        raise MalformedNotification(f"{where}.s3.object.key is empty")
    obj = _get(record, "s3", "object")
    obj = obj if isinstance(obj, dict) else {}
    # versitygw spells it PrincipalId.
    principal = _get(record, "userIdentity", "principalId") or _get(record, "userIdentity", "PrincipalId")
    principal = principal if isinstance(principal, str) else ""
    if not principal and record.get("requestParameters") is None:
        principal = SERVICE_SOURCE  # an internal event: S3 itself did it
    owner = _get(record, "s3", "bucket", "ownerIdentity", "principalId")
    response = record.get("responseElements")
    response = response if isinstance(response, dict) else {}
    event_time = record.get("eventTime")
    if not isinstance(event_time, str) or not event_time:
        event_time = format_event_time(datetime.now(UTC))
    return ObjectEvent(
        bucket=bucket,
        key=key,
        event_name=name if name.startswith("s3:") else f"s3:{name}",
        event_time=event_time,
        principal_id=principal,
        source_ip=_source_ip(record),
        request_id=str(response.get("x-amz-request-id") or ""),
        host_id=str(response.get("x-amz-id-2") or ""),
        owner_principal_id=owner if isinstance(owner, str) else principal,
        size=_size(obj.get("size"), where),
        etag=_optional_text(obj.get("eTag")),
        version_id=_optional_text(obj.get("versionId")),
        sequencer=_optional_text(obj.get("sequencer")),
        extras={k: record[k] for k in _AWS_EXTRAS if _filled_in(record.get(k))},
        original=record,
    )


# -- SeaweedFS filer webhook ---------------------------------------------------------------------


def parse_seaweedfs(document: Any) -> ParsedNotification:
    """A filer metadata event as S3 object events: create/update → ObjectCreated:Put, delete →
    ObjectRemoved:Delete, rename → both. Directory entries and S3 internals yield nothing."""
    if not isinstance(document, dict):
        raise MalformedNotification("SeaweedFS body is not a JSON object")
    kind = document.get("event_type")
    path = document.get("key")
    message = document.get("message")
    if not isinstance(kind, str) or not isinstance(path, str) or not isinstance(message, dict):
        raise MalformedNotification("SeaweedFS body needs event_type, key and message")
    old_entry = message.get("old_entry")
    new_entry = message.get("new_entry")
    sides: list[tuple[str, dict[str, Any], str]] = []
    if kind in ("create", "update"):
        if not isinstance(new_entry, dict):
            raise MalformedNotification(f"SeaweedFS {kind} event without new_entry")
        sides.append(("s3:ObjectCreated:Put", new_entry, _new_path(message, new_entry, path)))
    elif kind == "delete":
        if not isinstance(old_entry, dict):
            raise MalformedNotification("SeaweedFS delete event without old_entry")
        sides.append(("s3:ObjectRemoved:Delete", old_entry, path))
    elif kind == "rename":
        if not isinstance(old_entry, dict) or not isinstance(new_entry, dict):
            raise MalformedNotification("SeaweedFS rename event without old_entry and new_entry")
        sides.append(("s3:ObjectRemoved:Delete", old_entry, path))
        sides.append(("s3:ObjectCreated:Put", new_entry, _new_path(message, new_entry, path)))
    else:
        raise MalformedNotification(f"SeaweedFS event_type {kind!r} is not create, update, delete or rename")
    events: list[ObjectEvent] = []
    skipped: list[str] = []
    for name, entry, entry_path in sides:
        event = _seaweedfs_event(name, entry, entry_path, message)
        if isinstance(event, str):
            skipped.append(event)
        else:
            events.append(event)
    return ParsedNotification("seaweedfs", events, note="; ".join(skipped))


def _new_path(message: Mapping[str, Any], entry: Mapping[str, Any], fallback: str) -> str:
    parent = message.get("new_parent_path")
    name = entry.get("name")
    if isinstance(parent, str) and parent and isinstance(name, str) and name:
        return f"{parent.rstrip('/')}/{name}"
    return fallback


def split_bucket_path(path: str) -> tuple[str, str] | None:
    """`/buckets/<bucket>/<key>` → (bucket, key); None for anything that is not an object path."""
    if not path.startswith(SEAWEEDFS_BUCKETS_DIR):
        return None
    bucket, sep, key = path[len(SEAWEEDFS_BUCKETS_DIR) :].partition("/")
    if not bucket or not sep or not key:
        return None
    return bucket, key


def _is_s3_internal(key: str) -> bool:
    """Multipart parts live under .uploads/, object versions under <key>.versions/."""
    segments = key.split("/")
    return segments[0] == ".uploads" or any(s.endswith(".versions") for s in segments)


def _b64(value: Any) -> bytes | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _seaweedfs_etag(entry: Mapping[str, Any], size: int) -> str:
    extended = entry.get("extended") if isinstance(entry.get("extended"), dict) else {}
    stored = _b64((extended or {}).get("Seaweed-X-Amz-ETag"))
    if stored:
        return stored.decode("utf-8", "replace").strip('"')
    md5 = _b64(_get(entry, "attributes", "md5"))
    if md5:
        return md5.hex()
    if size == 0:
        return _EMPTY_MD5
    chunks = entry.get("chunks")
    if isinstance(chunks, list) and len(chunks) == 1 and isinstance(chunks[0], dict):
        single = _b64(chunks[0].get("e_tag"))
        if single and len(single) == 16:
            return single.hex()
    return ""


def _mtime_ns(entry: Mapping[str, Any]) -> int:
    """Nanosecond modification time: the newest chunk's, else the entry's seconds (+ mtime_ns)."""
    chunks = entry.get("chunks")
    stamps: list[int] = []
    for chunk in chunks if isinstance(chunks, list) else []:
        stamp = chunk.get("modified_ts_ns") if isinstance(chunk, dict) else None
        if isinstance(stamp, int):
            stamps.append(stamp)
    if stamps:
        return max(stamps)
    seconds = _get(entry, "attributes", "mtime")
    nanos = _get(entry, "attributes", "mtime_ns")
    total = (seconds if isinstance(seconds, int) else 0) * 1_000_000_000
    return total + (nanos if isinstance(nanos, int) else 0)


def _seaweedfs_event(
    name: str, entry: Mapping[str, Any], path: str, message: Mapping[str, Any]
) -> ObjectEvent | str:
    if entry.get("is_directory"):
        return f"directory {path}"
    located = split_bucket_path(path)
    if located is None:
        return f"not an object path: {path}"
    bucket, key = located
    if _is_s3_internal(key):
        return f"S3 internal entry {path}"
    size_value = _get(entry, "attributes", "file_size")
    size = size_value if isinstance(size_value, int) and not isinstance(size_value, bool) else 0
    mtime_ns = _mtime_ns(entry)
    removal = name.startswith("s3:ObjectRemoved:")
    # A removal sorts right after the version it removed, so per-key ordering by sequencer holds.
    sequence = mtime_ns + 1 if removal else mtime_ns
    sequencer = f"{sequence:016X}"
    if removal:
        event_time = format_event_time(datetime.now(UTC))  # the body says when the entry changed, not when it went
    else:
        event_time = format_event_time(datetime.fromtimestamp(mtime_ns / 1e9, UTC))
    extended = entry.get("extended") if isinstance(entry.get("extended"), dict) else {}
    owner_bytes = _b64((extended or {}).get("Seaweed-X-Amz-Owner"))
    owner = owner_bytes.decode("utf-8", "replace") if owner_bytes else ""
    digest = hashlib.sha256(f"{name}\n{path}\n{sequencer}".encode()).hexdigest()
    signatures = message.get("signatures")
    host = hashlib.sha256(json.dumps(signatures, separators=(",", ":")).encode()).digest()
    return ObjectEvent(
        bucket=bucket,
        key=key,
        event_name=name,
        event_time=event_time,
        principal_id=owner,
        source_ip=UNKNOWN_ADDRESS,
        request_id=digest[:16].upper(),
        host_id=base64.b64encode(host).decode(),
        owner_principal_id=owner,
        size=None if removal else size,
        etag=None if removal else _seaweedfs_etag(entry, size),
        sequencer=sequencer,
        original=None,
    )
