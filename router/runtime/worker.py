"""The main of one execution environment: an exec'd process that imports a handler once and then
serves invocations one at a time until the daemon stops it or it dies.

It plays the part of Lambda's runtime (awslambdaric): it captures stdout/stderr and the root
logger per invocation, builds the context object, and turns whatever happens in user code into
Lambda's error JSON. What it cannot report itself (timeouts, hard crashes, memory kills) the
daemon observes from outside.

Exec'd by the daemon (launch.py) with only its function's environment (Lambda's variables among
it), in a process group of its own so the daemon can kill whatever the handler started along with
it, it never relies on inherited state: everything comes in the pickled `WorkerSpec`, the first
message on its socket. It makes sure it dies with the daemon (PR_SET_PDEATHSIG, and EOF on its
connection).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import decimal
import importlib
import io
import json
import logging
import os
import pickle
import resource
import select
import signal
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, TextIO

from router.runtime import containment, errors, fast_json, kinesis_batch, protocol
from router.runtime.context import LambdaContext

_PR_SET_PDEATHSIG = 1
_LOG_FORMAT = "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s\n"
_LOG_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
# Lambda cuts a log event at 256 KiB; one message on our pipe is bounded the same way.
_MAX_LOG_CHUNK = 256 * 1024

Handler = Callable[[Any, LambdaContext], Any]


class _Fault(Exception):
    """An error the runtime reports with its own errorType (as awslambdaric's FaultException)."""

    def __init__(self, error_type: str, message: str, stack_trace: list[str] | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.stack_trace = stack_trace or []


# ------------------------------------------------------------------------------------------------
# becoming an execution environment


def _tie_to_parent(parent_pid: int) -> None:
    """Die with the daemon even if it is SIGKILLed and cannot stop us."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the daemon died before prctl took effect
        os._exit(1)


def _limit_memory(limit_bytes: int | None) -> None:
    """Make allocations far beyond the memory size fail at once with MemoryError.

    RLIMIT_DATA counts writable private mappings (heap, thread stacks), so it sits well above
    memory_size; the daemon's RSS watchdog and the peak-RSS check enforce memory_size itself."""
    if limit_bytes is None or not hasattr(resource, "RLIMIT_DATA"):
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY and hard < limit_bytes:
        limit_bytes = hard
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_DATA, (limit_bytes, hard))


def _become_environment(spec: protocol.WorkerSpec) -> None:
    _tie_to_parent(spec.parent_pid)
    containment.contain_worker()
    # Raw writes to fd 1 (C extensions, child processes) must not corrupt the daemon's stdout,
    # which carries JSON logs or `router invoke`'s response; send them to stderr instead.
    with contextlib.suppress(OSError):
        os.dup2(2, 1)
    if spec.code_path is not None:
        sys.path.insert(0, spec.code_path)
    with contextlib.suppress(OSError):
        os.chdir(spec.task_root)
    _limit_memory(spec.data_limit_bytes)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when we stop


# ------------------------------------------------------------------------------------------------
# log capture


class _CaptureStream(io.TextIOBase):
    """sys.stdout/sys.stderr of the environment: complete lines go to the daemon at once (so a
    crash loses nothing already printed), partial lines at the end of the invocation."""

    def __init__(self, runtime: _Runtime, name: str) -> None:
        super().__init__()
        self._runtime = runtime
        self._name = name
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self.buffer = _ByteSink(self)

    @property
    def encoding(self) -> str:  # type: ignore[override]  # read-only in io.TextIOBase itself
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "replace"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return 2

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if not text:
            return 0
        with self._lock:
            if "\n" not in text:
                self._pending.append(text)
                if sum(len(p) for p in self._pending) < _MAX_LOG_CHUNK:
                    return len(text)
                chunk, self._pending = "".join(self._pending), []
            else:
                head, _, tail = text.rpartition("\n")
                chunk = "".join((*self._pending, head, "\n"))
                self._pending = [tail] if tail else []
        self._runtime.send_log(self._name, chunk)
        return len(text)

    def flush(self) -> None:
        if not self._pending:
            return
        with self._lock:
            chunk, self._pending = "".join(self._pending), []
        if chunk:
            self._runtime.send_log(self._name, chunk)


class _ByteSink(io.RawIOBase):
    """sys.stdout.buffer for handlers that write bytes."""

    def __init__(self, stream: _CaptureStream) -> None:
        super().__init__()
        self._stream = stream

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        raw = bytes(data)
        self._stream.write(raw.decode("utf-8", "replace"))
        return len(raw)

    def flush(self) -> None:
        self._stream.flush()


class _LambdaLogHandler(logging.Handler):
    """The handler Lambda's runtime puts on the root logger, with its line format."""

    def __init__(self, runtime: _Runtime) -> None:
        super().__init__()
        self._runtime = runtime
        formatter = logging.Formatter(_LOG_FORMAT, _LOG_DATE_FORMAT)
        formatter.converter = time.gmtime
        self.setFormatter(formatter)

    def filter(self, record: logging.LogRecord) -> bool:
        record.aws_request_id = self._runtime.request_id or ""
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._runtime.send_log("log", self.format(record))
        except Exception:
            self.handleError(record)


# ------------------------------------------------------------------------------------------------
# loading the handler and calling it


def _load_handler(name: str) -> Handler:
    """awslambdaric's rules and messages for finding `module.function`."""
    modname, sep, fname = name.rpartition(".")
    if not sep or not modname:
        raise _Fault(errors.MALFORMED_HANDLER_NAME, f"Bad handler '{name}': not enough values to unpack")
    if modname.split(".")[0] in sys.builtin_module_names:
        raise _Fault(errors.BUILT_IN_MODULE_CONFLICT, f"Cannot use built-in module {modname} as a handler module")
    try:
        module = importlib.import_module(modname.replace("/", "."))
    except ImportError as exc:
        raise _Fault(errors.IMPORT_MODULE_ERROR, f"Unable to import module '{modname}': {exc}") from None
    except SyntaxError as exc:
        trace = [f'  File "{exc.filename}" Line {exc.lineno}\n    {exc.text}']
        raise _Fault(errors.USER_CODE_SYNTAX_ERROR, f"Syntax error in module '{modname}': {exc}", trace) from None
    try:
        handler: Handler = getattr(module, fname)
    except AttributeError:
        raise _Fault(errors.HANDLER_NOT_FOUND, f"Handler '{fname}' missing on module '{modname}'") from None
    return handler


def _user_stack(tb: Any) -> list[str]:
    """The traceback from the first frame of user code on, as awslambdaric formats it."""
    frames = traceback.extract_tb(tb)
    here = __file__
    start = 0
    while start < len(frames) and frames[start].filename == here:
        start += 1
    return traceback.format_list(frames[start:])


def _json_default(value: Any) -> Any:
    # awslambdaric writes Decimals as plain numbers (DynamoDB hands them out everywhere).
    if isinstance(value, decimal.Decimal):
        if value.is_nan():
            return float("nan")
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# Built once: json.dumps(default=...) would build an encoder for every response.
_ENCODER = json.JSONEncoder(default=_json_default)


def _marshal(response: Any) -> tuple[bytes, bool]:
    """(body, raw): raw bytes are passed through untouched, as Lambda does."""
    if response is None:
        return b"null", False
    if isinstance(response, bytes | bytearray):
        return bytes(response), True
    try:
        return _ENCODER.encode(response).encode(), False
    except Exception as exc:
        raise _Fault(errors.MARSHAL_ERROR, f"Unable to marshal response: {exc}") from None


def _event_decoders(json_loads: Callable[[bytes], Any]) -> dict[int, Callable[[bytes], Any]]:
    return {protocol.EVENT_JSON: json_loads, protocol.EVENT_KINESIS_BATCH: kinesis_batch.decode}


class _PeakRss:
    """Peak RSS of this process's own address space, in KiB, cheaply on every invocation.

    getrusage's ru_maxrss costs ~1 µs but Linux carries the pre-exec image's high-water mark (a
    copy of the parent, e.g. a 150 MB daemon) into the spawned child, so on its own it would make a
    fresh worker look like it used the parent's memory. Once the worker's own peak passes that
    inherited value, ru_maxrss is exact. Until then the exact figure is VmHWM (which starts over at
    exec), but generating /proc/self/status costs ~10 µs, a third of a no-op invocation.

    The same getrusage call says how many page faults happened since the last exact reading, and
    RSS grows through them, at most a huge page per fault (pages mapped without faulting, by
    MAP_POPULATE or mlock, are left to the daemon's sampling and RLIMIT_DATA). So while that bound
    keeps the peak far below the memory limit, the last exact reading stands (a no-op invocation
    faults a handful of pages at most); a handler that touched real memory gets a fresh reading.
    """

    # Largest RSS one fault can add (a transparent huge page), in KiB.
    _FAULT_KB = 2048
    # Faults allowed before re-reading even when far from the limit, so reported peaks stay close.
    _SLACK_FAULTS = 16

    def __init__(self, limit_kb: int) -> None:
        self._limit_kb = limit_kb
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self._inherited_kb = usage.ru_maxrss
        self._faults = -1  # fault count at the last exact reading; -1: none yet
        self._last_kb = 0
        try:
            self._status_fd: int | None = os.open("/proc/self/status", os.O_RDONLY)
        except OSError:
            self._status_fd = None

    def kb(self) -> int:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        maxrss = usage.ru_maxrss
        if maxrss > self._inherited_kb or self._status_fd is None:
            return maxrss
        faults = usage.ru_minflt + usage.ru_majflt
        grown = faults - self._faults
        bound_kb = self._last_kb + grown * self._FAULT_KB
        if self._faults >= 0 and grown <= self._SLACK_FAULTS and bound_kb < self._limit_kb:
            return self._last_kb
        try:
            status = os.pread(self._status_fd, 8192, 0)
            start = status.index(b"VmHWM:") + 6
            self._last_kb = int(status[start:status.index(b"\n", start)].split()[0])
        except (OSError, ValueError, IndexError):
            return maxrss
        # Counted after the read: generating the file may itself fault a page or two.
        after = resource.getrusage(resource.RUSAGE_SELF)
        self._faults = after.ru_minflt + after.ru_majflt
        return self._last_kb


class _Inbox:
    """The daemon's messages, read straight from the connection's socket.

    Connection.recv_bytes makes two reads per message (its length, then the body); a small INVOKE
    arrives whole in one read here, one system call less on every invocation's critical path.
    The framing is the Connection's, decoded by the same FrameDecoder the daemon uses.

    The worker waits in poll() rather than in the read itself: a task blocked in a Unix socket
    read is woken by every wake-up on that socket, including the "space to write" one the kernel
    sends each time the daemon reads the worker's RESULT. A poll() waiter asked only for POLLIN
    is passed over, sparing the daemon a cross-CPU wake-up per invocation (~a third of its CPU)."""

    _READ_SIZE = 1 << 16

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._decoder = protocol.FrameDecoder()
        self._ready: collections.deque[bytes] = collections.deque()
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    def next(self) -> bytes:
        while not self._ready:
            self._poll.poll()
            data = os.read(self.fd, self._READ_SIZE)
            if not data:
                raise EOFError
            self._ready.extend(self._decoder.feed(data))
        return self._ready.popleft()


class _Outbox:
    """Messages to the daemon, written straight to the connection's socket in the framing
    Connection.send_bytes uses, without its per-call checks and Python-level write loop: the
    RESULT of every invocation goes out this way. Small messages go out in one write; large ones
    (a 6 MB response) as prefix and body, so the body is never copied. Callers serialise writes."""

    _COPY_BELOW = 16 * 1024

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def send(self, message: bytes) -> None:
        prefix = protocol.length_prefix(len(message))
        if len(message) < self._COPY_BELOW:
            data = prefix + message
            written = os.write(self._fd, data)  # a blocking socket takes it whole, nearly always
            if written != len(data):
                self._write_all(data[written:])
            return
        self._write_all(prefix)
        self._write_all(message)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]


