"""Pure parts of the worker pool: message framing, Lambda's error wording, event encoding, and the
Lambda-style lines `router invoke` prints."""

from __future__ import annotations

import os
import signal
import struct
import uuid
from multiprocessing.connection import Connection, Pipe

import pytest

from router.commands.invoke import lambda_text
from router.runtime import errors, protocol
from router.runtime.pool import encode_event, is_throttled
from router.runtime.request_ids import RequestIds, request_ids
from router.runtime.result import InvocationResult


def test_encode_decode_round_trip() -> None:
    message = protocol.encode(protocol.INVOKE, {"id": "r-1", "deadline_ms": 5}, b'{"a":1}')
    frame = protocol.decode(message)
    assert frame.kind == protocol.INVOKE
    assert frame.header == {"id": "r-1", "deadline_ms": 5}
    assert frame.body == b'{"a":1}'


def test_decoder_reassembles_messages_split_and_merged_across_reads() -> None:
    messages = [protocol.encode(protocol.LOG, {"n": i}, b"x" * (i * 1000)) for i in range(5)]
    stream = b"".join(protocol.wire(m) for m in messages)
    decoder = protocol.FrameDecoder()
    received: list[bytes] = []
    for cut in range(0, len(stream), 777):  # arbitrary read sizes
        received.extend(decoder.feed(stream[cut : cut + 777]))
    assert received == messages
    assert decoder.pending_bytes == 0


def test_decoder_understands_the_long_length_form() -> None:
    body = b"y" * 10
    stream = struct.pack("!i", -1) + struct.pack("!Q", len(body)) + body
    decoder = protocol.FrameDecoder()
    assert decoder.feed(stream[:7]) == []
    assert decoder.feed(stream[7:]) == [body]


def test_a_limited_decoder_refuses_an_oversized_message_from_its_header_alone() -> None:
    limits = {protocol.RESULT: 1000, protocol.LOG: 100}
    ok = [protocol.wire(bytes([protocol.RESULT]) + b"r" * 999), protocol.wire(bytes([protocol.LOG]) + b"l" * 99)]
    decoder = protocol.FrameDecoder(limits, default_limit=10)
    assert decoder.feed(b"".join(ok)) == [bytes([protocol.RESULT]) + b"r" * 999, bytes([protocol.LOG]) + b"l" * 99]
    for kind, size in ((protocol.RESULT, 1001), (protocol.LOG, 101), (ord("?"), 11), (protocol.RESULT, 2**40)):
        decoder = protocol.FrameDecoder(limits, default_limit=10)
        header = protocol.length_prefix(size) + bytes([kind])
        assert decoder.feed(header[:-1]) == []  # the length alone does not say whose limit applies
        with pytest.raises(protocol.FrameTooLarge) as refused:
            decoder.feed(header[-1:])  # nothing of the body has arrived, nothing is buffered for it
        assert (refused.value.kind, refused.value.size) == (kind, size)
        with pytest.raises(protocol.FrameTooLarge):  # also when it comes whole in one read
            protocol.FrameDecoder(limits, default_limit=10).feed(protocol.length_prefix(size) + bytes([kind]) * size
                                                               if size < 2000 else header)
    for length in (0, -2, -(2**31)):  # no sender writes these; a negative one used to loop
        with pytest.raises(protocol.FrameError):
            protocol.FrameDecoder(limits).feed(struct.pack("!i", length) + b"R" * 8)


def test_prefixes_are_the_connections_short_and_long_forms() -> None:
    # As multiprocessing.connection frames: a signed 4-byte length, or -1 and an 8-byte one
    # past 2 GiB - 1.
    assert protocol.length_prefix(10) == struct.pack("!i", 10)
    assert protocol.length_prefix(0x7FFFFFFF) == struct.pack("!i", 0x7FFFFFFF)
    assert protocol.length_prefix(0x80000000) == struct.pack("!i", -1) + struct.pack("!Q", 0x80000000)


def test_wire_format_is_what_a_multiprocessing_connection_reads() -> None:
    reader, writer = Pipe(duplex=False)
    assert isinstance(writer, Connection)
    message = protocol.encode(protocol.INVOKE, {"id": "r"}, b"{}")
    os.write(writer.fileno(), protocol.wire(message))
    assert reader.recv_bytes() == message
    reader.close()
    writer.close()


