"""Pausing one replica's intake (`router intake pause`), so it can be emptied before it goes away.

With the SQLite queue a replica's accepted events live on its own volume; scaling it down for good
means first letting that queue run dry while new work goes to the other replicas. Paused, the
replica unsubscribes from its MQTT topics (the broker's shared subscription then gives every
message to the members still subscribed; the connection and its persistent session stay), answers
webhooks 503 with Retry-After (senders retry, and a Service sends the retry elsewhere), and reports
unready on /readyz so the Service stops routing to it. Everything already queued keeps running,
and stream shards are untouched (their consumer groups move them when the pod leaves).
`router intake resume` undoes it; a restart starts with intake running.

Pause one replica at a time: a message published while no member of a shared subscription is
subscribed reaches nobody (MQTT keeps messages only for subscribed sessions).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Intake:
    paused: bool = False

    @property
    def state(self) -> str:
        return "paused" if self.paused else "running"
