"""The mobile-apps example's handler without a broker: batched and single events, malformed ones."""

import base64
import json
from typing import Any

from router.examples.clicks import count, handler


def record(payload: Any, topic: str = "app/d1/clicks", raw: bytes | None = None) -> dict[str, Any]:
    if raw is not None:
        return {"topic": topic, "payload": base64.b64encode(raw).decode(), "isBase64Encoded": True}
    return {"topic": topic, "payload": payload, "isBase64Encoded": False}


def test_counts_per_screen_and_user_in_a_batch_and_counts_malformed() -> None:
    event = {"Records": [
        record({"screen": "home", "user": "u1"}), record({"screen": "home", "user": "u1"}),
        record({"screen": "cart"}, topic="app/phone-7/clicks"),  # no user: the device
        record(None, raw=b"\xff garbage"), record({"user": "u2"}), record({"screen": 5}),
    ]}
    assert count(event) == {"messages": 6, "malformed": 3, "screens": {
        "home": {"clicks": 2, "users": {"u1": 2}}, "cart": {"clicks": 1, "users": {"phone-7": 1}}}}


def test_a_single_event_is_the_message_itself(capsys: Any) -> None:
    out = handler({"screen": "feed", "user": "u9"}, None)
    assert out["screens"] == {"feed": {"clicks": 1, "users": {"u9": 1}}}
    assert json.loads(capsys.readouterr().out)["clicks"]["messages"] == 1
    assert count({"data": "AA==", "isBase64Encoded": True, "topic": "app/d/clicks"})["malformed"] == 1
