"""The MQTT push source: bucket notifications published by MinIO (or RustFS) to a broker.

Why paho directly and not aiomqtt: a notification may only be acknowledged (PUBACK) after its
records are durably queued, and aiomqtt 2.x has no way to turn off paho's automatic PUBACK. So this
module is a thin adapter around paho-mqtt 2.x with `manual_ack=True`: paho's network thread
reads, pings and reconnects (exponential back-off, 1 s doubling to 10 s), and hands each message
to the event loop; the loop routes it and sends the PUBACK itself.

Guarantees:
* The session is persistent (MQTT 5, clean start off, session expiry from the config, fixed client
  id), so QoS 1 notifications published while the router is stopped or disconnected wait in the
  broker and arrive when it returns.
* Acknowledgements go out in the order the messages arrived, as MQTT requires, and only for
  messages received on the current connection. A message whose acknowledgement could not be sent
  (the connection dropped) is redelivered by the broker and deduplicated by the queue.
* Several payloads are routed concurrently (up to the Receive Maximum announced to the broker), so
  their queue commits share one fsync.
* With `shared_subscription_group`, each topic is subscribed as `$share/<group>/<topic>`, so the
  replicas of a deployment split the notifications between them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from router.config import Config, MqttConfig
from router.observability.metrics import Metrics
from router.observability.progress import ProgressBoard
from router.sources.bucket_notifications import NotificationRouter

# Unacknowledged messages the broker may send us at once (MQTT 5 Receive Maximum).
RECEIVE_MAXIMUM = 256
RECONNECT_MIN_DELAY = 1
RECONNECT_MAX_DELAY = 10
# A payload the queue could not take is retried in place (its PUBACK withheld) with this back-off.
ACCEPT_RETRY_MIN = 0.2
ACCEPT_RETRY_MAX = 10.0
STOP_DRAIN_SECONDS = 10.0


@dataclass
class _Pending:
    """One received message awaiting its PUBACK, in arrival order."""

    generation: int
    mid: int
    qos: int
    done: bool = False
    abandoned: bool = False


class MqttNotificationSource:
    def __init__(
        self,
        config: Config,
        router: NotificationRouter,
        *,
        metrics: Metrics,
        board: ProgressBoard,
        log: Any = None,
        receive_maximum: int = RECEIVE_MAXIMUM,
    ) -> None:
        if config.mqtt is None:
            raise ValueError("the MQTT source needs an mqtt section")
        self._settings: MqttConfig = config.mqtt
        self._router = router
        self._metrics = metrics
        self._tracker = board.tracker("mqtt", kind="broker")
        self._log = log or structlog.get_logger("router.mqtt")
        self._receive_maximum = receive_maximum
        group = self._settings.shared_subscription_group
        self.topics = router.matcher("mqtt").topics()
        self.subscriptions = [f"$share/{group}/{t}" if group else t for t in self.topics]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: paho.Client | None = None
        self._paho_generation = 0  # touched only on paho's thread
        self._generation = 0  # the loop's view: the connection acknowledgements go to
        self._connected = False
        self._state = "stopped"
        self._stopping = False
        self._window: collections.deque[_Pending] = collections.deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stats = {"received": 0, "acknowledged": 0, "redelivered": 0, "connects": 0, "accept_errors": 0}
        self._last_error: str | None = None
        self._connected_since: float | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin connecting in the background; a broker that is down is retried, not fatal."""
        if self._client is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        client = self._build_client()
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self._settings.session_expiry_interval
        properties.ReceiveMaximum = self._receive_maximum
        client.connect_async(
            self._settings.host, self._settings.port, keepalive=self._settings.keepalive,
            clean_start=False, properties=properties,
        )
        self._client = client
        self._set_state("connecting", f"{self._settings.host}:{self._settings.port}")
        client.loop_start()

    async def stop(self) -> None:
        """Stop taking messages, let those being routed finish and be acknowledged, disconnect.
        Messages that arrive meanwhile stay unacknowledged: the broker keeps them for next time."""
        client = self._client
        if client is None:
            return
        self._stopping = True
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=STOP_DRAIN_SECONDS)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)
        self._client = None
        self._connected = False
        self._window.clear()
        self._set_state("stopped", "")

    def status(self) -> dict[str, Any]:
        return {
            "state": self._state,
            "connected": self._connected,
            "client_id": self._settings.client_id,
            "broker": f"{self._settings.host}:{self._settings.port}",
            "subscriptions": list(self.subscriptions),
            "in_flight": len(self._window),
            "last_error": self._last_error,
            **self._stats,
        }

    # -- paho's thread -----------------------------------------------------------------------------

    def _build_client(self) -> paho.Client:
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self._settings.client_id,
            protocol=paho.MQTTv5,
            manual_ack=True,
        )
        client.reconnect_delay_set(RECONNECT_MIN_DELAY, RECONNECT_MAX_DELAY)
        if self._settings.username is not None:
            password = self._settings.password.get_secret_value() if self._settings.password else None
            client.username_pw_set(self._settings.username, password)
        tls = self._settings.tls
        if tls.enabled:
            client.tls_set(
                ca_certs=str(tls.ca_file) if tls.ca_file else None,
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        client.on_connect = self._paho_connect
        client.on_connect_fail = self._paho_connect_fail
        client.on_disconnect = self._paho_disconnect
        client.on_subscribe = self._paho_subscribe
        client.on_message = self._paho_message
        return client

    def _post(self, callback: Any, *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing; the broker keeps the message
            loop.call_soon_threadsafe(callback, *args)

    def _paho_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        if reason.is_failure:
            self._post(self._on_connect_failed, str(reason))
            return
        self._paho_generation += 1
        if self.subscriptions:
            client.subscribe([(topic, SubscribeOptions(qos=1)) for topic in self.subscriptions])
        self._post(self._on_connected, self._paho_generation, bool(getattr(flags, "session_present", False)))

    def _paho_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self._post(self._on_connect_failed, "cannot reach the broker")

    def _paho_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        self._post(self._on_disconnected, str(reason))

    def _paho_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: list[ReasonCode], properties: Any
    ) -> None:
        refused = [f"{topic}: {reason}" for topic, reason in zip(self.subscriptions, reasons, strict=False)
                   if reason.is_failure]
        if refused:
            self._post(self._on_subscribe_refused, refused)

    def _paho_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self._post(self._on_message, self._paho_generation, message)

    # -- the event loop ----------------------------------------------------------------------------

    def _set_state(self, state: str, detail: str) -> None:
        """Log and publish connection changes once per change, not once per retry."""
        up = state == "connected"
        self._tracker.set_up(up or state == "stopped", detail)
        self._metrics.broker_connected.labels(broker="mqtt").set(1 if up else 0)
        if state == self._state:
            return
        previous, self._state = self._state, state
        log = self._log.info if up or state in ("connecting", "stopped") else self._log.warning
        log("mqtt.state", state=state, previous=previous, detail=detail, client_id=self._settings.client_id)

    def _on_connected(self, generation: int, session_present: bool) -> None:
        self._generation = generation
        self._connected = True
        self._connected_since = time.monotonic()
        self._stats["connects"] += 1
        self._last_error = None
        self._set_state("connected", f"session_present={session_present}")
        self._log.debug("mqtt.subscribed", subscriptions=self.subscriptions, session_present=session_present)

    def _on_connect_failed(self, reason: str) -> None:
        self._connected = False
        self._last_error = reason
        self._set_state("disconnected", reason)

    def _on_disconnected(self, reason: str) -> None:
        self._connected = False
        if self._stopping:
            return
        self._last_error = reason
        self._set_state("disconnected", reason)

    def _on_subscribe_refused(self, refused: list[str]) -> None:
        self._last_error = "subscription refused: " + "; ".join(refused)
        self._log.error("mqtt.subscribe_refused", subscriptions=refused)
        self._tracker.set_up(False, self._last_error)

    def _on_message(self, generation: int, message: paho.MQTTMessage) -> None:
        if self._stopping:
            return  # not acknowledged: the broker redelivers it to the next session
        self._stats["received"] += 1
        if message.dup:
            self._stats["redelivered"] += 1
        pending = _Pending(generation, message.mid, message.qos)
        self._window.append(pending)
        self._tracker.set_pending(True)
        task = asyncio.create_task(self._route(pending, bytes(message.payload), message.topic))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _route(self, pending: _Pending, payload: bytes, topic: str) -> None:
        delay = ACCEPT_RETRY_MIN
        try:
            while True:
                try:
                    await self._router.accept(payload, transport="mqtt", topic=topic)
                    break
                except Exception as exc:
                    # The queue (or the disk) refused: keep the PUBACK back and try again, so the
                    # notification is neither lost nor blocking forever.
                    self._stats["accept_errors"] += 1
                    self._last_error = f"{type(exc).__name__}: {exc}"[:300]
                    self._log.error("mqtt.accept_failed", topic=topic, error_type=type(exc).__name__,
                                    error=str(exc)[:300], retry_in_seconds=delay)
                    if self._stopping:
                        pending.abandoned = True
                        return
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, ACCEPT_RETRY_MAX)
            pending.done = True
        except asyncio.CancelledError:
            pending.abandoned = True
            raise
        finally:
            self._acknowledge_in_order()

    def _acknowledge_in_order(self) -> None:
        client = self._client
        while self._window and (self._window[0].done or self._window[0].abandoned):
            pending = self._window.popleft()
            if pending.abandoned or client is None:
                continue
            if pending.generation == self._generation and self._connected and pending.qos > 0:
                client.ack(pending.mid, pending.qos)
                self._stats["acknowledged"] += 1
            self._tracker.advanced()
        self._tracker.set_pending(bool(self._window))