# An error whose message or trace is larger than this (an exception carrying a whole payload) is
# cut down to it: error JSON must fit the daemon's message limits like any response.
_MAX_ERROR_TEXT = 256 * 1024


def _bounded_error(payload: dict[str, Any]) -> dict[str, Any]:
    message = str(payload.get("errorMessage", ""))
    trace = [str(line) for line in payload.get("stackTrace") or []]
    if len(message) + sum(map(len, trace)) <= _MAX_ERROR_TEXT:
        return payload
    if len(message) > _MAX_ERROR_TEXT:
        message = message[:_MAX_ERROR_TEXT] + f"... [truncated {len(message) - _MAX_ERROR_TEXT} characters]"
    kept, size = [], 0
    for line in reversed(trace):  # the innermost frames, at the end, say the most
        size += len(line)
        if size > _MAX_ERROR_TEXT:
            break
        kept.append(line)
    trace = kept[::-1]
    return {**payload, "errorMessage": message, "stackTrace": trace}


def _error_log_text(payload: dict[str, Any]) -> str:
    """The `[ERROR] Type: message` + traceback entry awslambdaric writes to the function log."""
    lines = [f"[ERROR] {payload['errorType']}: {payload['errorMessage']}"]
    trace = payload.get("stackTrace") or []
    if trace:
        lines.append("Traceback (most recent call last):")
        for element in trace:
            lines.extend(element.splitlines())
    return "\n".join(lines)


