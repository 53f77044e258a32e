"""The durable asynchronous invocation queue: one SQLite file in `state_dir`.

Why SQLite: an accepted notification must survive a crash of the daemon or the machine, and an
MQTT PUBACK or a webhook 200 is only sent after `enqueue` returns. Concurrent callers are
group-committed (one fsync for everything that arrived while the previous commit was being made
durable), so durability does not cost one fsync per notification.

The fsync is ours, not SQLite's: an accepting batch is committed with synchronous=NORMAL and then
the WAL file is fsynced on a second thread before any caller of the batch is answered. That is the
same guarantee as synchronous=FULL in WAL mode (the WAL, commit frame included, is on disk before
the acknowledgement), but the SQLite thread is not blocked during the fsync, so claims and
settlements do not queue behind every accepting commit.

Settling an attempt (completing, rescheduling or parking an event) is write-behind: the write
waits a few milliseconds for company and then rides on the next transaction anyway, usually the
dispatcher's next claim, so draining the queue costs one round trip to the SQLite thread per claim
of many events rather than one per event. Those commits are not fsynced: a settlement lost to a
power cut only means the event runs again, which at-least-once delivery allows, and the next
accepting commit's fsync makes it durable anyway. A process crash (even SIGKILL) loses nothing
that was committed. (The connection runs at synchronous=NORMAL throughout; only the schema setup
at open is committed at FULL.)

Claims are deliberately *not* persisted. An event being worked on is only marked in memory, so after
a restart (clean or SIGKILL) every unfinished event is simply due again: at-least-once, never lost.
The row is changed only when an attempt's outcome is known (rescheduled, parked for a destination
write, or deleted once done).

All SQLite work runs on one dedicated thread, which also owns the in-memory claim set, so a claim
can never race a completion.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from router.observability.metrics import Metrics
from router.runtime.request_ids import RequestIds

T = TypeVar("T")
# collect: an app-event message waiting to be batched (router.delivery.event_batcher);
# invoke: waiting for (another) invocation; deliver: invoked, its destination record not yet written.
Stage = Literal["collect", "invoke", "deliver"]

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    mapping           TEXT    NOT NULL,
    function          TEXT    NOT NULL,
    event             TEXT    NOT NULL,
    request_id        TEXT    NOT NULL,
    dedup_key         TEXT,
    accepted_at       REAL    NOT NULL,
    due_at            REAL    NOT NULL,
    stage             TEXT    NOT NULL DEFAULT 'invoke',
    invoke_count      INTEGER NOT NULL DEFAULT 0,
    system_errors     INTEGER NOT NULL DEFAULT 0,
    last_response     TEXT,
    delivery          TEXT,
    delivery_attempts INTEGER NOT NULL DEFAULT 0,
    last_error        TEXT
);
CREATE INDEX IF NOT EXISTS events_lane ON events (mapping, stage, due_at, id);
CREATE TABLE IF NOT EXISTS dedup (
    mapping     TEXT NOT NULL,
    dedup_key   TEXT NOT NULL,
    accepted_at REAL NOT NULL,
    PRIMARY KEY (mapping, dedup_key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedup_age ON dedup (accepted_at);
"""


class QueueClosed(RuntimeError):
    """The queue is not open (before `open` or after `close`)."""


class EventTooLarge(ValueError):
    """An event larger than its queue can store (`max_event_bytes`): never retried."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"event of {size} bytes is larger than the queue stores ({limit})")
        self.size, self.limit = size, limit


# SQLite keeps a TEXT value up to 1 GB; anything near that is refused long before (HTTP bodies,
# MQTT messages), so this is only the protocol's answer.
SQLITE_MAX_EVENT_BYTES = 1_000_000_000


@dataclass(frozen=True)
class QueuedEvent:
    mapping: str
    function: str
    # The invocation payload, e.g. {"Records": [s3 record]}, or its JSON text already encoded (so
    # that a value which cannot be serialised fails with the payload that brought it, not the queue).
    event: dict[str, Any] | str
    dedup_key: str | None = None  # bucket, key, version/eTag, sequencer, event name → str
    stage: Stage = "invoke"  # "collect": a record to be batched before it is invoked
    dedup_window: float | None = None  # this event's own window, instead of the enqueue call's


def encode_event(event: dict[str, Any]) -> str:
    """An event's JSON as the queue stores it. ASCII only (non-ASCII and lone surrogates are
    escaped), so once a source has it, storing it cannot fail on the text."""
    return json.dumps(event, separators=(",", ":"))


def event_json(event: dict[str, Any] | str) -> str:
    """A QueuedEvent's payload as stored: its JSON text, encoded here unless a source did already."""
    return event if isinstance(event, str) else encode_event(event)