def test_invoke_frames_arrive_whole_and_decode_to_what_was_sent() -> None:
    reader, writer = Pipe(duplex=False)
    frame = protocol.encode_invoke("r-7", 1_700_000_000_123, "arn:aws:lambda:x", b'{"custom": {"k": 1}}', b'{"a":1}')
    os.write(writer.fileno(), frame)
    invoke = protocol.decode_invoke(reader.recv_bytes())
    assert invoke == protocol.Invoke("r-7", 1_700_000_000_123, "arn:aws:lambda:x", {"custom": {"k": 1}}, b'{"a":1}')
    reader.close()
    writer.close()


def test_decoder_reads_what_a_connection_sends() -> None:
    reader, writer = Pipe(duplex=False)
    big = protocol.encode(protocol.RESULT, {"id": "r"}, b"z" * 40_000)  # sent in two writes
    writer.send_bytes(big)
    writer.send_bytes(b"small")
    data = b""
    while len(data) < 4 + len(big) + 4 + 5:
        data += os.read(reader.fileno(), 65536)
    assert protocol.FrameDecoder().feed(data) == [big, b"small"]
    reader.close()
    writer.close()


def test_timeout_message_has_two_decimals() -> None:
    assert errors.timeout_message("abc", 3) == "RequestId: abc Error: Task timed out after 3.00 seconds"


@pytest.mark.parametrize(
    ("exitcode", "text"),
    [
        (3, "exit status 3"),
        (0, "exit status 0"),
        (-signal.SIGKILL, "signal: killed"),
        (-signal.SIGSEGV, "signal: segmentation fault"),
        (-signal.SIGABRT, "signal: aborted"),
        (None, "unknown"),
    ],
)
def test_exit_descriptions_use_lambdas_words(exitcode: int | None, text: str) -> None:
    assert errors.exit_description(exitcode) == text


def test_exit_and_memory_messages() -> None:
    assert errors.exit_message("r", 3) == "RequestId: r Error: Runtime exited with error: exit status 3"
    assert errors.out_of_memory_message("r") == "RequestId: r Error: Runtime exited with error: signal: killed"


def test_error_payload_has_lambdas_four_keys() -> None:
    payload = errors.error_payload("boom", "ValueError", "r", None)
    assert payload == {"errorMessage": "boom", "errorType": "ValueError", "requestId": "r", "stackTrace": []}
    assert list(payload) == ["errorMessage", "errorType", "requestId", "stackTrace"]


def test_encode_event_serialises_once_and_passes_bytes_through() -> None:
    assert encode_event({"a": [1, 2]}) == b'{"a":[1,2]}'
    assert encode_event(b'{"raw": true}') == b'{"raw": true}'
    with pytest.raises(TypeError):
        encode_event({"not json": {1, 2}})


def test_throttle_is_recognisable() -> None:
    throttled = InvocationResult("r", {}, function_error="Unhandled", error_type=errors.THROTTLED)
    assert is_throttled(throttled)
    assert not is_throttled(InvocationResult("r", None))


def test_report_line_is_lambdas() -> None:
    line = lambda_text(None, "info", {
        "event": "invocation.report", "request_id": "r", "duration_ms": 1.234, "billed_duration_ms": 2,
        "memory_size_mb": 128, "max_memory_used_mb": 30, "init_duration_ms": 45.6, "outcome": "success",
    })
    assert line == (
        "REPORT RequestId: r\tDuration: 1.23 ms\tBilled Duration: 2 ms\tMemory Size: 128 MB"
        "\tMax Memory Used: 30 MB\tInit Duration: 45.60 ms"
    )


def test_start_end_and_function_log_lines() -> None:
    assert lambda_text(None, "debug", {"event": "invocation.start", "request_id": "r", "version": "$LATEST"}) == (
        "START RequestId: r Version: $LATEST"
    )
    assert lambda_text(None, "debug", {"event": "invocation.end", "request_id": "r"}) == "END RequestId: r"
    assert lambda_text(None, "info", {"event": "function.log", "request_id": "r", "message": "hi"}) == "hi"


def test_request_ids_are_random_version_4_uuids() -> None:
    source = RequestIds()
    ids = {source.next() for _ in range(1000)} | set(request_ids(1000))
    assert len(ids) == 2000
    for request_id in list(ids)[:50]:
        parsed = uuid.UUID(request_id)
        assert parsed.version == 4 and str(parsed) == request_id


def test_request_ids_taken_in_batches_are_fresh_and_exactly_as_many_as_asked() -> None:
    source = RequestIds()
    taken = [source.take(n) for n in (0, 1, 3, 64, 65, 200, 7)]
    assert [len(batch) for batch in taken] == [0, 1, 3, 64, 65, 200, 7]
    everything = [i for batch in taken for i in batch] + [source.next() for _ in range(100)]
    assert len(set(everything)) == len(everything)
    assert all(uuid.UUID(i).version == 4 for i in everything)
