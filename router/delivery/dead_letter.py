"""The dead-letter store for notifications the router cannot read.

A sender that gets an error for a payload it will never be able to fix retries it forever (MinIO's
`queue_dir` store blocks everything behind it). So an unparseable payload is written here, with
the reason and where it came from, and only then acknowledged: nothing that reached the router is
dropped silently, and an operator can inspect or replay the exact bytes.

The store is bounded (`dead_letter_max_bytes`): a sender that keeps sending *different* garbage
must not fill the disk that holds the async queue. Once the payloads kept reach the bound, an
unreadable notification's metadata (reason, source, size, sha256) is still written, but not its
bytes (`payload_file` null, `payload_dropped` says why, counted in
router_dead_letter_payloads_dropped); a write that must keep its bytes (`required`, a destination
record: it holds data that exists nowhere else) raises DeadLetterFull, which its caller retries,
so nothing that is real data is lost while an operator makes room.

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


class DeadLetterFull(OSError):
    """A payload that must be kept whole does not fit within dead_letter_max_bytes."""


class DeadLetter:
    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int | None = None,
        metrics: Metrics | None = None,
        log: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._used: int | None = None  # payload bytes on disk, counted at the first write
        self._metrics = metrics
        self._log = log or structlog.get_logger("router.dead_letter")
        self._clock = clock
        self.written = 0  # payloads dead-lettered by this process (repeats included)

    async def write(
        self, payload: bytes, *, reason: str, source: str, topic: str | None = None, required: bool = False,
    ) -> Path:
        """Durably keep `payload`; returns the path of its metadata file. Raises OSError when the
        disk refuses, so the caller does not acknowledge what it could not keep, and DeadLetterFull
        when a `required` payload does not fit in the bound (see the module docstring)."""
        digest = hashlib.sha256(payload).hexdigest()
        folder = self.directory / (_SAFE_SOURCE.sub("_", source) or "unknown")
        if self._used is None:
            self._used = await asyncio.to_thread(self._measure)
        keep = self.max_bytes is None or self._used + len(payload) <= self.max_bytes
        if not keep and required:
            raise DeadLetterFull(f"dead-letter store full: {self._used} of {self.max_bytes} bytes used, "
                                 f"{len(payload)} more needed")
        meta: dict[str, Any] = {
            "reason": reason,
            "source": source,
            "topic": topic,
            "size": len(payload),
            "sha256": digest,
            "received_at": datetime.fromtimestamp(self._clock(), UTC).isoformat(timespec="milliseconds"),
            "payload_file": f"{digest}.payload" if keep else None,
        }
        if not keep:
            meta["payload_dropped"] = f"dead-letter store full ({self._used} of {self.max_bytes} bytes)"
        path, added = await asyncio.to_thread(self._write_sync, folder, digest, payload if keep else None, meta)
        self._used += added
        self.written += 1
        if self._metrics is not None:
            self._metrics.dead_letter_bytes.set(self._used)
            if not keep:
                self._metrics.dead_letter_payloads_dropped.labels(source).inc()
        (self._log.warning if keep else self._log.error)(
            "dead_letter.written", source=source, topic=topic, reason=reason, size=len(payload),
            sha256=digest, path=str(path), payload_kept=keep,
        )
        return path

    def _measure(self) -> int:
        if not self.directory.exists():
            return 0
        return sum(p.stat().st_size for p in self.directory.glob("*/*.payload"))

    def _write_sync(
        self, folder: Path, digest: str, payload: bytes | None, meta: dict[str, Any],
    ) -> tuple[Path, int]:
        folder.mkdir(parents=True, exist_ok=True)
        meta_path = folder / f"{digest}.json"
        if meta_path.exists():
            return meta_path, 0  # the same bytes were kept before; the first receipt stands
        if payload is not None:
            _durable_write(folder / f"{digest}.payload", payload)
        _durable_write(meta_path, json.dumps(meta, indent=2, ensure_ascii=False).encode("utf-8", "backslashreplace"))
        _fsync_dir(folder)
        return meta_path, len(payload) if payload is not None else 0

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
