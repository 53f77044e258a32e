"""The thumbnail example's pure parts: sizing, formats, refusing bombs and non-images, loops."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from router.examples import thumbnail


def encoded(size: tuple[int, int], fmt: str = "JPEG", mode: str = "RGB", **save: Any) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, format=fmt, **save)
    return out.getvalue()


def test_longest_side_becomes_the_thumbnail_size_and_the_format_is_kept() -> None:
    body, content_type, dimensions = thumbnail.make_thumbnail(encoded((640, 480)), 128, 10**7)
    assert (content_type, dimensions) == ("image/jpeg", (128, 96))
    with Image.open(io.BytesIO(body)) as image:
        assert (image.format, image.size) == ("JPEG", (128, 96))
    body, content_type, dimensions = thumbnail.make_thumbnail(encoded((90, 300), "PNG", "RGBA"), 60, 10**7)
    assert (content_type, dimensions) == ("image/png", (18, 60))


def test_small_images_are_not_enlarged() -> None:
    assert thumbnail.make_thumbnail(encoded((50, 20)), 128, 10**7)[2] == (50, 20)


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when shown
    _, _, dimensions = thumbnail.make_thumbnail(encoded((200, 100), exif=exif.tobytes()), 100, 10**7)
    assert dimensions == (50, 100)


@pytest.mark.parametrize("size", [(40, 40), (100, 100)])  # over the limit, and over twice the limit
def test_decompression_bombs_are_refused(size: tuple[int, int]) -> None:
    with pytest.raises(thumbnail.SkipObject, match="refused"):
        thumbnail.make_thumbnail(encoded(size, "PNG"), 16, max_pixels=1000)


def test_non_images_are_skipped() -> None:
    with pytest.raises(thumbnail.SkipObject, match="not an image"):
        thumbnail.make_thumbnail(b"%PDF-1.7 not a picture", 128, 10**7)


def test_handler_never_processes_its_own_output_nor_removals(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoS3:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"no S3 call expected, got {name}")

    monkeypatch.setattr(thumbnail, "s3", NoS3())
    event = {"Records": [
        {"eventName": "ObjectCreated:Put",
         "s3": {"bucket": {"name": "photos-thumbnails"}, "object": {"key": "a/b+c.jpg"}}},
        {"eventName": "ObjectRemoved:Delete", "s3": {"bucket": {"name": "photos"}, "object": {"key": "x.jpg"}}},
    ]}
    result = thumbnail.handler(event, None)
    assert result["thumbnails"] == []
    assert [(s["bucket"], s["key"]) for s in result["skipped"]] == [("photos-thumbnails", "a/b c.jpg"),
                                                                    ("photos", "x.jpg")]
