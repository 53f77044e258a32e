"""Which event source mappings an object event belongs to, as a bucket notification rule decides.

A rule names a bucket, event-type patterns as S3 writes them (`s3:ObjectCreated:*`,
`s3:ObjectRemoved:Delete`, `s3:*`), and a key prefix and suffix. S3 and MinIO both match the
prefix and suffix against the object's real name, so they are compared with the decoded key,
never the URL-encoded one in the record. The event name matched is the store's own (MinIO's
`s3:ObjectRemoved:NoOP` is matched as that, even though the AWS record says ObjectRemoved:Delete).

MQTT mappings also name the topic the store publishes to; a message matches a mapping only when
its topic matches that topic filter (MQTT `+`/`#` wildcards allowed), so two stores publishing to
different topics can feed different functions for equally named buckets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

from router.config import BucketMapping, BucketNotifications, Config

Transport = Literal["mqtt", "webhook"]


def event_name_matches(patterns: Sequence[str], event_name: str) -> bool:
    """`event_name` has the `s3:` prefix. A pattern ending in `*` matches every name that starts
    with what comes before the star; any other pattern must be equal."""
    for pattern in patterns:
        if pattern.endswith("*"):
            if event_name.startswith(pattern[:-1]):
                return True
        elif event_name == pattern:
            return True
    return False


def key_matches(prefix: str, suffix: str, key: str) -> bool:
    """Both rules must hold, without overlapping: MinIO matches the pattern `prefix*suffix`."""
    return key.startswith(prefix) and key.endswith(suffix) and len(key) >= len(prefix) + len(suffix)


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic filter matching (`+` one level, `#` the rest), as the broker applies it."""
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    if topic.startswith("$") and filter_levels[0] in ("+", "#"):
        return False  # wildcards never match $SYS-style topics at the first level
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(filter_levels) == len(topic_levels)


def rule_matches(rule: BucketNotifications, *, bucket: str, event_name: str, key: str) -> bool:
    return (
        rule.bucket == bucket
        and event_name_matches(rule.events, event_name)
        and key_matches(rule.prefix, rule.suffix, key)
    )


class MappingMatcher:
    """The bucket mappings of one transport, looked up by bucket.

    Disabled mappings match too: their events are queued and wait there, uninvoked, until the
    mapping is enabled again (the queue is the push path's checkpoint), as records written to a
    stream while its mapping is disabled wait in the stream."""

    def __init__(self, mappings: Iterable[tuple[str, BucketMapping]], transport: Transport) -> None:
        self.transport = transport
        self._by_bucket: dict[str, list[tuple[str, BucketMapping]]] = {}
        for name, mapping in mappings:
            rule = mapping.bucket_notifications
            if rule.transport == transport:
                self._by_bucket.setdefault(rule.bucket, []).append((name, mapping))

    @classmethod
    def from_config(cls, config: Config, transport: Transport) -> MappingMatcher:
        return cls(config.bucket_mappings().items(), transport)

    def knows_bucket(self, bucket: str) -> bool:
        return bucket in self._by_bucket

    def candidates(self, bucket: str, topic: str | None = None) -> list[tuple[str, BucketMapping]]:
        """The mappings of `bucket` (and, for MQTT, of the topic the message came on)."""
        found = self._by_bucket.get(bucket, [])
        if self.transport == "mqtt" and topic is not None:
            found = [(n, m) for n, m in found if topic_matches(m.bucket_notifications.topic or "", topic)]
        return found

    def matches(
        self, *, bucket: str, event_name: str, key: str, topic: str | None = None
    ) -> list[tuple[str, BucketMapping]]:
        return [
            (name, mapping)
            for name, mapping in self.candidates(bucket, topic)
            if rule_matches(mapping.bucket_notifications, bucket=bucket, event_name=event_name, key=key)
        ]

    def topics(self) -> list[str]:
        """Every distinct topic filter the MQTT mappings name, in a stable order."""
        seen = {m.bucket_notifications.topic for ms in self._by_bucket.values() for _, m in ms}
        return sorted(t for t in seen if t)
