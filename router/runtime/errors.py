"""Lambda's error vocabulary: the errorType strings and messages callers and handlers match on.

Stream policies, destinations and people reading logs compare these strings with what they know from
AWS, so they are spelled exactly as Lambda and awslambdaric spell them. Shared by the worker
(errors raised in user code) and the daemon (errors it observes from outside: timeouts, crashes,
memory, throttles).
"""

from __future__ import annotations

import signal
from typing import Any

THROTTLED = "TooManyRequestsException"
TIMED_OUT = "Sandbox.Timedout"
EXIT_ERROR = "Runtime.ExitError"
OUT_OF_MEMORY = "Runtime.OutOfMemory"
IMPORT_MODULE_ERROR = "Runtime.ImportModuleError"
USER_CODE_SYNTAX_ERROR = "Runtime.UserCodeSyntaxError"
HANDLER_NOT_FOUND = "Runtime.HandlerNotFound"
MALFORMED_HANDLER_NAME = "Runtime.MalformedHandlerName"
BUILT_IN_MODULE_CONFLICT = "Runtime.BuiltInModuleConflict"
MARSHAL_ERROR = "Runtime.MarshalError"
UNMARSHAL_ERROR = "Runtime.UnmarshalError"
RESPONSE_TOO_LARGE = "Function.ResponseSizeTooLarge"

# What Lambda's Invoke answers when reserved concurrency is 0 (HTTP 429, Reason
# ReservedFunctionConcurrentInvocationLimitExceeded).
THROTTLED_MESSAGE = "Rate Exceeded."

# Go's os.ProcessState wording, which Lambda's "Runtime exited with error: ..." messages use.
_SIGNAL_WORDS = {
    signal.SIGKILL: "killed",
    signal.SIGSEGV: "segmentation fault",
    signal.SIGABRT: "aborted",
    signal.SIGTERM: "terminated",
    signal.SIGBUS: "bus error",
    signal.SIGFPE: "floating point exception",
    signal.SIGILL: "illegal instruction",
    signal.SIGINT: "interrupt",
}


def error_payload(
    message: str, error_type: str, request_id: str, stack_trace: list[str] | None = None
) -> dict[str, Any]:
    """Lambda's function-error JSON, in awslambdaric's key order."""
    return {
        "errorMessage": message,
        "errorType": error_type,
        "requestId": request_id,
        "stackTrace": stack_trace or [],
    }


def timeout_message(request_id: str, timeout_seconds: float) -> str:
    return f"RequestId: {request_id} Error: Task timed out after {timeout_seconds:.2f} seconds"


def exit_description(exitcode: int | None) -> str:
    """A process's exit status as subprocess gives it (negative for a signal), as Go prints a
    process state."""
    if exitcode is None:
        return "unknown"
    if exitcode >= 0:
        return f"exit status {exitcode}"
    signum = -exitcode
    try:
        word = _SIGNAL_WORDS.get(signal.Signals(signum)) or (signal.strsignal(signum) or "").lower()
    except ValueError:
        word = ""
    return f"signal: {word or f'signal {signum}'}"


def exit_message(request_id: str, exitcode: int | None) -> str:
    return f"RequestId: {request_id} Error: Runtime exited with error: {exit_description(exitcode)}"


def out_of_memory_message(request_id: str) -> str:
    # Lambda's wording: the sandbox's memory cgroup SIGKILLs the runtime.
    return exit_message(request_id, -signal.SIGKILL)


def response_too_large_message(limit_bytes: int) -> str:
    return f"Response payload size exceeded maximum allowed payload size ({limit_bytes} bytes)."
