"""Prometheus metrics, one registry per daemon (no process-global collectors).

Labels are bounded: mapping, function, shard, outcome, reason, broker. Never object keys,
partition keys or request ids, which would grow without limit.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from router.observability.loop_metrics import LoopCounter, LoopHistogram

_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
_BATCH_BUCKETS = (1, 5, 10, 50, 100, 500, 1000, 5000, 10000)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.iterator_age_seconds = Gauge(
            "router_iterator_age_seconds",
            "Age of the last record of the last batch sent to the function (Lambda's IteratorAge).",
            ["mapping", "shard"], registry=r)
        self.offset_lag = Gauge(
            "router_offset_lag", "High watermark minus checkpoint, in records (Lambda's OffsetLag).",
            ["mapping", "shard"], registry=r)
        self.checkpoint_sequence_number = Gauge(
            "router_checkpoint_sequence_number",
            "Sequence number of the last record the shard's checkpoint covers.",
            ["mapping", "shard"], registry=r)
        # Updated on every invocation, from the event loop only: see loop_metrics.
        self.invocations = LoopCounter(
            "router_invocations", "Function invocations by outcome (success, error, timeout, crash, oom).",
            ["function", "outcome"], r)
        self.invocation_duration_seconds = LoopHistogram(
            "router_invocation_duration_seconds", "Handler duration as reported in REPORT.",
            ["function"], r, _DURATION_BUCKETS)
        self.batch_records = Histogram(
            "router_batch_records", "Records per stream batch sent to the function.",
            ["mapping"], buckets=_BATCH_BUCKETS, registry=r)
        self.retries = Counter(
            "router_retries", "Retried invocations (stream batches and asynchronous events).",
            ["mapping"], registry=r)
        self.http_requests = Counter(
            "router_http_requests", "Requests served by HTTP routes, by route and status code.",
            ["route", "status"], registry=r)
        self.bisections = Counter(
            "router_bisections", "Stream batches split in two after a function error.",
            ["mapping"], registry=r)
        self.on_failure_records = Counter(
            "router_on_failure_records", "Failure records written to the on-failure destination.",
            ["mapping"], registry=r)
        self.on_success_records = Counter(
            "router_on_success_records", "Success records written to the on-success destination.",
            ["mapping"], registry=r)
        self.destination_delivery_failures = Counter(
            "router_destination_delivery_failures",
            "Failed attempts to write to a destination (retried; Lambda's DestinationDeliveryFailures).",
            ["mapping"], registry=r)
        self.filtered_out_records = Counter(
            "router_filtered_out_records", "Records dropped by a mapping's filter criteria or rule, or "
            "matching no mapping (Lambda's FilteredOutEventCount): never invoked, checkpointed past.",
            ["mapping"], registry=r)
        self.dead_letter_bytes = Gauge(
            "router_dead_letter_bytes", "Payload bytes kept in the dead-letter store (state_dir/dead-letter).",
            registry=r)
        self.dead_letter_payloads_dropped = Counter(
            "router_dead_letter_payloads_dropped",
            "Unreadable payloads whose bytes were not kept because the store was full (metadata kept).",
            ["source"], registry=r)
        self.async_queue_depth = Gauge(
            "router_async_queue_depth", "Events waiting in the asynchronous invocation queue.",
            ["mapping"], registry=r)
        self.async_event_age_seconds = Gauge(
            "router_async_event_age_seconds", "Age of the oldest event waiting in the asynchronous queue.",
            ["mapping"], registry=r)
        self.async_events_received = Counter(
            "router_async_events_received", "Events accepted into the asynchronous queue.",
            ["mapping"], registry=r)
        self.async_events_dropped = Counter(
            "router_async_events_dropped", "Async events given up without a successful execution "
            "(Lambda's AsyncEventsDropped), by condition; sent on to on_failure when configured.",
            ["mapping", "condition"], registry=r)
        self.duplicate_notifications = Counter(
            "router_duplicate_notifications", "Notifications dropped as duplicates of accepted ones.",
            ["mapping"], registry=r)
        self.notifications = Counter(
            "router_notifications", "Bucket notifications received, by outcome (accepted, unmatched, "
            "malformed, unauthorized, too_large).", ["source", "outcome"], registry=r)
        self.worker_restarts = Counter(
            "router_worker_restarts", "Execution environments replaced, by reason (timeout, crash, oom, init).",
            ["function", "reason"], registry=r)
        self.broker_connected = Gauge(
            "router_broker_connected", "1 while the broker connection is up.", ["broker"], registry=r)

    def forget_mapping(self, mapping: str) -> None:
        """Remove every series of a deleted mapping, so dashboards and alerts stop seeing it."""
        self._forget("mapping", mapping)

    def forget_function(self, function: str) -> None:
        self._forget("function", function)

    def _forget(self, label: str, value: str) -> None:
        for metric in vars(self).values():
            labelnames = getattr(metric, "_labelnames", ())
            if label in labelnames:
                metric.remove_by_labels({label: value})

    def render(self) -> bytes:
        return generate_latest(self.registry)
