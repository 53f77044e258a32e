"""The file-processing example end to end: a photo PUT into SeaweedFS becomes a thumbnail in
`photos-thumbnails`, through the filer webhook, the router's queue and a real worker process."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from test_push_support import make_config, metric, running, wait_until

from router.devstack import SeaweedFS, free_port

pytestmark = pytest.mark.integration

TOKEN = "thumbnail-webhook-token"


def image_bytes(size: tuple[int, int], fmt: str, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, (200, 120, 40, 255)[: len(mode)]).save(out, format=fmt)
    return out.getvalue()


def read_object(store: SeaweedFS, bucket: str, key: str) -> tuple[bytes, str] | None:
    client = store.s3_client()
    try:
        answer = client.get_object(Bucket=bucket, Key=key)
    except client.exceptions.NoSuchKey:
        return None
    return answer["Body"].read(), answer["ContentType"]


async def test_photo_upload_makes_a_thumbnail_through_the_seaweedfs_webhook(
    seaweedfs_webhook: Callable[..., SeaweedFS], tmp_path: Path
) -> None:
    port = free_port()
    store = await asyncio.to_thread(seaweedfs_webhook, f"http://127.0.0.1:{port}/webhooks/seaweedfs", TOKEN)
    for bucket in ("photos", "photos-thumbnails"):
        await asyncio.to_thread(store.create_bucket, bucket)
    config = make_config({
        "region": "us-east-1",
        "state_dir": str(tmp_path / "state"),
        "shutdown_timeout_seconds": 5,
        "functions": {"thumbnail": {
            "handler": "router.examples.thumbnail.handler", "timeout": 30, "memory_size": 512,
            "reserved_concurrent_executions": 2,
            "environment": {"variables": {
                "THUMB_SIZE": "128", "AWS_ENDPOINT_URL_S3": store.s3_endpoint,
                "AWS_ACCESS_KEY_ID": store.access_key, "AWS_SECRET_ACCESS_KEY": store.secret_key,
            }},
        }},
        "http": {"listen": f"127.0.0.1:{port}", "webhook_token": TOKEN},
        "event_source_mappings": {"photos-to-thumbnails": {
            "function_name": "thumbnail",
            "bucket_notifications": {"transport": "webhook", "bucket": "photos", "events": ["s3:ObjectCreated:*"],
                                     "prefix": "uploads/"},
            "retry_delays_seconds": [1, 1],
        }},
    })
    uploads: dict[str, tuple[bytes, str]] = {
        "uploads/summer trip/café + friends.jpg": (image_bytes((640, 480), "JPEG"), "image/jpeg"),
        "uploads/tall.png": (image_bytes((300, 600), "PNG", "RGBA"), "image/png"),
        "uploads/notes.txt": (b"not a picture", "text/plain"),
    }

    async with running(config) as app:
        s3 = store.s3_client()
        for key, (body, content_type) in uploads.items():
            await asyncio.to_thread(s3.put_object, Bucket="photos", Key=key, Body=body, ContentType=content_type)

        found: dict[str, Any] = {}

        def thumbnails_made() -> bool:
            for key in ("uploads/summer trip/café + friends.jpg", "uploads/tall.png"):
                if key not in found:
                    got = read_object(store, "photos-thumbnails", key)
                    if got is not None:
                        found[key] = got
            return len(found) == 2

        # polled on a thread: boto3 blocks, and the router shares this event loop
        assert await asyncio.to_thread(_poll, thumbnails_made, 60), f"thumbnails missing; have {sorted(found)}"
        # the text file was invoked too (it matches the rule) and skipped by the handler
        await wait_until(
            lambda: metric(app, "router_invocations_total", function="thumbnail", outcome="success") >= 3,
            30, "three successful invocations")
        # the filer also reported directory entries and the thumbnails' own writes: none invoked
        assert metric(app, "router_notifications_total", source="seaweedfs", outcome="ignored") >= 1
        assert metric(app, "router_notifications_total", source="seaweedfs", outcome="unmatched") >= 2

    jpeg, jpeg_type = found["uploads/summer trip/café + friends.jpg"]
    with Image.open(io.BytesIO(jpeg)) as thumb:
        assert (thumb.format, thumb.size) == ("JPEG", (128, 96))
    assert jpeg_type == "image/jpeg"
    png, png_type = found["uploads/tall.png"]
    with Image.open(io.BytesIO(png)) as thumb:
        assert (thumb.format, thumb.size, thumb.mode) == ("PNG", (64, 128), "RGBA")
    assert png_type == "image/png"
    assert await asyncio.to_thread(read_object, store, "photos-thumbnails", "uploads/notes.txt") is None


def _poll(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False
