"""An MQTT message as the event of an app-event mapping, shaped as an AWS IoT rule delivers it.

An IoT topic rule `SELECT * FROM '<filter>'` with a Lambda action invokes the function with the
message's JSON object as the event, nothing added (reference 5.3); `topic_key` adds the topic the
way `SELECT *, topic() AS <key>` does. IoT cannot pass a payload that is not a JSON object through
`SELECT *` (its Lambda action rejects it); its documented way is `SELECT encode(*, 'base64') AS
data`. router never drops such a message (other JSON, text, binary, empty): it is delivered as
`{"data": "<base64 of the exact bytes>", "isBase64Encoded": true, "topic": "<topic>"}`, the flag
saying explicitly that `data` is not the payload itself.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from typing import Any

import orjson


def app_event(payload: bytes, topic: str, *, topic_key: str | None) -> dict[str, Any]:
    try:
        value = orjson.loads(payload) if payload else None
    except ValueError:
        value = None
    if isinstance(value, dict):
        if topic_key is not None:
            value[topic_key] = topic
        return value
    return {"data": base64.b64encode(payload).decode("ascii"), "isBase64Encoded": True, "topic": topic}


def app_record(payload: bytes, topic: str, *, received_at: float, message_id: str) -> dict[str, Any]:
    """One message as a record of a batch (`batch_size` > 1): `{"Records": [record, ...]}`.

    IoT rules have no batches, so the record is ours: the topic, the payload (the JSON object
    itself, or the base64 of the exact bytes for anything else, with `isBase64Encoded` saying which),
    when router received it (ISO-8601 UTC, milliseconds) and an id unique to this message."""
    try:
        value = orjson.loads(payload) if payload else None
    except ValueError:
        value = None
    record: dict[str, Any] = {"topic": topic}
    if isinstance(value, dict):
        record["payload"] = value
        record["isBase64Encoded"] = False
    else:
        record["payload"] = base64.b64encode(payload).decode("ascii")
        record["isBase64Encoded"] = True
    seconds = int(received_at)
    record["receivedAt"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + \
        f".{int((received_at - seconds) * 1000):03d}Z"
    record["messageId"] = message_id
    return record


def dedup_id(payload: bytes, user_properties: Sequence[tuple[str, str]] | None, *,
             user_property: str | None, json_field: str | None) -> str | None:
    """The id a mapping names for duplicate suppression, or None when the message has none (then it
    is never suppressed): an MQTT v5 user property, or a field of a JSON object payload (dotted
    for nested fields). Never a hash of the payload: two real identical clicks are two clicks."""
    if user_property is not None:
        for key, value in user_properties or ():
            if key == user_property:
                return value
        return None
    if json_field is not None:
        try:
            found: Any = orjson.loads(payload) if payload else None
        except ValueError:
            return None
        for part in json_field.split("."):
            if not isinstance(found, dict) or part not in found:
                return None
            found = found[part]
        if isinstance(found, str | int) and not isinstance(found, bool):
            return str(found)
    return None
