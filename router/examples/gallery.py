"""Websites: a photo gallery whose backend is one Lambda function behind an HTTP route.

It ties three of Lambda's application types together: the page (a website: HTTP → function →
response) takes uploads into the photos bucket, whose notifications run the thumbnail function
(file processing), and lists what that function wrote to the thumbnail bucket. Routed as
`ANY /gallery` and `ANY /gallery/{proxy+}` (a greedy variable needs at least one segment) with
API Gateway HTTP API (payload 2.0) events, so it runs unchanged behind a real API Gateway:

* `GET /gallery`: the page: every thumbnail as an <img>, and an upload form;
* `GET /gallery/thumbs/<key>`: a thumbnail's bytes (a binary response, base64 in the result);
* `POST /gallery/upload`: multipart/form-data from the form (field `photo`), or a raw body with
  `?name=<key>`; the original goes to the photos bucket and the browser is sent back (303).

Configuration, as on Lambda, from the environment: PHOTOS_BUCKET (default "photos"), the thumbnail
bucket `<PHOTOS_BUCKET>-thumbnails`, and boto3's own AWS_ENDPOINT_URL_S3 and credentials.
"""

from __future__ import annotations

import base64
import html
import os
import re
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import quote

import boto3

s3 = boto3.client("s3")

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    method = event["requestContext"]["http"]["method"]
    path = event["rawPath"].rstrip("/")
    if method == "GET" and path == "/gallery":
        return _page()
    if method == "GET" and path.startswith("/gallery/thumbs/"):
        return _thumbnail(path.removeprefix("/gallery/thumbs/"))
    if method == "POST" and path == "/gallery/upload":
        return _upload(event)
    return {"statusCode": 404, "headers": {"content-type": "text/plain"}, "body": "not found"}


def _buckets() -> tuple[str, str]:
    photos = os.environ.get("PHOTOS_BUCKET", "photos")
    return photos, f"{photos}-thumbnails"


def _page() -> dict[str, Any]:
    _, thumbs = _buckets()
    try:
        listed = s3.list_objects_v2(Bucket=thumbs).get("Contents", [])
    except s3.exceptions.NoSuchBucket:
        listed = []
    items = "\n".join(
        f'<li><img id="thumb-{html.escape(o["Key"])}" data-key="{html.escape(o["Key"])}" '
        f'src="/gallery/thumbs/{quote(o["Key"])}" alt="{html.escape(o["Key"])}"></li>'
        for o in sorted(listed, key=lambda o: o["Key"])
    )
    body = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Gallery</title></head>
<body>
<h1>Gallery</h1>
<form id="upload" action="/gallery/upload" method="post" enctype="multipart/form-data">
  <input id="photo" type="file" name="photo" accept="image/*"> <button type="submit">Upload</button>
</form>
<p id="count">{len(listed)} thumbnail(s)</p>
<ul id="thumbnails">
{items}
</ul>
</body></html>"""
    return {"statusCode": 200, "headers": {"content-type": "text/html; charset=utf-8"}, "body": body}


def _thumbnail(key: str) -> dict[str, Any]:
    _, thumbs = _buckets()
    try:
        found = s3.get_object(Bucket=thumbs, Key=key)
    except s3.exceptions.NoSuchKey:
        return {"statusCode": 404, "headers": {"content-type": "text/plain"}, "body": "no such thumbnail"}
    return {"statusCode": 200, "isBase64Encoded": True,
            "headers": {"content-type": found.get("ContentType", "application/octet-stream"),
                        "cache-control": "no-store"},
            "body": base64.b64encode(found["Body"].read()).decode()}


def _upload(event: dict[str, Any]) -> dict[str, Any]:
    raw = event.get("body") or ""
    body = base64.b64decode(raw) if event.get("isBase64Encoded") else raw.encode()
    content_type = event["headers"].get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        name, data, data_type = _form_file(content_type, body)
    else:
        query = event.get("queryStringParameters") or {}
        name, data, data_type = query.get("name", ""), body, content_type or "application/octet-stream"
    key = _SAFE_NAME.sub("-", os.path.basename(name)).strip("-.")
    if not key or not data:
        return {"statusCode": 400, "headers": {"content-type": "text/plain"}, "body": "a named, non-empty file"}
    photos, _ = _buckets()
    s3.put_object(Bucket=photos, Key=key, Body=data, ContentType=data_type)
    return {"statusCode": 303, "headers": {"location": "/gallery"}, "body": ""}


def _form_file(content_type: str, body: bytes) -> tuple[str, bytes, str]:
    """The `photo` part of a multipart/form-data body: (file name, bytes, content type)."""
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "photo":
            data = part.get_payload(decode=True)
            return part.get_filename() or "", data if isinstance(data, bytes) else b"", part.get_content_type()
    return "", b"", ""
