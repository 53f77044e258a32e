"""How the worker turns an INVOKE's event into the handler's argument, and refuses what it cannot read."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from typing import Any

from router.config import load_config_data
from router.events.kinesis import KinesisEventBuilder
from router.runtime import errors, protocol, worker


def _invoke(event: bytes, event_format: int, handler: Any) -> protocol.Result:
    # In-process: the test runner's own memory counts, hence the largest memory size.
    spec = protocol.WorkerSpec(
        function_name="f", handler="m.handler", memory_size_mb=10240, timeout_seconds=3, environment={},
        log_stream_name="s", parent_pid=os.getpid(), task_root=".",
    )
    ours, theirs = socket.socketpair()
    with ours, theirs:
        fd = os.dup(theirs.fileno())
        runtime = worker._Runtime(worker._Inbox(fd), spec)
        frame = protocol.encode_invoke("r-1", int(time.time() * 1000) + 3000, "arn", b"", event, event_format)
        runtime.invoke(handler, protocol.decode_invoke(frame[4:]))
        os.close(fd)
        ours.setblocking(False)
        decoder = protocol.FrameDecoder()
        messages: list[bytes] = []
        with contextlib.suppress(BlockingIOError):
            while data := ours.recv(1 << 16):
                messages.extend(decoder.feed(data))
    *logs, result = messages  # an error is logged before its RESULT, as on Lambda
    assert all(m[0] == protocol.LOG for m in logs)
    assert result[0] == protocol.RESULT and decoder.pending_bytes == 0
    return protocol.decode_result(result)


def test_a_packed_stream_batch_reaches_the_handler_as_the_json_event_would() -> None:
    config = load_config_data({"functions": {"f": {"handler": "m.handler"}}})
    builder = KinesisEventBuilder(config, topic="clicks", function="f", partition=2)
    records = [builder.stream_record(o, b"user-1", b'{"n": %d}' % o, 1_700_000_000_123) for o in (5, 6)]
    seen: list[Any] = []
    result = _invoke(builder.pack(records).body, protocol.EVENT_KINESIS_BATCH,
                     lambda event, context: seen.append(event))
    assert result.error_type is None
    assert seen == [builder.event(records)]
    assert json.dumps(seen[0]) == json.dumps(json.loads(json.dumps(builder.event(records))))


def test_an_unreadable_event_is_lambdas_unmarshal_error_not_a_crash() -> None:
    def never(event: Any, context: Any) -> None:
        raise AssertionError("the handler must not run")

    for body, event_format in ((b"{not json", protocol.EVENT_JSON), (b"\x00\x00", protocol.EVENT_KINESIS_BATCH),
                               (b"{}", 99)):
        result = _invoke(body, event_format, never)
        assert result.error_type == errors.UNMARSHAL_ERROR, (body, event_format)
        assert json.loads(result.body)["errorMessage"].startswith("Unable to unmarshal input")


def test_huge_error_text_is_cut_to_the_bound_keeping_the_innermost_frames() -> None:
    small = errors.error_payload("boom", "ValueError", "r-1", ["frame 1", "frame 2"])
    assert worker._bounded_error(small) is small
    limit = worker._MAX_ERROR_TEXT
    trace = [f"frame {i}: " + "t" * 1000 for i in range(1000)]  # ~1 MB of trace
    cut = worker._bounded_error(errors.error_payload("m" * (limit + 10), "ValueError", "r-1", trace))
    assert cut["errorMessage"] == "m" * limit + "... [truncated 10 characters]"
    assert cut["stackTrace"] == trace[-len(cut["stackTrace"]):]  # a tail, in order
    assert sum(map(len, cut["stackTrace"])) <= limit < sum(map(len, trace[-len(cut["stackTrace"]) - 1:]))
    assert cut["errorType"] == "ValueError" and cut["requestId"] == "r-1"