class _Runtime:
    def __init__(self, inbox: _Inbox, spec: protocol.WorkerSpec) -> None:
        self._inbox = inbox
        self._outbox = _Outbox(inbox.fd)
        self._spec = spec
        self._send_lock = threading.Lock()
        self.request_id: str | None = None
        self._memory_limit_kb = spec.memory_size_mb * 1024
        self._peak_rss = _PeakRss(self._memory_limit_kb)
        self._memory_limit_mb = str(spec.memory_size_mb)
        self._log_group_name = spec.environment.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self._stdout: TextIO = sys.stdout
        self._stderr: TextIO = sys.stderr
        # json's until the handler has been imported (see fast_json for why not before).
        self._decoders = _event_decoders(fast_json.strict_loads)

    # -- talking to the daemon --------------------------------------------------------------------

    def send(self, kind: int, header: dict[str, Any], body: bytes = b"") -> None:
        message = protocol.encode(kind, header, body)
        with self._send_lock:
            self._outbox.send(message)

    def send_log(self, stream: str, text: str) -> None:
        for start in range(0, len(text), _MAX_LOG_CHUNK):
            chunk = text[start : start + _MAX_LOG_CHUNK]
            with contextlib.suppress(OSError, ValueError):
                self.send(protocol.LOG, {"id": self.request_id, "s": stream}, chunk.encode("utf-8", "replace"))

    # -- lifecycle --------------------------------------------------------------------------------

    def capture_output(self) -> None:
        self._stdout, self._stderr = sys.stdout, sys.stderr
        sys.stdout = _CaptureStream(self, "stdout")
        sys.stderr = _CaptureStream(self, "stderr")
        logging.Formatter.converter = time.gmtime
        logging.getLogger().addHandler(_LambdaLogHandler(self))

    def flush_output(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a handler may have closed it (no suppress(): hot path)
                continue

    def restore_output(self) -> None:
        self.flush_output()
        sys.stdout, sys.stderr = self._stdout, self._stderr

    def init(self) -> Handler | None:
        """The init phase: import the handler. On failure, tell the daemon why and return None."""
        started = time.perf_counter()
        try:
            handler = _load_handler(self._spec.handler)
        except _Fault as fault:
            error = errors.error_payload(fault.message, fault.error_type, "", fault.stack_trace)
        except Exception as exc:
            error = errors.error_payload(str(exc), type(exc).__name__, "", _user_stack(exc.__traceback__))
        else:
            self._decoders = _event_decoders(fast_json.json_loads())
            self.flush_output()
            self.send(protocol.READY, {"ok": True, "import_ms": (time.perf_counter() - started) * 1000,
                                       "rss_kb": self._peak_rss.kb()})
            return handler
        error = _bounded_error(error)
        self.send_log("log", _error_log_text(error))
        self.flush_output()
        self.send(protocol.READY, {"ok": False, "error": error, "rss_kb": self._peak_rss.kb()})
        return None

    def serve(self, handler: Handler) -> None:
        inbox = self._inbox
        while True:
            try:
                message = inbox.next()
            except (EOFError, OSError):
                return  # the daemon is gone or closed our connection
            kind = message[0]
            if kind == protocol.INVOKE:
                if self.invoke(handler, protocol.decode_invoke(message)):
                    return
            elif kind == protocol.STOP:
                return

    # -- one invocation ---------------------------------------------------------------------------

    def invoke(self, handler: Handler, request: protocol.Invoke) -> bool:
        """Run one invocation and send its RESULT; True when this environment must not be reused."""
        request_id = request.request_id
        self.request_id = request_id
        spec = self._spec
        error: dict[str, Any] | None = None
        response = b"null"
        raw = False
        retire = False
        started = time.perf_counter()
        try:
            context = LambdaContext(
                aws_request_id=request_id,
                deadline_ms=request.deadline_ms,
                invoked_function_arn=request.invoked_function_arn,
                function_name=spec.function_name,
                memory_limit_in_mb=self._memory_limit_mb,
                log_group_name=self._log_group_name,
                log_stream_name=spec.log_stream_name,
                client_context=request.client_context,
                log_sink=self._context_log,
            )
            try:
                event = self._decoders[request.event_format](request.event)
            except (ValueError, KeyError, struct.error) as exc:
                raise _Fault(errors.UNMARSHAL_ERROR, f"Unable to unmarshal input: {exc}") from None
            result = handler(event, context)
            response, raw = _marshal(result)
        except _Fault as fault:
            error = errors.error_payload(fault.message, fault.error_type, request_id, fault.stack_trace)
        except MemoryError:
            error = errors.error_payload(errors.out_of_memory_message(request_id), errors.OUT_OF_MEMORY, request_id)
            retire = True
        except Exception as exc:
            error = errors.error_payload(str(exc), type(exc).__name__, request_id, _user_stack(exc.__traceback__))
        duration_ms = (time.perf_counter() - started) * 1000
        max_rss_kb = self._peak_rss.kb()
        if error is None and max_rss_kb > self._memory_limit_kb:
            # Too fast for the daemon's watchdog to catch, but Lambda's cgroup would have.
            error = errors.error_payload(errors.out_of_memory_message(request_id), errors.OUT_OF_MEMORY, request_id)
            retire = True
        if error is None and len(response) > protocol.MAX_RESULT_BODY:
            # Far past Lambda's limit: say so here rather than send the daemon what it would refuse.
            error = errors.error_payload(errors.response_too_large_message(protocol.MAX_RESPONSE_BYTES),
                                         errors.RESPONSE_TOO_LARGE, request_id)
        if error is not None:
            error = _bounded_error(error)
            response = json.dumps(error).encode()
            if error["errorType"] != errors.OUT_OF_MEMORY:
                self.send_log("log", _error_log_text(error))
        self.flush_output()
        message = protocol.encode_result(
            duration_ms, max_rss_kb, None if error is None else error["errorType"], response, raw=raw, retire=retire
        )
        with self._send_lock:
            self._outbox.send(message)
        self.request_id = None
        return retire

    def _context_log(self, text: str) -> None:
        self.send_log("log", text)


def main(fd: int) -> None:
    """Entry point of the exec'd worker (launch.py): read the spec, become the environment,
    init, serve, exit."""
    inbox = _Inbox(fd)
    try:
        spec = pickle.loads(inbox.next())
    except (EOFError, OSError):
        return  # the daemon went away before we started
    _become_environment(spec)
    runtime = _Runtime(inbox, spec)
    runtime.capture_output()
    try:
        handler = runtime.init()
        if handler is not None:
            runtime.serve(handler)
    finally:
        runtime.restore_output()
        with contextlib.suppress(OSError):
            os.close(fd)