def fitting(body: str, limit: int) -> str:
    """`body`, or EventTooLarge when a queue that stores `limit` cannot take it (the JSON is ASCII,
    so its characters are its bytes)."""
    if len(body) > limit:
        raise EventTooLarge(len(body), limit)
    return body


@dataclass(frozen=True)
class Collected:
    batched: int  # batch events made (0 or 1)
    due_at: float | None  # when the waiting partial batch is due (None: nothing waits)


@dataclass(frozen=True)
class EnqueueResult:
    accepted: int
    duplicates: int


@dataclass(frozen=True)
class LastResponse:
    """The most recent attempt's result, kept so a record can be written after a restart."""

    request_id: str
    payload: Any
    function_error: str | None
    error_type: str | None

    def to_json(self) -> str:
        return json.dumps(
            {"request_id": self.request_id, "payload": self.payload,
             "function_error": self.function_error, "error_type": self.error_type},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | None) -> LastResponse | None:
        if not text:
            return None
        data = json.loads(text)
        return cls(data["request_id"], data.get("payload"), data.get("function_error"), data.get("error_type"))


@dataclass(frozen=True)
class PendingDelivery:
    """A destination record decided on but not yet durably written to its destination.

    The object key is fixed when the record is built, so a retried S3 write after an ambiguous
    failure overwrites the same object rather than adding a second one.
    """

    uri: str
    key: str
    kind: Literal["on_failure", "on_success"]
    condition: str
    record: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(
            {"uri": self.uri, "key": self.key, "kind": self.kind, "condition": self.condition,
             "record": self.record},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | None) -> PendingDelivery | None:
        if not text:
            return None
        data = json.loads(text)
        return cls(data["uri"], data["key"], data["kind"], data["condition"], data["record"])


@dataclass(frozen=True)
class StoredEvent:
    """An event as the dispatcher sees it after a claim.

    The payload is kept as the JSON text it was stored as: the worker pool takes it as it is, so
    the hot path neither decodes nor re-encodes it. `event` decodes it only when someone needs the
    object (a destination record)."""

    id: int
    mapping: str
    function: str
    event_json: str
    request_id: str
    accepted_at: float
    due_at: float
    stage: Stage
    invoke_count: int
    system_errors: int
    last_response: LastResponse | None
    delivery: PendingDelivery | None
    delivery_attempts: int

    @functools.cached_property
    def event(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.event_json)
        return event


@dataclass(frozen=True)
class Claim:
    events: list[StoredEvent]
    # When the lane's next unclaimed event becomes due (None: nothing else waiting).
    next_due: float | None


@dataclass(frozen=True)
class MappingStats:
    depth: int
    oldest_accepted_at: float | None
    retries_scheduled: int
    awaiting_delivery: int
    due: int = 0  # events to invoke now (not waiting for a scheduled retry), in flight included


@dataclass
class _Write:
    run: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    unclaim: int | None = None


@dataclass(frozen=True)
class ClaimRequest:
    """One lane's part of a combined claim: up to `limit` events, drawn from the shared `budget`."""

    mapping: str
    stage: Stage
    limit: int
    budget: str  # key into the budgets of `claim_many`: lanes sharing a function share its free slots
    # Take events due by this time instead of now (math.inf: everything, retries scheduled later
    # included; a deleted mapping's events are drained that way).
    due_by: float | None = None


# Settlements wait at most this long for company before they are committed on their own …
SETTLE_DELAY = 0.002
# … or until this many are waiting.
SETTLE_BATCH = 256


_COLUMNS = (
    "id, mapping, function, event, request_id, accepted_at, due_at, stage, invoke_count, "
    "system_errors, last_response, delivery, delivery_attempts"
)


