"""`router dev`: the whole system on a laptop in one command.

Starts Mosquitto, Kafka (Tansu) and S3 (SeaweedFS) from `router.devstack` on free loopback ports,
creates the buckets, topics and the SeaweedFS webhook wiring, and runs the daemon on
`config/router.dev.yaml`. `--demo` then drives every shipped example itself, prints what happened
and exits 0 — the test suite runs it, so the newcomer's path cannot silently rot.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import secrets
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from router.commands import add_logging_arguments

DEMO_BUCKETS = ("photos", "photos-thumbnails", "minio-photos", "minio-photos-thumbnails", "router-failed", "metrics")
DEMO_TOPICS = (("clicks", 4), ("clicks-failed", 1))
DEMO_CLICKS = 1000
DEMO_DEVICES = ("phone-1", "phone-2", "tablet-1")


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "dev", help="run the local stack (Mosquitto, Kafka, S3) with every example wired")
    parser.add_argument("--config", default=None, help="dev config (default: config/router.dev.yaml)")
    parser.add_argument("--state-dir", default=".router/dev", help="where the stack keeps its data")
    parser.add_argument("--demo", action="store_true",
                        help="upload a photo and produce stream records, print the results, exit")
    parser.add_argument("--timeout", type=float, default=120.0, help="--demo: give up after this long")
    add_logging_arguments(parser)
    parser.set_defaults(func=run)


def say(message: str) -> None:
    print(f"router dev: {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from router.config import ConfigError, load_config
    from router.devstack import DevstackError, Mosquitto, SeaweedFS, Tansu, free_port
    from router.observability.logging import configure_logging

    configure_logging(args.log_level, "json" if args.demo and args.log_format == "auto" else args.log_format)
    config_path = Path(args.config or "config/router.dev.yaml")
    if not config_path.exists():
        say(f"{config_path} not found: run `router dev` from the repository root or pass --config")
        return 2
    state = Path(args.state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        try:
            say("starting Mosquitto (MQTT) ...")
            mqtt = stack.enter_context(Mosquitto(state / "mosquitto"))
            say(f"  Mosquitto ready on {mqtt.host}:{mqtt.port}")
            say("starting Tansu (Kafka protocol) ...")
            kafka = stack.enter_context(Tansu(state / "tansu"))
            say(f"  Kafka ready on {kafka.bootstrap_servers}")
            http_port = free_port()
            token = secrets.token_urlsafe(24)
            say("starting SeaweedFS (S3, filer webhook) ... this takes 5-10 s")
            s3 = stack.enter_context(SeaweedFS(
                state / "seaweedfs",
                webhook_url=f"http://127.0.0.1:{http_port}/webhooks/seaweedfs", webhook_token=token))
            say(f"  S3 ready on {s3.s3_endpoint}")
        except DevstackError as exc:
            say(str(exc))
            return 1
        for bucket in DEMO_BUCKETS:
            s3.create_bucket(bucket)
        for topic, partitions in DEMO_TOPICS:
            kafka.create_topic(topic, partitions)
        say(f"created buckets {', '.join(DEMO_BUCKETS)} and topics clicks (4 shards), clicks-failed")
        env = {
            **os.environ,
            "ROUTER_STATE_DIR": str(state / "router"),
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "MQTT_PORT": str(mqtt.port),
            "S3_ENDPOINT_URL": s3.s3_endpoint,
            "S3_ACCESS_KEY_ID": s3.access_key,
            "S3_SECRET_ACCESS_KEY": s3.secret_key,
            "ROUTER_HTTP_LISTEN": f"127.0.0.1:{http_port}",
            "ROUTER_WEBHOOK_TOKEN": token,
        }
        try:
            config = load_config(config_path, env=env)
        except ConfigError as exc:
            for problem in exc.problems:
                say(f"config: {problem}")
            return 2
        stack_info = _StackInfo(mqtt.port, kafka.bootstrap_servers, s3.s3_endpoint, s3.access_key,
                                s3.secret_key, http_port)
        if not args.demo:
            _print_next_steps(stack_info)
        from router import event_loop
        from router.app import StartupError, serve

        demo = _Demo(stack_info, args.timeout) if args.demo else None
        try:
            # SIGHUP re-reads the dev config against the same local stack.
            return event_loop.run(serve(config, on_ready=demo.run if demo else None,
                                        load=lambda: load_config(config_path, env=env)), config.event_loop)
        except StartupError as exc:
            say(str(exc))
            return 1
        finally:
            say("stopping the local stack")


class _StackInfo:
    def __init__(self, mqtt_port: int, bootstrap: str, s3_endpoint: str, access_key: str,
                 secret_key: str, http_port: int) -> None:
        self.mqtt_port = mqtt_port
        self.bootstrap = bootstrap
        self.s3_endpoint = s3_endpoint
        self.access_key = access_key
        self.secret_key = secret_key
        self.http_port = http_port

    def s3_client(self) -> Any:
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.s3_endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name="us-east-1")


def _print_next_steps(info: _StackInfo) -> None:
    s3env = (f"AWS_ACCESS_KEY_ID={info.access_key} AWS_SECRET_ACCESS_KEY={info.secret_key} "
             f"aws --endpoint-url {info.s3_endpoint}")
    say("router is starting; try:")
    say(f"  upload a photo:        {s3env} s3 cp photo.jpg s3://photos/uploads/photo.jpg")
    say(f"  see its thumbnail:     {s3env} s3 ls s3://photos-thumbnails/uploads/")
    say(f"  produce stream records: kafka bootstrap {info.bootstrap}, topic clicks, "
        "values like {\"page\": \"/home\", \"ms\": 120}")
    say(f"  MinIO-style MQTT:      mosquitto_pub -p {info.mqtt_port} -q 1 -t minio/events -f tests/fixtures/minio/"
        "mqtt_put_encoded_key.json")
    say(f"  watch it:              router status --url http://127.0.0.1:{info.http_port}")
    say("  Ctrl-C stops router and the whole stack")


def _jpeg(width: int, height: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 80, 40)).save(buffer, format="JPEG")
    return buffer.getvalue()


class _Demo:
    """Drives each example through the running daemon and prints what came out."""

    def __init__(self, info: _StackInfo, timeout: float) -> None:
        self.info = info
        self.deadline = time.monotonic() + timeout

    async def run(self, app: Any) -> int:
        thumb = await asyncio.to_thread(self._photo_via_webhook)
        say(f"file processing (SeaweedFS webhook): photos/uploads/demo.jpg 640x480 -> "
            f"photos-thumbnails/uploads/demo.jpg {thumb[0]}x{thumb[1]}")
        thumb = await self._photo_via_mqtt()
        say(f"file processing (MinIO MQTT notification): minio-photos/albums/summer 2024/beach.jpg 800x600 -> "
            f"{thumb[0]}x{thumb[1]}")
        shards = await self._clicks()
        say(f"data and analytics (Kafka clicks topic as a Kinesis stream, tumbling windows): {DEMO_CLICKS} records")
        for shard, (processed, checkpoint) in sorted(shards.items()):
            say(f"  {shard}: {processed} records processed, checkpoint {checkpoint}")
        windows = await asyncio.to_thread(self._windows)
        for metrics in windows:
            say(f"  window {metrics['window']['start']} {metrics['shardId']}: {metrics['records']} records, "
                f"{metrics['counts']}, {metrics['distinctUsers']} distinct users")
        sent, taps = await asyncio.to_thread(self._devices)
        say(f"mobile apps (MQTT app events from {len(DEMO_DEVICES)} simulated devices): {sent} messages, "
            f"one of them resent")
        say(f"  the function saw {taps['messages']} messages ({taps['malformed']} malformed) in "
            f"{taps['invocations']} batched invocations")
        for screen, entry in sorted(taps["screens"].items()):
            say(f"  screen {screen}: {entry['clicks']} clicks by {len(entry['users'])} users")
        print(json.dumps({"thumbnail": list(thumb), "shards": {
            s: {"records": p, "checkpoint": c} for s, (p, c) in shards.items()}, "windows": windows,
            "app_clicks": {"sent": sent, **taps}}))
        return 0

    def _devices(self) -> tuple[int, dict[str, Any]]:
        """Phones publishing clicks with paho, as a mobile SDK would (MQTT v5, QoS 1, a message id
        as a user property), some of them malformed and one resent; then what the clicks function
        wrote to S3, summed."""
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        screens = ["home", "feed", "cart", "settings"]
        sent = 0
        for d, device in enumerate(DEMO_DEVICES):
            client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"demo-{device}",
                                 protocol=paho.MQTTv5)
            client.connect("127.0.0.1", self.info.mqtt_port)
            client.loop_start()
            try:
                payloads: list[bytes] = [
                    json.dumps({"screen": screens[(d + i) % len(screens)], "user": f"{device}-user{i % 2}"}).encode()
                    for i in range(8)
                ]
                payloads += [b"\x00\xffnot json", b"[1, 2]", json.dumps({"user": "no-screen"}).encode()][d:d + 1]
                sent += len(payloads)
                # a flaky network: the first device resends its first message; the id makes it a duplicate
                for i, payload in [*enumerate(payloads), *([(0, payloads[0])] if d == 0 else [])]:
                    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                    properties.UserProperty = [("message-id", f"{device}-{i}")]
                    client.publish(f"app/{device}/clicks", payload, qos=1, properties=properties).wait_for_publish(10)
            finally:
                client.loop_stop()
                client.disconnect()
        s3 = self.info.s3_client()
        while True:
            listed = s3.list_objects_v2(Bucket="metrics", Prefix="clicks/").get("Contents", [])
            parts = [json.loads(s3.get_object(Bucket="metrics", Key=o["Key"])["Body"].read()) for o in listed]
            if sum(p["messages"] for p in parts) >= sent:
                break
            self._remaining()
            time.sleep(0.5)
        total: dict[str, Any] = {"invocations": len(parts), "messages": 0, "malformed": 0, "screens": {}}
        for part in parts:
            total["messages"] += part["messages"]
            total["malformed"] += part["malformed"]
            for screen, entry in part["screens"].items():
                into = total["screens"].setdefault(screen, {"clicks": 0, "users": {}})
                into["clicks"] += entry["clicks"]
                for user, n in entry["users"].items():
                    into["users"][user] = into["users"].get(user, 0) + n
        return sent, total

    def _windows(self) -> list[dict[str, Any]]:
        """The metrics objects the windows' final invocations wrote (metrics/<start>/<shard>.json)."""
        client = self.info.s3_client()
        listed = client.list_objects_v2(Bucket="metrics", Prefix="metrics/").get("Contents", [])
        return [json.loads(client.get_object(Bucket="metrics", Key=item["Key"])["Body"].read())
                for item in sorted(listed, key=lambda item: item["Key"])]

    def _remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the demo did not finish in time")
        return left

    def _wait_for_object(self, bucket: str, key: str) -> bytes:
        client = self.info.s3_client()
        while True:
            try:
                body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
                return body
            except client.exceptions.NoSuchKey:
                self._remaining()
                time.sleep(0.3)

    @staticmethod
    def _size(data: bytes) -> tuple[int, int]:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            return width, height

    def _photo_via_webhook(self) -> tuple[int, int]:
        self.info.s3_client().put_object(Bucket="photos", Key="uploads/demo.jpg", Body=_jpeg(640, 480),
                                         ContentType="image/jpeg")
        return self._size(self._wait_for_object("photos-thumbnails", "uploads/demo.jpg"))

    async def _photo_via_mqtt(self) -> tuple[int, int]:
        import aiomqtt

        key = "albums/summer 2024/beach.jpg"
        body = _jpeg(800, 600)
        await asyncio.to_thread(self.info.s3_client().put_object, Bucket="minio-photos", Key=key, Body=body)
        envelope = _minio_envelope("minio-photos", key, len(body))
        async with aiomqtt.Client("127.0.0.1", self.info.mqtt_port, identifier=f"minio-{os.getpid()}",
                                  protocol=aiomqtt.ProtocolVersion.V311) as client:
            await client.publish("minio/events", json.dumps(envelope, separators=(",", ":")), qos=1)
        data = await asyncio.to_thread(self._wait_for_object, "minio-photos-thumbnails", key)
        return self._size(data)

    async def _clicks(self) -> dict[str, tuple[int, int]]:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

        producer = AIOKafkaProducer(bootstrap_servers=self.info.bootstrap, acks="all")
        await producer.start()
        produced: dict[int, int] = {}
        high: dict[int, int] = {}
        try:
            for i in range(DEMO_CLICKS):
                kind = "view" if i % 4 else "click"
                value = json.dumps({"type": kind, "user": f"u{i % 37}", "ts": round(time.time(), 3)})
                sent = await producer.send_and_wait("clicks", value.encode(), key=f"u{i % 37}".encode())
                produced[sent.partition] = produced.get(sent.partition, 0) + 1
                high[sent.partition] = max(high.get(sent.partition, 0), sent.offset + 1)
        finally:
            await producer.stop()
        # Tansu does not answer ListOffsets, so the demo knows the high watermarks from its own sends;
        # a consumer with the mapping's group id that never subscribes reads the checkpoints.
        reader = AIOKafkaConsumer(bootstrap_servers=self.info.bootstrap, group_id="router-clicks-to-metrics",
                                  enable_auto_commit=False)
        await reader.start()
        try:
            while True:
                done = {p: await reader.committed(TopicPartition("clicks", p)) for p in high}
                if all((done[p] or -1) >= h for p, h in high.items()):
                    return {f"shardId-{p:012d}": (produced[p], (done[p] or 0) - 1) for p in sorted(high)}
                self._remaining()
                await asyncio.sleep(0.5)
        finally:
            await reader.stop()


def _minio_envelope(bucket: str, key: str, size: int) -> dict[str, Any]:
    """What MinIO's MQTT target publishes for a PUT (see tests/fixtures/minio)."""
    from urllib.parse import quote_plus

    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
    return {
        "EventName": "s3:ObjectCreated:Put",
        "Key": f"{bucket}/{key}",
        "Records": [{
            "eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "", "eventTime": stamp,
            "eventName": "s3:ObjectCreated:Put", "userIdentity": {"principalId": "minioadmin"},
            "requestParameters": {"principalId": "minioadmin", "region": "", "sourceIPAddress": "127.0.0.1"},
            "responseElements": {"x-amz-request-id": f"{time.time_ns():X}"},
            "s3": {
                "s3SchemaVersion": "1.0", "configurationId": "Config",
                "bucket": {"name": bucket, "ownerIdentity": {"principalId": "minioadmin"},
                           "arn": f"arn:aws:s3:::{bucket}"},
                "object": {"key": quote_plus(key), "size": size, "eTag": "0" * 32,
                           "contentType": "image/jpeg", "sequencer": f"{time.time_ns():X}"},
            },
            "source": {"host": "127.0.0.1", "port": "", "userAgent": "router-dev-demo"},
        }],
    }
