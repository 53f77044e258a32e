"""The gallery example in a real headless Chromium: website + file processing on real SeaweedFS.

The browser loads /gallery/ (an HTTP route to router/examples/gallery.py), uploads a generated
PNG through the page's form, and the test waits until the page shows the thumbnail the bucket
notification made (the thumbnail function, through SeaweedFS's filer webhook) with its bytes
loaded. Chromium is driven over the DevTools protocol with aiohttp's websocket client; a
screenshot is saved to tmp_path and, with ROUTER_ARTIFACTS set, there as well.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image
from test_push_support import make_config, running

from router.devstack import SeaweedFS, free_port

pytestmark = pytest.mark.integration

TOKEN = "gallery-token"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """One browser tab over the DevTools protocol: just the commands this test needs."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        await self._ws.send_json({"id": ident, "method": method, "params": params})
        while True:
            message = await asyncio.wait_for(self._ws.receive_json(), 30)
            if message.get("id") == ident:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    async def evaluate(self, expression: str) -> Any:
        answer = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return answer.get("result", {}).get("value")

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.until("document.readyState === 'complete' && location.href.startsWith('http')", 15)

    async def until(self, expression: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.2)
        raise AssertionError(f"timed out waiting for {expression}")


@asynccontextmanager
async def chromium(tmp_path: Path) -> AsyncIterator[Page]:
    assert CHROMIUM is not None
    port = free_port()
    process = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium'}", f"--remote-debugging-port={port}",
         "--remote-allow-origins=*", "--window-size=1000,800", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession() as http:
            targets: list[dict[str, Any]] = []
            for _ in range(100):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/json/list") as answer:
                        targets = [t for t in await answer.json() if t.get("type") == "page"]
                    if targets:
                        break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            assert targets, "chromium did not open its DevTools endpoint"
            async with http.ws_connect(targets[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Page(ws)
                await page.send("Page.enable")
                yield page
    finally:
        process.kill()
        process.wait(10)


def png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 80, 30)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/setup test installs "
                                             "it where apt-get can run as root)")
async def test_upload_through_the_page_shows_the_new_thumbnail(
    seaweedfs_webhook: Callable[..., SeaweedFS], tmp_path: Path
) -> None:
    port = free_port()
    store = await asyncio.to_thread(seaweedfs_webhook, f"http://127.0.0.1:{port}/webhooks/seaweedfs", TOKEN)
    for bucket in ("gallery", "gallery-thumbnails"):
        await asyncio.to_thread(store.create_bucket, bucket)
    s3_env = {"AWS_ENDPOINT_URL_S3": store.s3_endpoint, "AWS_ACCESS_KEY_ID": store.access_key,
              "AWS_SECRET_ACCESS_KEY": store.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}
    config = make_config({
        "state_dir": str(tmp_path / "state"), "shutdown_timeout_seconds": 5,
        "functions": {
            "thumbnail": {"handler": "router.examples.thumbnail.handler", "timeout": 30, "memory_size": 512,
                          "environment": {"variables": {"THUMB_SIZE": "96", **s3_env}}},
            "gallery": {"handler": "router.examples.gallery.handler", "timeout": 10,
                        "environment": {"variables": {"PHOTOS_BUCKET": "gallery", **s3_env}}},
        },
        "http": {"listen": f"127.0.0.1:{port}", "webhook_token": TOKEN},
        "http_routes": {"gallery-page": {"function_name": "gallery", "path": "/gallery"},
                        "gallery": {"function_name": "gallery", "path": "/gallery/{proxy+}"}},
        "event_source_mappings": {"gallery-thumbnails": {
            "function_name": "thumbnail", "retry_delays_seconds": [1],
            "bucket_notifications": {"transport": "webhook", "bucket": "gallery", "events": ["s3:ObjectCreated:*"]},
        }},
    })
    picture = tmp_path / "sunset.png"
    picture.write_bytes(png((640, 320)))
    async with running(config), chromium(tmp_path) as page:
        await page.goto(f"http://127.0.0.1:{port}/gallery")
        assert await page.evaluate("document.querySelector('h1').textContent") == "Gallery"
        assert await page.evaluate("document.querySelectorAll('#thumbnails img').length") == 0

        document = await page.send("DOM.getDocument")
        found = await page.send("DOM.querySelector", nodeId=document["root"]["nodeId"], selector="#photo")
        await page.send("DOM.setFileInputFiles", files=[str(picture)], nodeId=found["nodeId"])
        # A marker on the old document: the wait below ends only once the 303 has brought a new one,
        # so a slow browser's submission is never cut off by the next navigation.
        await page.evaluate("window.uploadPending = true; document.getElementById('upload').submit()")
        await page.until("window.uploadPending === undefined && location.pathname === '/gallery' "
                         "&& document.readyState === 'complete'", 30)

        loaded = """(() => { const img = document.querySelector('img[data-key="sunset.png"]');
                        return img !== null && img.complete && img.naturalWidth > 0 ? img.naturalWidth : 0; })()"""
        deadline = time.monotonic() + 40
        width = 0
        while time.monotonic() < deadline and not width:
            await page.goto(f"http://127.0.0.1:{port}/gallery")
            width = await page.evaluate(loaded) or 0
            if not width:
                await asyncio.sleep(0.5)
        assert width == 96  # the thumbnail's bytes, 640x320 scaled to a 96 px longest side
        assert await page.evaluate("document.getElementById('count').textContent") == "1 thumbnail(s)"
        shot = await page.send("Page.captureScreenshot", format="png")
    image = base64.b64decode(shot["data"])
    for folder in [tmp_path, *([Path(os.environ["ROUTER_ARTIFACTS"])] if os.environ.get("ROUTER_ARTIFACTS") else [])]:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "gallery.png").write_bytes(image)
    with Image.open(io.BytesIO(image)) as screenshot:
        assert screenshot.size[0] > 0
