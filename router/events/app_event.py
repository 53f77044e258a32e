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
