"""What the kernel is told so that a handler cannot reach past its own execution environment.

Lambda gives a function no view of the service that runs it. Here handlers run as the daemon's
user, so the kernel's own per-process switches do that work:

- The daemon is non-dumpable (PR_SET_DUMPABLE 0). A process's exec-time environment stays
  readable in `/proc/<pid>/environ` however it changes `os.environ`, and so do its memory and file
  descriptors; non-dumpable makes those root's, so a handler cannot read the secrets the daemon
  was started with, nor ptrace it. (Operators attach profilers as root.)
- Neither the daemon nor a worker writes a core dump (RLIMIT_CORE 0): a core holds whatever
  secrets the process had in memory, in a file any process of the user can read.
- Workers volunteer for the OOM killer (oom_score_adj 1000, which needs no privilege): when the
  machine runs out of memory, the kernel kills a handler, whose invocation alone fails, not the
  daemon and every shard and queue it serves.
"""

from __future__ import annotations

import contextlib
import ctypes
import resource
import sys

_PR_SET_DUMPABLE = 4
_OOM_SCORE_ADJ_MAX = 1000


def _no_core_dumps() -> None:
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def protect_daemon() -> None:
    """Called once by `router run` before anything is spawned."""
    _no_core_dumps()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


def contain_worker() -> None:
    """Called by each worker before it imports the handler."""
    _no_core_dumps()
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as adj:
        adj.write(str(_OOM_SCORE_ADJ_MAX))
