"""Log lines are JSON with stable keys, and no secret survives into them."""

from __future__ import annotations

import io
import json
import logging
import re
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog

from router.config import load_config_data
from router.observability.logging import (
    MASK,
    configure_logging,
    redact,
    scrub_text,
    truncate_payload,
)

SECRETS = ("hunter2-kafka", "mqtt-pw-77", "s3-secret-key-xyz", "admin-tok-123", "hook-tok-456", "nested-tok-9")


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    yield stream
    # Leave structlog's defaults behind so other tests are not rendered through our handler.
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == "router-structlog"]:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    logging.captureWarnings(False)
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_carry_the_stable_keys(out: io.StringIO) -> None:
    configure_logging("info", "json", stream=out)
    structlog.get_logger("router.test").info(
        "batch.done", mapping="clicks", function="metrics", shard="shardId-000000000003",
        sequence_number="41", request_id="r-1", duration_ms=12.5, outcome="success", attempt=1,
    )
    [line] = lines(out)
    assert list(line)[:3] == ["timestamp", "level", "event"]
    assert line["event"] == "batch.done" and line["level"] == "info"
    stamp = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
    assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    for key, value in {"mapping": "clicks", "function": "metrics", "shard": "shardId-000000000003",
                       "sequence_number": "41", "request_id": "r-1", "duration_ms": 12.5,
                       "outcome": "success", "attempt": 1}.items():
        assert line[key] == value


def test_timestamps_are_utc_with_microseconds_and_lead_every_line(out: io.StringIO) -> None:
    configure_logging("info", "json", stream=out)
    log = structlog.get_logger("t")
    before = datetime.now(UTC)
    log.warn("old.alias")
    logging.getLogger("lib").error("from a library")
    after = datetime.now(UTC)
    got = lines(out)
    assert [list(g)[:3] for g in got] == [["timestamp", "level", "event"]] * 2
    assert [g["level"] for g in got] == ["warning", "error"]
    for g in got:
        # Always six fractional digits and a Z, even on a whole second (isoformat drops them).
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", g["timestamp"])
        stamp = datetime.fromisoformat(g["timestamp"].replace("Z", "+00:00"))
        assert before - timedelta(milliseconds=1) <= stamp <= after + timedelta(milliseconds=1)


def test_every_value_renders_including_what_orjson_refuses(out: io.StringIO) -> None:
    configure_logging("info", "json", stream=out)
    log = structlog.get_logger("t")
    log.info("plain", n=1, ratio=0.5, ok=True, none=None, items=[1, "two"], nested={"a": {"b": 2}}, text="café")
    log.info("int.keys", counts={404: 2, 500: 1})
    log.info("huge", offset=2**70)  # past 64 bits: orjson refuses, json renders
    got = lines(out)
    assert [g["event"] for g in got] == ["plain", "int.keys", "huge"]
    assert got[0]["items"] == [1, "two"] and got[0]["nested"] == {"a": {"b": 2}} and got[0]["text"] == "café"
    assert got[0]["ratio"] == 0.5 and got[0]["ok"] is True and got[0]["none"] is None
    assert got[1]["counts"] == {"404": 2, "500": 1}
    assert got[2]["offset"] == 2**70
    assert "café" in out.getvalue()  # UTF-8 as is, not \u escapes


def test_level_filters_and_stdlib_goes_through_the_same_chain(out: io.StringIO) -> None:
    configure_logging("info", "json", stream=out)
    log = structlog.get_logger("router.test")
    log.debug("not.shown")
    log.warning("shown", error_type="TimeoutError")
    logging.getLogger("some.library").warning("lost connection to %s", "broker:9092")
    logging.getLogger("aiokafka.conn").info("chatty per-poll line")  # held at WARNING unless debug
    warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)
    got = lines(out)
    assert [g["event"] for g in got][:2] == ["shown", "lost connection to broker:9092"]
    assert got[1]["level"] == "warning" and got[1]["logger"] == "some.library"
    assert "timestamp" in got[1]
    assert any(g.get("logger") == "py.warnings" and "deprecated thing" in g["event"] for g in got)
    assert not any("chatty" in g["event"] or g["event"] == "not.shown" for g in got)


def test_debug_level_shows_debug_lines(out: io.StringIO) -> None:
    configure_logging("DEBUG", "json", stream=out)
    structlog.get_logger("t").debug("now.shown")
    assert lines(out)[0]["level"] == "debug"


def test_unknown_level_is_refused(out: io.StringIO) -> None:
    with pytest.raises(ValueError, match="log level"):
        configure_logging("loud", "json", stream=out)


def test_exceptions_render_as_text_with_secrets_scrubbed(out: io.StringIO) -> None:
    configure_logging("info", "json", stream=out)
    try:
        raise ConnectionError("could not reach kafka://router:hunter2-kafka@broker:9092")
    except ConnectionError:
        structlog.get_logger("t").exception("kafka.connect_failed", error_type="ConnectionError")
        logging.getLogger("lib").exception("stdlib saw it too")
    got = lines(out)
    assert "ConnectionError" in got[0]["exception"] and "Traceback" in got[0]["exception"]
    assert "ConnectionError" in got[1]["exception"]
    assert "hunter2-kafka" not in out.getvalue()


