"""File processing: make a thumbnail of every photo uploaded to a bucket.

This is an ordinary Lambda handler, written as in AWS's "Using an Amazon S3 trigger to create
thumbnail images" tutorial, so it runs unchanged on Lambda and under router. Everything it needs
comes from the event and from environment variables set in the function's configuration, as on
Lambda: boto3 reads AWS_ENDPOINT_URL_S3 / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY itself.

* THUMB_SIZE (default 128): the thumbnail's longest side, in pixels.
* MAX_IMAGE_PIXELS (default 40,000,000): larger images are refused; a small file can decode into
  gigabytes (a "decompression bomb"), so Pillow's pixel limit is enforced strictly.
* MAX_OBJECT_BYTES (default 50 MiB): larger objects are not downloaded at all.

The thumbnail goes to `<bucket>-thumbnails` under the same key. Records for that bucket are
skipped, so a notification rule that also covers the thumbnail bucket cannot start a loop.
Objects that are not images are logged and skipped: retrying them could never succeed.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from typing import Any
from urllib.parse import unquote_plus

import boto3
from PIL import Image, ImageOps, UnidentifiedImageError

THUMBNAIL_SUFFIX = "-thumbnails"

logger = logging.getLogger(__name__)
logger.setLevel(logging.INFO)

# Created once per execution environment and reused by warm invocations, as Lambda recommends.
s3 = boto3.client("s3")


class SkipObject(Exception):
    """This object gets no thumbnail; the message says why."""


def _settings() -> tuple[int, int, int]:
    return (
        int(os.environ.get("THUMB_SIZE", "128")),
        int(os.environ.get("MAX_IMAGE_PIXELS", "40000000")),
        int(os.environ.get("MAX_OBJECT_BYTES", str(50 * 1024 * 1024))),
    )


def make_thumbnail(data: bytes, size: int, max_pixels: int) -> tuple[bytes, str, tuple[int, int]]:
    """The thumbnail's bytes, its content type and its dimensions, in the source's format."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    with warnings.catch_warnings():
        # Pillow only warns between the limit and twice the limit; refuse there as well.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                source_format = image.format or "PNG"
                image.load()
                picture = ImageOps.exif_transpose(image)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise SkipObject(f"refused: {exc}") from None
        except UnidentifiedImageError:
            raise SkipObject("not an image") from None
    picture.thumbnail((size, size))
    if source_format == "JPEG" and picture.mode not in ("RGB", "L"):
        picture = picture.convert("RGB")
    out = io.BytesIO()
    picture.save(out, format=source_format)
    content_type = Image.MIME.get(source_format, "application/octet-stream")
    return out.getvalue(), content_type, picture.size


def _thumbnail_for(bucket: str, key: str, size: int, max_pixels: int, max_bytes: int) -> dict[str, Any]:
    if bucket.endswith(THUMBNAIL_SUFFIX):
        raise SkipObject("object is a thumbnail already")
    head = s3.head_object(Bucket=bucket, Key=key)
    if head.get("ContentLength", 0) > max_bytes:
        raise SkipObject(f"object is over {max_bytes} bytes")
    data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    body, content_type, dimensions = make_thumbnail(data, size, max_pixels)
    target = f"{bucket}{THUMBNAIL_SUFFIX}"
    s3.put_object(Bucket=target, Key=key, Body=body, ContentType=content_type)
    logger.info("thumbnail %s/%s -> %s/%s %sx%s", bucket, key, target, key, *dimensions)
    return {"bucket": target, "key": key, "width": dimensions[0], "height": dimensions[1]}


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    size, max_pixels, max_bytes = _settings()
    made: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for record in event.get("Records", []):
        bucket = record["s3"]["bucket"]["name"]
        key = unquote_plus(record["s3"]["object"]["key"])  # S3 form-encodes keys in events
        if not record.get("eventName", "").startswith("ObjectCreated:"):
            skipped.append({"bucket": bucket, "key": key, "reason": f"event {record.get('eventName')}"})
            continue
        try:
            made.append(_thumbnail_for(bucket, key, size, max_pixels, max_bytes))
        except SkipObject as why:
            logger.warning("no thumbnail for %s/%s: %s", bucket, key, why)
            skipped.append({"bucket": bucket, "key": key, "reason": str(why)})
    return {"thumbnails": made, "skipped": skipped}
