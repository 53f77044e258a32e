"""The dead-letter store for notifications the router cannot read.

A sender that gets an error for a payload it will never be able to fix retries it forever (MinIO's
`queue_dir` store blocks everything behind it). So an unparseable payload is written here, with
the reason and where it came from, and only then acknowledged: nothing that reached the router is
dropped silently, and an operator can inspect or replay the exact bytes.

Layout: `<directory>/<source>/<sha256>.payload` holds the raw bytes, `<sha256>.json` the reason,
source, topic, size and first receipt time. Files are named by content, so a sender that keeps
retrying the same bad payload fills one file, not the disk. Each file is written to a temporary
name, fsynced, renamed into place, and the directory fsynced: once `write` returns, the record
survives a crash of the process or the machine.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from router.observability.metrics import Metrics

_SAFE_SOURCE = re.compile(r"[^A-Za-z0-9_.-]+")


class DeadLetter:
    def __init__(
        self,
        directory: Path,
        *,
        metrics: Metrics | None = None,
        log: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self._metrics = metrics
        self._log = log or structlog.get_logger("router.dead_letter")
        self._clock = clock
        self.written = 0  # payloads dead-lettered by this process (repeats included)

    async def write(self, payload: bytes, *, reason: str, source: str, topic: str | None = None) -> Path:
        """Durably keep `payload`; returns the path of its metadata file. Raises OSError when the
        disk refuses, so the caller does not acknowledge what it could not keep."""
        digest = hashlib.sha256(payload).hexdigest()
        folder = self.directory / (_SAFE_SOURCE.sub("_", source) or "unknown")
        meta = {
            "reason": reason,
            "source": source,
            "topic": topic,
            "size": len(payload),
            "sha256": digest,
            "received_at": datetime.fromtimestamp(self._clock(), UTC).isoformat(timespec="milliseconds"),
            "payload_file": f"{digest}.payload",
        }
        path = await asyncio.to_thread(self._write_sync, folder, digest, payload, meta)
        self.written += 1
        self._log.warning(
            "dead_letter.written", source=source, topic=topic, reason=reason, size=len(payload),
            sha256=digest, path=str(path),
        )
        return path

    def _write_sync(self, folder: Path, digest: str, payload: bytes, meta: dict[str, Any]) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        meta_path = folder / f"{digest}.json"
        if meta_path.exists():
            return meta_path  # the same bytes were kept before; the first receipt stands
        _durable_write(folder / f"{digest}.payload", payload)
        _durable_write(meta_path, json.dumps(meta, indent=2, ensure_ascii=False).encode("utf-8", "backslashreplace"))
        _fsync_dir(folder)
        return meta_path

    def count(self) -> int:
        """Dead-lettered payloads on disk (all sources)."""
        if not self.directory.exists():
            return 0
        return sum(1 for _ in self.directory.glob("*/*.json"))


def _durable_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