def test_no_secret_reaches_stdout(out: io.StringIO, capsys: pytest.CaptureFixture[str]) -> None:
    """Keys naming secrets, nested secrets, SecretStr from the config, URLs and headers: all masked."""
    configure_logging("debug", "json")  # the real stdout, as in production
    config = load_config_data({
        "kafka": {"bootstrap_servers": "k:9092", "security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
                  "sasl_username": "router", "sasl_password": SECRETS[0]},
        "mqtt": {"password": SECRETS[1], "username": "u"},
        "s3": {"access_key_id": "AKIA", "secret_access_key": SECRETS[2]},
        "http": {"listen": "0.0.0.0:9000", "admin_token": SECRETS[3], "webhook_token": SECRETS[4]},
    })
    log = structlog.get_logger("router.test")
    log.info(
        "startup", password=SECRETS[1], api_token=SECRETS[3],
        settings={"kafka": {"sasl_password": SECRETS[0]}, "list": [{"Authorization": f"Bearer {SECRETS[5]}"}]},
        kafka=config.kafka, mqtt_password=config.mqtt.password if config.mqtt else None,
        http=config.http, s3=config.s3,
    )
    log.info("webhook.headers", headers={"authorization": f"Bearer {SECRETS[4]}", "content-type": "json"})
    log.info(f"raw text with token={SECRETS[5]} and Bearer {SECRETS[3]}")
    log.debug("handler.event", payload={"headers": {"Authorization": f"Bearer {SECRETS[3]}"}, "x": 1})
    logging.getLogger("aiokafka").error("SASL failed for sasl_password=%s", SECRETS[0])
    log.info("config", config=config)
    captured = capsys.readouterr().out
    assert captured.count("\n") == 6
    for secret in SECRETS:
        assert secret not in captured, secret
    first = json.loads(captured.splitlines()[0])
    assert first["password"] == MASK
    assert first["settings"]["kafka"]["sasl_password"] == MASK
    assert first["kafka"]["sasl_password"] == MASK
    assert first["kafka"]["bootstrap_servers"] == "k:9092"  # ordinary values stay readable
    assert first["mqtt_password"] == MASK
    assert first["http"]["listen"] == "0.0.0.0:9000"


def test_payloads_only_at_debug_and_truncated(out: io.StringIO) -> None:
    configure_logging("debug", "json", stream=out)
    log = structlog.get_logger("t")
    big = {"Records": [{"s3": {"object": {"key": "k" * 5000}}}]}
    log.info("invoke", payload=big, records=3)
    log.debug("invoke", payload=big)
    info, debug = lines(out)
    assert info["payload"].endswith("debug only>") and "kkk" not in info["payload"]
    assert info["records"] == 3  # a count is not a payload
    assert debug["payload"].startswith('{"Records"')
    assert len(debug["payload"]) < 600 and debug["payload"].endswith("more chars]")
    # Payloads that arrive as text or bytes are payloads too.
    log.info("webhook", body='{"EventName": "s3:ObjectCreated:Put", "Key": "secret-plan.pdf"}', payload=b"raw bytes")
    text = lines(out)[2]
    assert text["body"] == "<63 bytes, debug only>" and text["payload"] == "<9 bytes, debug only>"
    assert "secret-plan" not in out.getvalue().splitlines()[2]


def test_console_format_is_readable_and_redacted(out: io.StringIO) -> None:
    configure_logging("info", "console", stream=out)
    structlog.get_logger("t").info("console.line", mapping="clicks", password="pw-console-1")
    text = out.getvalue()
    assert "console.line" in text and "mapping=clicks" in text
    assert "pw-console-1" not in text
    assert not text.lstrip().startswith("{")


def test_auto_format_is_json_when_not_a_tty(out: io.StringIO) -> None:
    configure_logging("info", "auto", stream=out)
    structlog.get_logger("t").info("auto")
    assert lines(out)[0]["event"] == "auto"


def test_reconfiguring_replaces_only_our_handler(out: io.StringIO) -> None:
    configure_logging("info", "json", stream=out)
    configure_logging("info", "json", stream=out)
    structlog.get_logger("t").info("once")
    assert len(lines(out)) == 1


def test_redact_and_scrub_helpers() -> None:
    assert scrub_text("mqtt://user:pa55@host:1883/x") == f"mqtt://user:{MASK}@host:1883/x"
    assert scrub_text("Authorization: Bearer abcdef123") == f"Authorization: {MASK} {MASK}"
    assert scrub_text("sasl handshake failed") == "sasl handshake failed"
    assert redact({"token": None, "require_token": True, "n": 3}) == {
        "token": None, "require_token": True, "n": 3}
    assert redact((1, {"Secret-Key": "x"})) == [1, {"Secret-Key": MASK}]


def test_truncate_payload_shapes() -> None:
    assert truncate_payload(b'{"password": "p", "a": 1}') == f'{{"password":"{MASK}","a":1}}'
    assert truncate_payload("abc" * 10, limit=6) == "abcabc...[24 more chars]"
    assert truncate_payload(b"\xff\xfe not json") .endswith("not json")
