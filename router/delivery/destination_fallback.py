"""A record its destination can never take goes to the local dead letter instead of round and round.

Callers retry a DestinationError with backoff for as long as it takes, because the stream
checkpoint (or the queued async event) must not move past a record that was not written. That is
right while a broker is down, and wrong when the destination refuses the record for what it is:
retrying would hold the shard (or the event) for good. Two such cases:

- Size. A stream failure record of a 6 MB batch is about 8 MB of JSON; a default Kafka broker takes
  1 MB (`message.max.bytes`), and the producer refuses more than `kafka.max_request_size` before
  sending. Such a record is kept whole in the local dead letter, and the destination gets it
  without its payload fields, with `payloadOmitted` saying how large it was, why, and where the
  whole record is kept. Lambda's own records to SQS and SNS destinations carry no payload either,
  so what the destination gets is still Lambda's shape.
- A permanent error (`DestinationError.permanent`: a record the broker calls too large, an invalid
  topic, no such bucket, access denied). The whole record goes to the local dead letter, logged as
  an error with the reason, and counts as written.

Nothing is lost either way: `router replay dead-letter://on-failure` re-invokes from the kept
records as it does from any destination. A transient error is raised as before, for the caller's
backoff; only a record no retry can help is dead-lettered.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

from router.delivery.dead_letter import DeadLetter
from router.delivery.destination import Destination, DestinationError, encode_record

# The dead letter's folder for destination records (`router replay dead-letter://on-failure`).
SOURCE = "on-failure"
# Where a record keeps the invocation's event and response: the stream record's `payload`, the
# async record's `requestPayload` and `responsePayload`.
PAYLOAD_FIELDS = ("payload", "requestPayload", "responsePayload")


class FallbackDestination:
    """`inner`, with records it cannot take kept in `dead_letter` (see the module docstring)."""

    def __init__(self, inner: Destination, dead_letter: DeadLetter, *, log: Any = None) -> None:
        self.uri = inner.uri
        self.inner = inner
        self.max_record_bytes: int | None = None  # oversized records are handled here
        self._dead_letter = dead_letter
        self._log = log or structlog.get_logger("router.destinations")

    async def send(self, record: Mapping[str, Any], *, key: str, body: bytes | None = None) -> None:
        body = encode_record(record) if body is None else body
        limit = self.inner.max_record_bytes
        to_send, sent_body = record, body  # encoded once, for the size check and the send
        if limit is not None and len(body) > limit:
            reason = f"record of {len(body)} bytes is larger than {self.uri} takes ({limit} bytes)"
            kept = await self._keep(body, reason, key)
            to_send = {k: v for k, v in record.items() if k not in PAYLOAD_FIELDS}
            to_send["payloadOmitted"] = {"reason": reason, "size": len(body), "deadLetter": kept}
            sent_body = encode_record(to_send)
        try:
            await self.inner.send(to_send, key=key, body=sent_body)
        except DestinationError as exc:
            if not exc.permanent:
                raise
            await self._keep(body, f"{self.uri} refused it: {exc}"[:1000], key)

    async def _keep(self, body: bytes, reason: str, key: str) -> str:
        """Durably keep the whole record; raises DestinationError (to be retried) if the disk
        refuses or the store is full (DeadLetterFull): the checkpoint waits rather than lose it."""
        try:
            path = await self._dead_letter.write(body, reason=reason, source=SOURCE, topic=self.uri, required=True)
        except OSError as exc:
            raise DestinationError(f"{self.uri}: cannot keep the record in the dead letter either: {exc}") from exc
        self._log.error("destination.record_dead_lettered", destination=self.uri, key=key, reason=reason,
                        size=len(body), path=str(path))
        return f"{SOURCE}/{path.stem}.payload"
