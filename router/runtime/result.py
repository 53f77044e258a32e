"""What one invocation produced, in Lambda's terms; shared by every caller of the pool."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from router.runtime import errors


class UnknownFunction(KeyError):
    """Raised by the pool for a function name that is not configured."""


# Bounded metric labels by errorType; any other function error is "error".
_OUTCOMES = {errors.TIMED_OUT: "timeout", errors.EXIT_ERROR: "crash", errors.OUT_OF_MEMORY: "oom"}


@dataclass(slots=True)
class InvocationResult:
    """Treated as immutable; not a frozen dataclass because one is built per invocation and a
    frozen one costs a microsecond more to build."""

    request_id: str
    # The handler's return value decoded from JSON, or Lambda's error JSON
    # ({"errorMessage", "errorType", "requestId", "stackTrace"}) when function_error is set.
    payload: Any
    # "Unhandled" for any function error (exception, timeout, crash, OOM, init failure), else None.
    function_error: str | None = None
    # errorType of the error JSON ("ValueError", "Sandbox.Timedout", "Runtime.ExitError", ...).
    error_type: str | None = None
    duration_ms: float = 0.0
    billed_duration_ms: int = 0
    max_memory_used_mb: int = 0
    init_duration_ms: float | None = None
    # The invocation's log (START, what the function wrote, END, REPORT) when the caller asked for
    # it (Invoke with LogType Tail); None otherwise.
    log: str | None = None

    @property
    def ok(self) -> bool:
        return self.function_error is None

    @property
    def outcome(self) -> str:
        """Bounded metric label: success, error, timeout, crash, oom."""
        if self.function_error is None:
            return "success"
        return _OUTCOMES.get(self.error_type or "", "error")