def _row_to_event(row: tuple[Any, ...]) -> StoredEvent:
    return StoredEvent(
        id=row[0], mapping=row[1], function=row[2], event_json=row[3], request_id=row[4],
        accepted_at=row[5], due_at=row[6], stage=row[7], invoke_count=row[8], system_errors=row[9],
        last_response=LastResponse.from_json(row[10]), delivery=PendingDelivery.from_json(row[11]),
        delivery_attempts=row[12],
    )


class AsyncQueue:
    def __init__(
        self, path: Path, *, clock: Callable[[], float] = time.time, metrics: Metrics | None = None
    ) -> None:
        self.path = path
        self._clock = clock
        self.metrics = metrics
        self._executor: ThreadPoolExecutor | None = None
        self._syncer: ThreadPoolExecutor | None = None  # fsyncs the WAL off the SQLite thread
        self._wal_fd: int | None = None
        # Set when an fsync of the WAL failed: nothing may be acknowledged any more (see _sync_wal).
        self._failed: str | None = None
        self._conn: sqlite3.Connection | None = None
        self._claimed: set[int] = set()  # touched only on the SQLite thread
        self._pending: list[_Write] = []
        self._flusher: asyncio.Task[None] | None = None
        # Write-behind settlements, handed to whichever SQLite call runs next.
        self._settling: list[_Write] = []
        self._settle_timer: asyncio.TimerHandle | None = None
        # Called once accepted events are committed (visible to claims), before their fsync: the
        # dispatcher may start them early; an event run before it is durable is only at-least-once.
        self.on_committed: Callable[[], None] | None = None
        # One urandom call per 64 ids, not one per enqueue (a notification at a time at low rates).
        self._request_ids = RequestIds()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._executor is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._failed = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="async-queue")
        self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="async-queue-sync")
        try:
            await self._call(self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._syncer.shutdown(wait=False)
            self._executor = self._syncer = None
            raise

    def _open_sync(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"{self.path}: cannot use WAL journal mode (got {mode})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("BEGIN IMMEDIATE")
            # One statement at a time: executescript() would commit behind our transaction's back.
            for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            conn.execute("COMMIT")
            # From here on the fsyncs are ours (see the module docstring): commits only reach the OS.
            conn.execute("PRAGMA synchronous=NORMAL")
            # The WAL exists while this connection is open; durability of accepting commits is an
            # fsync of it (see the module docstring), and of the directory entry naming it.
            self._wal_fd = os.open(f"{self.path}-wal", os.O_RDONLY)
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except BaseException:
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None
            conn.close()
            raise
        self._conn = conn
        self._claimed.clear()

    async def close(self) -> None:
        if self._executor is None:
            return
        if self._settle_timer is not None:
            self._settle_timer.cancel()
            self._settle_timer = None
        while self._settling or (self._flusher is not None and not self._flusher.done()):
            if self._flusher is None or self._flusher.done():
                self._flusher = asyncio.get_running_loop().create_task(self._flush())
            await asyncio.shield(self._flusher)
        executor, syncer = self._executor, self._syncer
        await asyncio.get_running_loop().run_in_executor(executor, self._close_sync)
        self._executor = self._syncer = None
        executor.shutdown(wait=True)
        if syncer is not None:
            syncer.shutdown(wait=True)

    def _close_sync(self) -> None:
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._claimed.clear()

    @property
    def is_open(self) -> bool:
        return self._executor is not None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def max_event_bytes(self) -> int:
        return SQLITE_MAX_EVENT_BYTES

    def status(self) -> dict[str, Any]:
        return {"queue": f"sqlite:{self.path}", "open": self.is_open}

    # -- plumbing ----------------------------------------------------------------------------------

    async def _call(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise QueueClosed("the asynchronous queue is not open")
        if self._failed is not None:
            raise QueueClosed(self._failed)
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def _call_settling(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the SQLite thread after committing the waiting settlements, in one round trip."""
        if self._executor is None:
            raise QueueClosed("the asynchronous queue is not open")
        batch = self._take_settling()
        if not batch:
            return await self._call(fn)

        def run() -> tuple[list[tuple[bool, Any]] | BaseException, T]:
            try:
                outcomes: list[tuple[bool, Any]] | BaseException = self._commit_sync(batch)
            except Exception as exc:  # the settlements fail, the read still happens
                outcomes = exc
            return outcomes, fn()

        try:
            outcomes, value = await self._call(run)
        except BaseException as exc:
            self._resolve(batch, exc)
            raise
        self._resolve(batch, outcomes)
        return value

    def _take_settling(self) -> list[_Write]:
        batch, self._settling = self._settling, []
        if self._settle_timer is not None:
            self._settle_timer.cancel()
            self._settle_timer = None
        return batch

    @staticmethod
    def _resolve(batch: list[_Write], outcomes: list[tuple[bool, Any]] | BaseException) -> None:
        if isinstance(outcomes, BaseException):
            error = outcomes if isinstance(outcomes, Exception) else QueueClosed(str(outcomes))
            for write in batch:
                if not write.future.done():
                    write.future.set_exception(error)
            return
        for write, (ok, value) in zip(batch, outcomes, strict=True):
            if write.future.done():
                continue
            if ok:
                write.future.set_result(value)
            else:
                write.future.set_exception(value)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise QueueClosed("the asynchronous queue is not open")
        return self._conn

    async def _write(self, run: Callable[[sqlite3.Connection], T], *, unclaim: int | None = None) -> T:
        """Run `run` inside the next group commit; returns only after that commit is durable."""
        if self._executor is None:
            raise QueueClosed("the asynchronous queue is not open")
        loop = asyncio.get_running_loop()
        write = _Write(run, loop.create_future(), unclaim)
        self._pending.append(write)
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        result: T = await asyncio.shield(write.future)
        return result

    async def _settle(self, run: Callable[[sqlite3.Connection], Any], event_id: int) -> None:
        """Write-behind for an attempt's outcome: returns once committed (without fsync), which is
        at the next claim, after SETTLE_DELAY, or once SETTLE_BATCH are waiting."""
        if self._executor is None:
            raise QueueClosed("the asynchronous queue is not open")
        loop = asyncio.get_running_loop()
        write = _Write(run, loop.create_future(), event_id)
        self._settling.append(write)
        if len(self._settling) >= SETTLE_BATCH:
            self._kick_settling()
        elif self._settle_timer is None:
            self._settle_timer = loop.call_later(SETTLE_DELAY, self._kick_settling)
        await asyncio.shield(write.future)

    def _kick_settling(self) -> None:
        self._settle_timer = None
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self._pending or self._settling:
            # Strict writes carry the waiting settlements along; settlements alone commit without fsync.
            strict, self._pending = self._pending, []
            batch = strict + self._take_settling()
            try:
                outcomes: list[tuple[bool, Any]] | BaseException = await self._call(
                    functools.partial(self._commit_sync, batch))
                if strict:
                    if self.on_committed is not None:
                        self.on_committed()
                    await self._sync_wal()
            except BaseException as exc:
                outcomes = exc
            self._resolve(batch, outcomes)

    async def _sync_wal(self) -> None:
        """Make every commit so far durable; the SQLite thread meanwhile serves claims."""
        syncer, fd = self._syncer, self._wal_fd
        if syncer is None or fd is None:
            raise QueueClosed("the asynchronous queue is not open")
        try:
            await asyncio.get_running_loop().run_in_executor(syncer, os.fsync, fd)
        except OSError as exc:
            # The batch's rows are committed but maybe not on disk, and a failed fsync cannot be
            # retried meaningfully (the kernel may have dropped the dirty pages). Refuse all further
            # work so nothing else is acknowledged; a restart recovers from what is on disk.
            self._failed = f"fsync of the queue's WAL failed: {exc}"
            raise QueueClosed(self._failed) from exc

    def _commit_sync(self, batch: list[_Write]) -> list[tuple[bool, Any]]:
        """One transaction for the whole batch; each write in its own savepoint (all-or-nothing).

        The commit reaches the OS, not the disk: it survives a process crash, and `_sync_wal` makes
        it durable when an accepting write needs that."""
        conn = self._db()
        outcomes: list[tuple[bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for write in batch:
                conn.execute("SAVEPOINT one_write")
                try:
                    value = write.run(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO one_write")
                    conn.execute("RELEASE one_write")
                    outcomes.append((False, exc))
                else:
                    conn.execute("RELEASE one_write")
                    outcomes.append((True, value))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        for write, (ok, _) in zip(batch, outcomes, strict=True):
            if ok and write.unclaim is not None:
                self._claimed.discard(write.unclaim)
        return outcomes

    # -- accepting events --------------------------------------------------------------------------

    async def enqueue(self, events: Sequence[QueuedEvent], *, dedup_window: float) -> EnqueueResult:
        """Durably queue `events` (all or none); drop those whose dedup key was accepted within
        `dedup_window` seconds for the same mapping. Returns after the commit is on disk."""
        if not events:
            return EnqueueResult(0, 0)
        now = self._clock()
        rows = [
            (e.mapping, e.function, event_json(e.event), request_id, e.dedup_key, e.stage,
             dedup_window if e.dedup_window is None else e.dedup_window)
            for e, request_id in zip(events, self._request_ids.take(len(events)), strict=True)
        ]

        def run(conn: sqlite3.Connection) -> list[tuple[str, bool]]:
            outcome: list[tuple[str, bool]] = []
            for mapping, function, event, request_id, dedup_key, stage, window in rows:
                if dedup_key is not None:
                    seen = conn.execute(
                        "SELECT accepted_at FROM dedup WHERE mapping = ? AND dedup_key = ?",
                        (mapping, dedup_key),
                    ).fetchone()
                    if seen is not None and seen[0] >= now - window:
                        outcome.append((mapping, False))
                        continue
                    conn.execute(
                        "INSERT OR REPLACE INTO dedup (mapping, dedup_key, accepted_at) VALUES (?, ?, ?)",
                        (mapping, dedup_key, now),
                    )
                conn.execute(
                    "INSERT INTO events (mapping, function, event, request_id, dedup_key, accepted_at, due_at, stage)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (mapping, function, event, request_id, dedup_key, now, now, stage),
                )
                outcome.append((mapping, True))
            return outcome

        outcome = await self._write(run)
        accepted = sum(1 for _, ok in outcome if ok)
        if self.metrics is not None:
            for mapping, ok in outcome:
                counter = self.metrics.async_events_received if ok else self.metrics.duplicate_notifications
                counter.labels(mapping=mapping).inc()
        return EnqueueResult(accepted=accepted, duplicates=len(outcome) - accepted)

    async def collect(self, mapping: str, function: str, *, limit: int, window: float) -> Collected:
        """Replace the oldest `limit` collecting records of a mapping with one batch event
        (`{"Records": [...]}`, accepted when its oldest record was), in one transaction, once there
        are `limit` of them or the oldest has waited `window` seconds."""
        now = self._clock()
        request_id = self._request_ids.next()

        def run(conn: sqlite3.Connection) -> Collected:
            rows = conn.execute(
                "SELECT id, event, accepted_at FROM events WHERE mapping = ? AND stage = 'collect'"
                " ORDER BY id LIMIT ?", (mapping, limit),
            ).fetchall()
            if not rows:
                return Collected(0, None)
            oldest = min(r[2] for r in rows)
            if len(rows) < limit and oldest + window > now:
                return Collected(0, oldest + window)
            batch = '{"Records":[' + ",".join(r[1] for r in rows) + "]}"
            conn.execute(
                "INSERT INTO events (mapping, function, event, request_id, accepted_at, due_at, stage)"
                " VALUES (?, ?, ?, ?, ?, ?, 'invoke')", (mapping, function, batch, request_id, oldest, now),
            )
            conn.executemany("DELETE FROM events WHERE id = ?", [(r[0],) for r in rows])
            return Collected(1, None)

        return await self._write(run)

    async def collecting(self) -> dict[str, str]:
        """Mappings with records waiting to be batched, and their function."""
        def run() -> dict[str, str]:
            rows = self._db().execute(
                "SELECT mapping, MAX(function) FROM events WHERE stage = 'collect' GROUP BY mapping").fetchall()
            return {r[0]: r[1] for r in rows}

        return await self._call_settling(run)

    # -- dispatching -------------------------------------------------------------------------------

    async def claim(self, mapping: str, stage: Stage, limit: int) -> Claim:
        """Take up to `limit` due, unclaimed events of one lane (a mapping and a stage), oldest due first."""
        (claim,) = await self.claim_many([ClaimRequest(mapping, stage, limit, "")], {"": max(limit, 0)})
        return claim

    async def claim_many(self, requests: Sequence[ClaimRequest], budgets: dict[str, int]) -> list[Claim]:
        """Claim for several lanes in one round trip (after committing the waiting settlements).

        Lanes are served in the given order, each taking at most its `limit` and at most what is
        left of its budget, so lanes sharing a function cannot together exceed its free slots."""
        now = self._clock()
        left = dict(budgets)

        def run() -> list[Claim]:
            conn = self._db()
            claims: list[Claim] = []
            for request in requests:
                limit = max(0, min(request.limit, left.get(request.budget, 0)))
                due_by = now if request.due_by is None else request.due_by
                claim = self._claim_sync(conn, request.mapping, request.stage, limit, due_by)
                left[request.budget] = left.get(request.budget, 0) - len(claim.events)
                claims.append(claim)
            return claims

        return await self._call_settling(run)

    def _claim_sync(self, conn: sqlite3.Connection, mapping: str, stage: Stage, limit: int, now: float) -> Claim:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM events WHERE mapping = ? AND stage = ? ORDER BY due_at, id LIMIT ?",
            (mapping, stage, limit + len(self._claimed) + 1),
        ).fetchall()
        taken: list[StoredEvent] = []
        next_due: float | None = None
        for row in rows:
            if row[0] in self._claimed:
                continue
            if len(taken) < limit and row[6] <= now:
                taken.append(_row_to_event(row))
                self._claimed.add(row[0])
                continue
            next_due = row[6]
            break
        return Claim(taken, next_due)

    async def release(self, event_id: int) -> None:
        """Give a claimed event back unchanged (shutdown); it is due again at once."""
        if self._executor is None:
            return
        # Settlements first: a release must not let a claim see an event whose delete is still waiting.
        await self._call_settling(lambda: self._claimed.discard(event_id))

    async def complete(self, event_id: int) -> None:
        """The event is finished (its record, if any, was written): forget it."""
        await self._settle(lambda conn: conn.execute("DELETE FROM events WHERE id = ?", (event_id,)), event_id)

    async def reschedule(
        self,
        event_id: int,
        *,
        due_at: float,
        invoke_count: int,
        system_errors: int,
        last_response: LastResponse | None,
        last_error: str | None,
    ) -> None:
        """Record an attempt's failure and when to try again; the claim ends after the commit."""
        response = last_response.to_json() if last_response is not None else None

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE events SET due_at = ?, invoke_count = ?, system_errors = ?,"
                " last_response = COALESCE(?, last_response), last_error = ? WHERE id = ?",
                (due_at, invoke_count, system_errors, response, last_error, event_id),
            )

        await self._settle(run, event_id)

    async def park_delivery(
        self,
        event_id: int,
        *,
        delivery: PendingDelivery,
        due_at: float,
        delivery_attempts: int,
        invoke_count: int,
        last_error: str | None,
    ) -> None:
        """The function is done with this event but its destination write failed: keep the record
        and write it later without invoking the function again."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE events SET stage = 'deliver', delivery = ?, due_at = ?, delivery_attempts = ?,"
                " invoke_count = ?, last_error = ? WHERE id = ?",
                (delivery.to_json(), due_at, delivery_attempts, invoke_count, last_error, event_id),
            )

        await self._settle(run, event_id)

    # -- observing ---------------------------------------------------------------------------------

    async def stats(self) -> dict[str, MappingStats]:
        now = self._clock()

        def run() -> dict[str, MappingStats]:
            rows = self._db().execute(
                "SELECT mapping, COUNT(*), MIN(accepted_at),"
                " SUM(stage = 'invoke' AND due_at > ?), SUM(stage = 'deliver'), SUM(stage = 'invoke' AND due_at <= ?)"
                " FROM events GROUP BY mapping",
                (now, now),
            ).fetchall()
            return {r[0]: MappingStats(r[1], r[2], r[3] or 0, r[4] or 0, r[5] or 0) for r in rows}

        return await self._call_settling(run)

    async def prune_dedup(self, older_than: float) -> int:
        """Forget dedup keys accepted before `older_than` (epoch seconds); returns how many."""

        def run(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM dedup WHERE accepted_at < ?", (older_than,)).rowcount

        return await self._write(run)
