"""The resident memory of a worker and every process it started, as a memory cgroup counts it.

Lambda's memory_size is the limit of the function's sandbox, so what a handler's subprocesses use
(ffmpeg, ImageMagick, a shell, a multiprocessing pool) counts as the handler's own memory does.
Counting only the worker would let one handler start a child that takes the machine's memory.

The tree is walked through `/proc/<pid>/task/<tid>/children` (Linux 4.2+, CONFIG_PROC_CHILDREN):
one small read per process in the tree, never a scan of all of /proc, so the 50 ms watchdog can
afford it. A child counts its resident pages minus the file-backed ones it shares (the Python
binary and shared libraries would otherwise count once per process); anonymous pages a forked
child still shares with its parent count twice, so a tree of forks reads high rather than low.
A descendant whose parent exited leaves the tree (it is reparented) but not the environment's
process group, which is killed whole when the environment ends. Where the children files do not
exist, the worker alone is counted, as before.
"""

from __future__ import annotations

import os

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# A fork bomb must not turn the watchdog into a long walk; past this many, the rest is not counted.
_MAX_PROCESSES = 1024


def _statm(pid: int) -> tuple[int, int] | None:
    """(resident, shared) pages of `pid`, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as file:
            fields = file.read().split()
        return int(fields[1]), int(fields[2])
    except (OSError, ValueError, IndexError):
        return None


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as file:
                found.extend(int(child) for child in file.read().split())
        except (OSError, ValueError):
            continue
    return found


def tree_rss(pid: int) -> int | None:
    """Bytes resident in `pid` and its descendants, or None if `pid` itself is gone."""
    own = _statm(pid)
    if own is None:
        return None
    pages = own[0]
    pending = _children(pid)
    seen = 1
    while pending and seen < _MAX_PROCESSES:
        child = pending.pop()
        seen += 1
        counted = _statm(child)
        if counted is None:
            continue  # exited meanwhile
        pages += max(0, counted[0] - counted[1])
        pending.extend(_children(child))
    return pages * _PAGE
