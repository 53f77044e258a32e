"""The daemon's side of one execution environment: its process, its connection, its lifecycle.

All waiting is asyncio: the worker's socket is an asyncio transport (so a chatty handler or a
6 MB response never blocks the event loop), and the process's exit is watched through a pidfd
(exit is noticed even if the handler forked children that still hold our sockets), falling back
to polling where pidfds do not exist.

An environment is in exactly one state: starting, idle, busy or dead. Every way out of it
(graceful stop, timeout, memory kill, crash) ends in the same place, `_finish`, which runs once the
process is reaped and resolves whatever the caller was waiting for with an `Exited` saying why.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

import psutil
import structlog

from router.runtime import launch, protocol
from router.runtime.tree_rss import tree_rss

State = Literal["starting", "idle", "busy", "dead"]
# Why the daemon ended an environment; None when it died on its own (a crash). "init" and "oom"
# also cover a worker that reported the problem itself and exited.
KillReason = Literal["timeout", "oom", "init", "stop", "cancelled", "lost", "protocol", "oversize_result"]

# A worker that closed its connection but is still running cannot be used again.
_LOST_CONNECTION_GRACE = 0.5
# After the process exits, what it wrote last (its result, its last log lines) may still sit in
# the socket; wait this long for EOF before declaring it dead. Bounded, because children the
# handler forked may hold the socket open.
_DRAIN_GRACE = 1.0
# The largest message a worker may send, by kind. A RESULT (and a READY, which may carry an init
# error) holds at most protocol.MAX_RESULT_BODY plus its small header; a LOG chunk is 256 Ki
# characters, at most 4 bytes each in UTF-8, plus its header. A larger one ends the environment as soon as its
# length and kind are read, so a handler cannot make the daemon buffer what it likes.
_FRAME_SLACK = 64 * 1024
FRAME_LIMITS = {
    protocol.RESULT: protocol.MAX_RESULT_BODY + _FRAME_SLACK,
    protocol.READY: protocol.MAX_RESULT_BODY + _FRAME_SLACK,
    protocol.LOG: 4 * 256 * 1024 + _FRAME_SLACK,
}
_OTHER_FRAME_LIMIT = _FRAME_SLACK
# Messages handled per event-loop iteration before yielding to other work.
_MESSAGES_PER_ITERATION = 64
# Without pidfds, how often a worker is checked for having exited.
_EXIT_POLL_INTERVAL = 0.05
# SIGKILL is not instant for a process in uninterruptible sleep; don't wait for it forever.
_REAP_GIVE_UP = 10.0


@dataclass(frozen=True, slots=True)
class Exited:
    exitcode: int | None
    reason: KillReason | None
    peak_rss_bytes: int


@dataclass(frozen=True, slots=True)
class Ready:
    init_ms: float
    error: dict[str, Any] | None  # Lambda's error JSON when the init phase failed


LogCallback = Callable[["ExecutionEnvironment", str | None, str, str], None]
ExitCallback = Callable[["ExecutionEnvironment", Exited], None]
IdleCallback = Callable[["ExecutionEnvironment"], None]


@dataclass(frozen=True, slots=True)
class _Log:
    request_id: str | None
    stream: str
    text: str


@dataclass(frozen=True, slots=True)
class _Ready:
    ok: bool
    rss_kb: int
    frame: protocol.Frame


def _parse(message: bytes) -> protocol.Result | _Log | _Ready | None:
    """A worker's message, checked to be what the runtime writes (raises otherwise); None for a
    kind the daemon does not act on."""
    if message[0] == protocol.RESULT:
        return protocol.decode_result(message)
    frame = protocol.decode(message)
    header = frame.header
    if not isinstance(header, dict):
        raise TypeError("header is not an object")
    if frame.kind == protocol.LOG:
        request_id, stream = header.get("id"), header.get("s", "stdout")
        if not (request_id is None or isinstance(request_id, str)) or not isinstance(stream, str):
            raise TypeError("LOG header fields")
        return _Log(request_id, stream, frame.body.decode("utf-8", "replace"))
    if frame.kind == protocol.READY:
        rss_kb = header.get("rss_kb") or 0
        if not isinstance(rss_kb, int):
            raise TypeError("READY rss_kb")
        return _Ready(bool(header.get("ok")), rss_kb, frame)
    return None


class _Connection(asyncio.Protocol):
    """Decodes the worker's messages and hands them on in order, a bounded number per loop
    iteration: a handler printing in a tight loop must not starve the rest of the daemon."""

    def __init__(self, env: ExecutionEnvironment) -> None:
        self._env = env
        self._decoder = protocol.FrameDecoder(FRAME_LIMITS, _OTHER_FRAME_LIMIT)
        self._queue: collections.deque[bytes] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._paused = False
        self._lost = False
        self._refused = False  # the worker broke the framing: nothing more is read

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not subclasses of asyncio.Transport, hence no isinstance).
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        try:
            messages = self._decoder.feed(data)
        except protocol.FrameError as exc:
            self._refuse(exc)
            return
        if len(messages) == 1 and not self._queue and not self._paused:
            if not self._env._on_message(messages[0]):  # the common case: one RESULT
                self._refuse(None)
            return
        self._queue.extend(messages)
        if not self._paused:
            self._drain()

    def _refuse(self, error: protocol.FrameError | None) -> None:
        """Read nothing more; `error` for the environment to end on (None: it already knows)."""
        self._refused = True
        self._queue.clear()
        if self._transport is not None:
            self._transport.pause_reading()
        if error is not None:
            self._env._refuse(error)

    def _drain(self) -> None:
        if self._refused:
            return
        queue, env = self._queue, self._env
        for _ in range(_MESSAGES_PER_ITERATION):
            if not queue:
                break
            if not env._on_message(queue.popleft()):
                self._refuse(None)
                return
        loop = asyncio.get_running_loop()
        if queue:
            if not self._paused and self._transport is not None and not self._lost:
                self._transport.pause_reading()
            self._paused = True
            loop.call_soon(self._drain)
            return
        if self._paused:
            self._paused = False
            if self._transport is not None and not self._lost:
                self._transport.resume_reading()
        if self._lost:
            env._on_connection_lost()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if not self._paused:
            self._drain()


class ExecutionEnvironment:
    def __init__(
        self,
        spec: protocol.WorkerSpec,
        *,
        on_log: LogCallback,
        on_exit: ExitCallback,
        on_idle: IdleCallback,
    ) -> None:
        self.spec = spec
        self.state: State = "starting"
        self.invocations = 0
        self.peak_rss_bytes = 0
        self._on_log = on_log
        self._on_exit = on_exit
        self._on_idle = on_idle
        self._loop = asyncio.get_running_loop()
        self._process: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._ps: psutil.Process | None = None
        self._transport: asyncio.Transport | None = None
        self._exit_fd: int | None = None
        self._owns_exit_fd = False
        self._pending: asyncio.Future[protocol.Frame | protocol.Result | Exited] | None = None
        self._kill_reason: KillReason | None = None
        self._deadline: float | None = None  # loop time the running invocation must end by
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._exited: asyncio.Future[Exited] = self._loop.create_future()
        self._exit_seen = False
        self._connection_lost = False
        self._reaping = False

    # -- facts ------------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def alive(self) -> bool:
        return self.state != "dead" and self._kill_reason is None

    def sample_rss(self) -> int | None:
        """Current RSS in bytes of the worker and the processes it started (tree_rss; also folded
        into the peak), or None if the worker is gone."""
        if self._ps is None or self._pid is None or self.state == "dead":
            return None
        rss = tree_rss(self._pid)
        if rss is None:  # no /proc (not Linux), or gone
            try:
                rss = int(self._ps.memory_info().rss)
            except (psutil.Error, OSError):
                return None
        if rss > self.peak_rss_bytes:
            self.peak_rss_bytes = rss
        return rss

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self, timeout: float) -> Ready | Exited:
        """Spawn the worker and wait for its init phase (the handler import) to finish."""
        started = time.perf_counter()
        process, sock = launch.launch(self.spec)
        self._process = process
        self._pid = process.pid
        self._watch_exit(process)
        with contextlib.suppress(psutil.Error):
            self._ps = psutil.Process(process.pid)
        sock.setblocking(False)
        self._pending = self._loop.create_future()
        transport, _ = await self._loop.create_unix_connection(lambda: _Connection(self), sock=sock)
        if self.state == "dead":
            transport.close()
        else:
            self._transport = transport
        outcome = await self._wait_ready(timeout)
        if isinstance(outcome, Exited):
            return outcome
        assert isinstance(outcome, protocol.Frame)
        # Like Lambda's Init Duration, this covers starting the runtime as well as the import.
        init_ms = (time.perf_counter() - started) * 1000
        header = outcome.header
        if not header.get("ok"):
            # The worker exits after a failed init (see _on_message); Lambda retries init with a
            # fresh environment at the next invoke.
            return Ready(init_ms, header.get("error") or {})
        self.state = "idle"
        return Ready(init_ms, None)

    def send(self, frame: bytes, timeout: float) -> asyncio.Future[protocol.Result | Exited]:
        """Start one invocation: write its INVOKE frame (protocol.encode_invoke) and arm the
        deadline. The future resolves with the RESULT, or with Exited if the environment ends
        first (killed at the deadline, crashed); a caller that stops waiting for it calls
        abandon(). Synchronous, so the pool can start the next queued invocation from inside the
        callback that read the previous RESULT."""
        if self.state != "idle" or self._transport is None:
            raise RuntimeError(f"environment is {self.state}, not idle")
        self.state = "busy"
        self.invocations += 1
        pending: asyncio.Future[Any] = self._loop.create_future()
        self._pending = pending
        self._transport.write(frame)
        self._arm_deadline(self._loop.time() + timeout)
        return pending

    def abandon(self, pending: asyncio.Future[protocol.Result | Exited]) -> None:
        """The caller of the invocation behind `pending` gave up (was cancelled) waiting for it:
        if it is still running, end the environment, since nobody would read that result (by now
        it may have finished, and the environment moved on to another)."""
        if self._pending is pending:
            self.kill("cancelled")

    async def _wait_ready(self, timeout: float) -> protocol.Frame | protocol.Result | Exited:
        pending = self._pending
        assert pending is not None
        timer = self._loop.call_later(max(timeout, 0.0), self.kill, "timeout")
        try:
            return await pending
        except asyncio.CancelledError:
            # The handler is still running and nobody will read its result: end it.
            self.kill("cancelled")
            raise
        finally:
            timer.cancel()
            self._pending = None

    def _arm_deadline(self, deadline: float) -> None:
        """One timer per environment, not one per invocation: invocations are usually far shorter
        than the timeout, so the timer is only re-aimed when it fires (or would fire too late)."""
        self._deadline = deadline
        timer = self._deadline_timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._deadline_timer = self._loop.call_at(deadline, self._deadline_reached)

    def _deadline_reached(self) -> None:
        self._deadline_timer = None
        deadline = self._deadline
        if deadline is None or self.state != "busy":
            return
        if self._loop.time() >= deadline - 0.001:  # the loop's clock may wake us a hair early
            self.kill("timeout")
        else:
            self._deadline_timer = self._loop.call_at(deadline, self._deadline_reached)

    def kill(self, reason: KillReason) -> None:
        """SIGKILL the environment's whole process group; waiters learn about it once it is reaped."""
        if self.state == "dead" or self._kill_reason is not None:
            return
        self._kill_reason = reason
        self._signal_group(signal.SIGKILL)
        self._loop.call_later(_REAP_GIVE_UP, self._give_up_reaping)

    async def stop(self, grace: float) -> Exited:
        """Ask the worker to exit after its current invocation, then escalate: SIGTERM, SIGKILL."""
        if self.state == "dead":
            return await self._exited
        if self._kill_reason is None and self._transport is not None and not self._transport.is_closing():
            self._transport.write(protocol.wire(protocol.encode(protocol.STOP, {})))
        for signum, wait in ((None, grace), (signal.SIGTERM, 1.0)):
            if signum is not None and self._kill_reason is None:
                self._signal_group(signum)
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(self._exited), wait)
        self.kill("stop")
        return await asyncio.shield(self._exited)

    # -- the process ------------------------------------------------------------------------------

    def _signal_group(self, signum: int) -> None:
        pid = self.pid
        if pid is None or self.state == "dead":
            return  # once reaped, the pid may belong to someone else
        try:
            os.killpg(pid, signum)  # the worker made itself a group leader at start
        except ProcessLookupError:
            # Not yet a group leader (just spawned), or already gone.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        except PermissionError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)

    def _watch_exit(self, process: subprocess.Popen[bytes]) -> None:
        try:
            self._exit_fd = os.pidfd_open(process.pid)
        except (AttributeError, OSError):
            self._poll_exit()  # no pidfds (not Linux, or before 5.3): look now and then
            return
        self._owns_exit_fd = True
        self._loop.add_reader(self._exit_fd, self._on_process_exit)

    def _poll_exit(self) -> None:
        if self.state == "dead" or self._exit_seen:
            return
        if self._process is not None and self._process.poll() is not None:
            self._on_process_exit()
        else:
            self._loop.call_later(_EXIT_POLL_INTERVAL, self._poll_exit)

    def _on_process_exit(self) -> None:
        if self._exit_fd is not None:
            self._loop.remove_reader(self._exit_fd)
        if self._exit_seen:
            return
        self._exit_seen = True
        # While the worker is a zombie its pid cannot be reused: a safe moment to sweep its group
        # (anything the handler started, which may also hold our socket open).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.pid is not None:
                os.killpg(self.pid, signal.SIGKILL)
        if self._transport is None or self._connection_lost:
            self._start_reaping()
        else:
            self._loop.call_later(_DRAIN_GRACE, self._start_reaping)

    def _start_reaping(self) -> None:
        if not self._reaping:
            self._reaping = True
            self._reap(time.monotonic())

    def _reap(self, since: float) -> None:
        process = self._process
        assert process is not None
        exitcode = process.poll()  # waitpid(WNOHANG)
        if exitcode is None and time.monotonic() - since < _REAP_GIVE_UP:
            # Be safe if the exit is seen a moment before the process becomes reapable.
            self._loop.call_later(0.002, self._reap, since)
            return
        self._finish(exitcode)

    def _give_up_reaping(self) -> None:
        if self.state != "dead":
            self._finish(None)

    def _finish(self, exitcode: int | None) -> None:
        if self.state == "dead":
            return
        self.state = "dead"
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if self._exit_fd is not None:
            self._loop.remove_reader(self._exit_fd)
            if self._owns_exit_fd:
                with contextlib.suppress(OSError):
                    os.close(self._exit_fd)
            self._exit_fd = None
        if self._transport is not None:
            self._transport.close()
        exited = Exited(exitcode, self._kill_reason, self.peak_rss_bytes)
        if not self._exited.done():
            self._exited.set_result(exited)
        if self._pending is not None and not self._pending.done():
            self._pending.set_result(exited)
        self._on_exit(self, exited)

    # -- the connection ---------------------------------------------------------------------------

    def _on_message(self, message: bytes) -> bool:
        """Act on one message; False when it is not one the runtime writes (it is then ended)."""
        try:
            parsed = _parse(message)
        except Exception as exc:  # whatever a forged message raises while it is read
            self._refuse(protocol.FrameError(f"undecodable message ({type(exc).__name__})"))
            return False
        pending = self._pending
        if isinstance(parsed, protocol.Result):
            result = parsed
            if result.max_rss_kb * 1024 > self.peak_rss_bytes:
                self.peak_rss_bytes = result.max_rss_kb * 1024
            if result.retire:
                self._retire("oom")
            if self.state == "busy" and pending is not None and not pending.done():
                self._pending = None
                self._deadline = None
                if self._kill_reason is None:
                    self.state = "idle"
                    # Free again: the pool may send the next queued INVOKE right now, before
                    # the caller of this one has even resumed.
                    self._on_idle(self)
                pending.set_result(result)
        elif isinstance(parsed, _Log):
            self._on_log(self, parsed.request_id, parsed.stream, parsed.text)
        elif isinstance(parsed, _Ready):
            self.peak_rss_bytes = max(self.peak_rss_bytes, parsed.rss_kb * 1024)
            if not parsed.ok:
                self._retire("init")
            if self.state == "starting" and pending is not None and not pending.done():
                pending.set_result(parsed.frame)
        return True

    def _refuse(self, error: protocol.FrameError) -> None:  # called by _Connection
        """The worker sent a message past its limit, broke the framing or sent one that does not
        decode (only a handler writing to the runtime's socket does): end it, unread."""
        log = structlog.get_logger("router.runtime.environment")
        log.warning("environment.frame_refused", function=self.spec.function_name, pid=self.pid, detail=str(error))
        result = isinstance(error, protocol.FrameTooLarge) and error.kind == protocol.RESULT
        self.kill("oversize_result" if result else "protocol")

    def _retire(self, reason: KillReason) -> None:
        """The worker said it will exit; decided here, before its EOF can be processed, so the
        exit is never mistaken for a crash."""
        if self._kill_reason is None:
            self._kill_reason = reason
            self._loop.call_later(_LOST_CONNECTION_GRACE, self._signal_group, signal.SIGKILL)
            self._loop.call_later(_REAP_GIVE_UP, self._give_up_reaping)

    def _on_connection_lost(self) -> None:
        self._connection_lost = True
        if self.state == "dead":
            return
        if self._exit_seen:
            self._start_reaping()
        else:
            self._loop.call_later(_LOST_CONNECTION_GRACE, self._lost)

    def _lost(self) -> None:
        if self.state != "dead" and self._kill_reason is None:
            self.kill("lost")
