"""The MQTT push source: bucket notifications published by MinIO (or RustFS) to a broker.

Why paho directly and not aiomqtt: a notification may only be acknowledged (PUBACK) after its
records are durably queued, and aiomqtt 2.x has no way to turn off paho's automatic PUBACK. So this
module is a thin asyncio adapter around paho-mqtt 2.x with `manual_ack=True`, driven the way
aiomqtt drives it: the socket is registered with the event loop (paho's `loop_read`/`loop_write`
run as reader/writer callbacks, `loop_misc` once a second for keep-alive), so there is no network
thread competing for the GIL, and every callback runs on the loop. Only the blocking TCP/TLS
connect runs in an executor. Reconnects back off exponentially (1 s doubling to 10 s, jittered) and
the back-off resets once a connection was established.

Guarantees:
* The session is persistent (MQTT 5, clean start off, session expiry from the config, fixed client
  id), so QoS 1 notifications published while the router is stopped or disconnected wait in the
  broker and arrive when it returns.
* Acknowledgements go out in the order the messages arrived, as MQTT requires, and only for
  messages received on the current connection. A message whose acknowledgement could not be sent
  (the connection dropped) is redelivered by the broker and deduplicated by the queue.
* Everything one socket read delivered is routed as one batch (one queue write), and batches are
  routed concurrently up to the Receive Maximum announced to the broker, so commits share fsyncs.
* With `shared_subscription_group`, each topic is subscribed as `$share/<group>/<topic>`, so the
  replicas of a deployment split the notifications between them.
* The topic filters follow the mappings while the client runs (`set_topics`): new filters are
  SUBSCRIBEd and dropped ones UNSUBSCRIBEd on the open connection, without a reconnect, and every
  reconnect subscribes to the current set. The source is ready only while every filter it wants is
  acknowledged by a SUBACK.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from router.config import Config, MqttConfig
from router.delivery.backoff import Backoff
from router.events.s3_match import topic_matches
from router.mqtt_client import credentials, tls_files
from router.observability.metrics import Metrics
from router.observability.progress import ProgressBoard
from router.sources.app_events import AppEventRouter, Message
from router.sources.bucket_notifications import NotificationRouter
from router.sources.mqtt_socket import BufferedReads, buffered_bytes

# Unacknowledged messages the broker may send us at once (MQTT 5 Receive Maximum).
RECEIVE_MAXIMUM = 256
# Jittered, so replicas that lost the same broker do not all reconnect in the same instant.
RECONNECT = Backoff(first=1.0, cap=10.0, jitter=True)
# A payload the queue could not take is retried in place (its PUBACK withheld) with this back-off.
ACCEPT_RETRY = Backoff(first=0.2, cap=10.0)
STOP_DRAIN_SECONDS = 10.0
# Packets read per readiness callback at most, so one busy socket cannot starve the loop.
READ_BURST = 256


@dataclass
class _Pending:
    """One received message awaiting its PUBACK, in arrival order."""

    generation: int
    mid: int
    qos: int
    done: bool = False
    abandoned: bool = False


@dataclass
class _Connection:
    """One paho client from connect to disconnect; acknowledgements never cross connections."""

    client: paho.Client
    generation: int
    closed: asyncio.Future[str]
    connected: bool = False  # CONNACK received: acknowledgements can go out
    granted: set[str] = field(default_factory=set)  # subscriptions the broker acknowledged
    requests: dict[int, list[str]] = field(default_factory=dict)  # SUBSCRIBE mid -> its filters
    session_present: bool = False
    fds: set[int] = field(default_factory=set)


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
        topics: Sequence[str] | None = None,
        app_events: AppEventRouter | None = None,
    ) -> None:
        if config.mqtt is None:
            raise ValueError("the MQTT source needs an mqtt section")
        self._settings: MqttConfig = config.mqtt
        self._router = router
        self._app_events = app_events
        self._metrics = metrics
        self._board = board
        self._tracker = board.tracker("mqtt", kind="broker")
        # Not ready until subscribed: the HTTP server (and /readyz) starts before the sources do.
        self._tracker.set_up(False, "not connected yet")
        self._log = log or structlog.get_logger("router.mqtt")
        self._receive_maximum = receive_maximum
        self.topics: list[str] = []
        self.subscriptions: list[str] = []
        self._topics_changed(router.matcher("mqtt").topics() if topics is None else topics)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._runner: asyncio.Task[None] | None = None
        self._connection: _Connection | None = None
        self._generation = 0
        self._state = "stopped"
        self._stopping = False
        self._wakeup = asyncio.Event()
        self._window: collections.deque[_Pending] = collections.deque()
        self._batch: list[tuple[_Pending, bytes, str, Any]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._stats = {"received": 0, "acknowledged": 0, "redelivered": 0, "connects": 0, "accept_errors": 0}
        self._last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin connecting in the background; a broker that is down is retried, not fatal."""
        if self._runner is not None:
            return
        self._tracker = self._board.tracker("mqtt", kind="broker")
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stopping = False
        self._wakeup = asyncio.Event()
        self._set_state("connecting", f"{self._settings.host}:{self._settings.port}")
        self._runner = asyncio.create_task(self._run(), name="mqtt-source")

    async def stop(self) -> None:
        """Stop taking messages, let those being routed finish and be acknowledged, disconnect.
        Messages that arrive meanwhile stay unacknowledged: the broker keeps them for next time."""
        if self._runner is None:
            return
        self._stopping = True
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=STOP_DRAIN_SECONDS)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._wakeup.set()
        connection = self._connection
        if connection is not None and connection.connected:
            connection.client.disconnect()  # DISCONNECT goes out through loop_write
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(connection.closed), 2.0)
        self._runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._runner
        self._runner = None
        self._window.clear()
        self._set_state("stopped", "")
        self._board.remove("mqtt")  # nothing is received any more, so nothing can stall

    async def set_topics(self, topics: Sequence[str]) -> None:
        """Subscribe to exactly `topics` from now on: on the open connection at once (SUBSCRIBE
        for the new filters, UNSUBSCRIBE for the dropped ones), on every later connection at CONNACK."""
        before = set(self.subscriptions)
        self._topics_changed(topics)
        connection = self._connection
        if connection is None or not connection.connected:
            return
        after = set(self.subscriptions)
        dropped = sorted(before - after)
        if dropped:
            connection.client.unsubscribe(dropped)
            connection.granted -= set(dropped)
            self._log.info("mqtt.unsubscribed", subscriptions=dropped)
        self._subscribe(connection, [s for s in self.subscriptions if s not in connection.granted])
        self._update_readiness(connection)

    def _topics_changed(self, topics: Sequence[str]) -> None:
        group = self._settings.shared_subscription_group
        self.topics = sorted(set(topics))
        self.subscriptions = [f"$share/{group}/{t}" if group else t for t in self.topics]

    def status(self) -> dict[str, Any]:
        connection = self._connection
        return {
            "state": self._state,
            "connected": bool(connection and connection.connected),
            "subscribed": bool(connection and self._all_granted(connection)),
            "client_id": self._settings.client_id,
            "broker": f"{self._settings.host}:{self._settings.port}",
            "subscriptions": list(self.subscriptions),
            "in_flight": len(self._window),
            "last_error": self._last_error,
            **self._stats,
        }

    # -- connecting --------------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        try:
            while not self._stopping:
                established = await self._connect_once()
                if self._stopping:
                    break
                failures = 1 if established else failures + 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), RECONNECT.delay(failures))
        finally:
            connection, self._connection = self._connection, None
            if connection is not None:
                self._close(connection)

    async def _connect_once(self) -> bool:
        """One connection's life; True when it got as far as a CONNACK."""
        assert self._loop is not None
        self._generation += 1
        connection = _Connection(self._build_client(), self._generation, self._loop.create_future())
        self._connection = connection
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self._settings.session_expiry_interval
        properties.ReceiveMaximum = self._receive_maximum
        client = connection.client
        try:
            await self._loop.run_in_executor(None, lambda: client.connect(
                self._settings.host, self._settings.port, keepalive=self._settings.keepalive,
                clean_start=False, properties=properties,
            ))
        except (OSError, ValueError, paho.WebsocketConnectionError) as exc:
            self._close(connection)
            self._on_connect_failed(f"{type(exc).__name__}: {exc}")
            return False
        misc = asyncio.create_task(self._keepalive(connection))
        try:
            reason = await connection.closed
        finally:
            misc.cancel()
            self._close(connection)
        if connection.connected:
            connection.connected = False
            if not self._stopping:
                self._last_error = reason
                self._set_state("disconnected", reason)
            return True
        self._on_connect_failed(reason)
        return False

    async def _keepalive(self, connection: _Connection) -> None:
        """Pings and keep-alive timeouts: paho's loop_misc, once a second."""
        client = connection.client
        while not connection.closed.done():
            if client.loop_misc() != paho.MQTT_ERR_SUCCESS:
                return
            await asyncio.sleep(1)

    def _close(self, connection: _Connection) -> None:
        """Forget the socket; paho closes it (or already has)."""
        self._finish(connection, "closed")
        client = connection.client
        with contextlib.suppress(Exception):
            client._sock_close()  # idempotent; the on_socket_close callback unregisters it
        if self._loop is not None:
            for fd in list(connection.fds):
                self._loop.remove_reader(fd)
                self._loop.remove_writer(fd)
            connection.fds.clear()

    def _finish(self, connection: _Connection, reason: str) -> None:
        if not connection.closed.done():
            connection.closed.set_result(reason)

    def _build_client(self) -> paho.Client:
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self._settings.client_id,
            protocol=paho.MQTTv5,
            manual_ack=True,
            reconnect_on_failure=False,
        )
        username, password = credentials(self._settings)
        if username is not None:
            client.username_pw_set(username, password)
        files = tls_files(self._settings)
        if files is not None:
            client.tls_set(ca_certs=files.ca_certs, certfile=files.certfile, keyfile=files.keyfile,
                           cert_reqs=ssl.CERT_REQUIRED)
        generation = self._generation
        client.on_connect = lambda c, u, flags, reason, props: self._on_connect(generation, flags, reason)
        client.on_disconnect = lambda c, u, flags, reason, props: self._on_disconnect(generation, reason)
        client.on_subscribe = lambda c, u, mid, reasons, props: self._on_subscribe(generation, mid, reasons)
        client.on_message = lambda c, u, message: self._on_message(generation, message)
        client.on_socket_open = lambda c, u, sock: self._in_loop(self._socket_open, generation, sock)
        client.on_socket_close = lambda c, u, sock: self._socket_close(sock)
        client.on_socket_register_write = lambda c, u, sock: self._in_loop(self._want_write, generation, sock)
        client.on_socket_unregister_write = lambda c, u, sock: self._no_write(sock)
        return client

    # -- socket plumbing (paho's callbacks; connect() calls some from the executor thread) -----------

    def _in_loop(self, callback: Any, *args: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            callback(*args)
        elif self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self._loop.call_soon_threadsafe(callback, *args)

    def _current(self, generation: int) -> _Connection | None:
        connection = self._connection
        return connection if connection is not None and connection.generation == generation else None

    def _socket_open(self, generation: int, sock: Any) -> None:
        connection = self._current(generation)
        if connection is None or self._loop is None or connection.closed.done():
            return
        fd = sock.fileno()
        if fd < 0:
            return
        connection.fds.add(fd)
        if connection.client._sock is sock:  # paho's socket attribute (2.x); reads go through the buffer
            connection.client._sock = BufferedReads(sock)
        self._loop.add_reader(fd, self._readable, connection)

    def _socket_close(self, sock: Any) -> None:
        fd = sock.fileno()
        if fd >= 0 and self._loop is not None:
            self._in_loop(self._forget_fd, fd)

    def _forget_fd(self, fd: int) -> None:
        assert self._loop is not None
        self._loop.remove_reader(fd)
        self._loop.remove_writer(fd)
        connection = self._connection
        if connection is not None:
            connection.fds.discard(fd)

    def _want_write(self, generation: int, sock: Any) -> None:
        connection = self._current(generation)
        if connection is None or self._loop is None or connection.closed.done():
            return
        fd = sock.fileno()
        if fd >= 0:
            self._loop.add_writer(fd, self._writable, connection)

    def _no_write(self, sock: Any) -> None:
        fd = sock.fileno()
        if fd >= 0 and self._loop is not None:
            self._in_loop(self._loop.remove_writer, fd)

    def _readable(self, connection: _Connection) -> None:
        """Read what the socket holds (paho reads one packet per call), then route the
        notifications that arrived together as one batch: one queue write, one commit."""
        client = connection.client
        more = False
        try:
            for _ in range(READ_BURST):
                before = self._stats["received"]
                client.loop_read()
                more = buffered_bytes(client.socket()) > 0  # bytes the selector cannot see
                if self._stats["received"] == before and not more:
                    break
        except OSError as exc:
            more = False
            self._finish(connection, f"{type(exc).__name__}: {exc}")
        finally:
            self._dispatch_batch()
        if more and self._loop is not None and not connection.closed.done():
            self._loop.call_soon(self._readable, connection)  # the burst ended with bytes in hand

    def _dispatch_batch(self) -> None:
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        task = asyncio.create_task(self._route(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _writable(self, connection: _Connection) -> None:
        try:
            connection.client.loop_write()
        except OSError as exc:
            self._finish(connection, f"{type(exc).__name__}: {exc}")

    # -- protocol events (on the loop) --------------------------------------------------------------

    def _set_state(self, state: str, detail: str) -> None:
        """Log and publish connection changes once per change, not once per retry."""
        up = state == "connected"
        self._tracker.set_up(up or state == "stopped", detail)
        self._metrics.broker_connected.labels(broker="mqtt").set(1 if up else 0)
        if state == self._state:
            return
        previous, self._state = self._state, state
        log = self._log.info if up or state in ("connecting", "subscribing", "stopped") else self._log.warning
        log("mqtt.state", state=state, previous=previous, detail=detail, client_id=self._settings.client_id)

    def _on_connect(self, generation: int, flags: Any, reason: ReasonCode) -> None:
        connection = self._current(generation)
        if connection is None:
            return
        if reason.is_failure:
            self._finish(connection, f"CONNACK: {reason}")
            return
        connection.connected = True
        connection.session_present = bool(getattr(flags, "session_present", False))
        self._stats["connects"] += 1
        self._last_error = None
        # Ready only once the SUBACK is in: a notification published before the broker has our
        # subscription (a first start, or $share after a broker restart) reaches nobody.
        self._subscribe(connection, self.subscriptions)
        self._update_readiness(connection)

    def _subscribe(self, connection: _Connection, subscriptions: list[str]) -> None:
        if not subscriptions:
            return
        # A retained message is delivered when the subscription is new (a first start), not again on
        # every reconnect of the persistent session, which keeps the subscription (retain handling 1).
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        result, mid = connection.client.subscribe([(topic, options) for topic in subscriptions])
        if result == paho.MQTT_ERR_SUCCESS and mid is not None:
            connection.requests[mid] = list(subscriptions)

    def _all_granted(self, connection: _Connection) -> bool:
        return connection.connected and set(self.subscriptions) <= connection.granted

    def _update_readiness(self, connection: _Connection) -> None:
        if self._all_granted(connection):
            self._set_state("connected", f"session_present={connection.session_present}")
        elif self._state != "refused":
            self._set_state("subscribing", f"{len(self.subscriptions) - len(connection.granted)} awaiting SUBACK")

    def _on_disconnect(self, generation: int, reason: ReasonCode) -> None:
        connection = self._current(generation)
        if connection is not None:
            self._finish(connection, str(reason))

    def _on_connect_failed(self, reason: str) -> None:
        self._last_error = reason
        self._set_state("disconnected", reason)

    def _on_subscribe(self, generation: int, mid: int, reasons: list[ReasonCode]) -> None:
        connection = self._current(generation)
        if connection is None or mid not in connection.requests:
            return
        requested = connection.requests.pop(mid)
        refused = [f"{topic}: {reason}" for topic, reason in zip(requested, reasons, strict=False)
                   if reason.is_failure]
        wanted = set(self.subscriptions)
        connection.granted |= {topic for topic, reason in zip(requested, reasons, strict=False)
                               if not reason.is_failure and topic in wanted}
        if refused:
            self._last_error = "subscription refused: " + "; ".join(refused)
            self._log.error("mqtt.subscribe_refused", subscriptions=refused)
            self._set_state("refused", self._last_error)
            return
        if self._state == "refused" and self._all_granted(connection):
            self._state = "subscribing"
        self._update_readiness(connection)

    def _on_message(self, generation: int, message: paho.MQTTMessage) -> None:
        if self._stopping:
            return  # not acknowledged: the broker redelivers it to the next session
        self._stats["received"] += 1
        if message.dup:
            self._stats["redelivered"] += 1
        pending = _Pending(generation, message.mid, message.qos)
        self._window.append(pending)
        self._tracker.set_pending(True)
        properties = getattr(message.properties, "UserProperty", None) if message.properties else None
        self._batch.append((pending, bytes(message.payload), message.topic, properties))

    async def _route(self, batch: list[tuple[_Pending, bytes, str, Any]]) -> None:
        items = [(payload, topic, properties) for _, payload, topic, properties in batch]
        failures = 0
        accepted: set[str] = set()  # what a retry must not queue twice
        try:
            while True:
                try:
                    await self._accept(items, accepted)
                    break
                except Exception as exc:
                    # The queue (or the disk) refused: keep the PUBACKs back and try again, so the
                    # notifications are neither lost nor blocking forever.
                    self._stats["accept_errors"] += 1
                    failures += 1
                    delay = ACCEPT_RETRY.delay(failures)
                    self._last_error = f"{type(exc).__name__}: {exc}"[:300]
                    self._log.error("mqtt.accept_failed", notifications=len(items), error_type=type(exc).__name__,
                                    error=str(exc)[:300], retry_in_seconds=delay)
                    if self._stopping:
                        for pending, *_ in batch:
                            pending.abandoned = True
                        return
                    await asyncio.sleep(delay)
            for pending, *_ in batch:
                pending.done = True
        except asyncio.CancelledError:
            for pending, *_ in batch:
                pending.abandoned = True
            raise
        finally:
            self._acknowledge_in_order()

    async def _accept(self, items: list[Message], accepted: set[str]) -> None:
        """App events to their router, bucket notifications (and what matches nothing, to be
        counted there) to theirs; a message on a topic both want goes to both."""
        apps = self._app_events
        if apps is not None and "app" not in accepted:
            wanted = [item for item in items if apps.wants(item[1])]
            if wanted:
                await apps.accept_batch(wanted)
            accepted.add("app")
        if "bucket" not in accepted:
            notifications = [(payload, topic) for payload, topic, _ in items]
            if apps is not None:
                buckets = self._router.matcher("mqtt").topics()
                notifications = [(payload, topic) for payload, topic in notifications if not apps.wants(topic)
                                 or any(topic_matches(f, topic) for f in buckets)]
            if notifications:
                await self._router.accept_batch(notifications, transport="mqtt")
            accepted.add("bucket")

    def _acknowledge_in_order(self) -> None:
        connection = self._connection
        while self._window and (self._window[0].done or self._window[0].abandoned):
            pending = self._window.popleft()
            if pending.abandoned:
                continue
            if (connection is not None and connection.connected and pending.generation == connection.generation
                    and pending.qos > 0):
                connection.client.ack(pending.mid, pending.qos)
                self._stats["acknowledged"] += 1
            self._tracker.advanced()
        self._tracker.set_pending(bool(self._window))
