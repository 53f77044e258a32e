"""Start a worker process that holds nothing of the daemon's but what its function is given.

A process's exec-time environment stays readable in `/proc/<pid>/environ` however the process
changes `os.environ` afterwards, and any process of the same user can read it. multiprocessing's
spawn execs the worker with the daemon's whole environment (admin and webhook tokens, Kafka,
MQTT and S3 credentials) and also starts a resource-tracker process that keeps a copy of it, so a
handler could read every secret the daemon holds. Lambda's sandbox shows a function only its own
configuration; here the interpreter is exec'd directly with exactly the function's environment
(`WorkerSpec.environment`: the allowlist of the daemon's own variables plus the function's), in a
process group of its own, with one socket inherited. The spec travels as the first message on that
socket rather than on the command line, which any user can read.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys

from router.runtime import protocol

# The child puts the daemon's import path in front of its own (as multiprocessing's spawn does),
# so `router` imports however the daemon found it, then hands its socket to the worker's main.
_BOOTSTRAP = (
    "import sys; fd = int(sys.argv[1]); sys.path[:0] = sys.argv[2:]; del sys.argv[1:]; "
    "from router.runtime.worker import main; main(fd)"
)


def import_path() -> list[str]:
    """The daemon's sys.path, with the current directory spelled out."""
    return [entry or os.getcwd() for entry in sys.path]


def launch(spec: protocol.WorkerSpec) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """Exec a worker for `spec`; returns its process and the daemon's end of its connection."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    process: subprocess.Popen[bytes] | None = None
    try:
        with theirs:
            fd = theirs.fileno()
            process = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, str(fd), *import_path()],
                env=spec.environment,
                pass_fds=(fd,),
                stdin=subprocess.DEVNULL,
                process_group=0,  # its own group from the start: the daemon kills it whole
            )
        # Smaller than the socket's buffer in practice; if not, the worker reads it first anyway.
        ours.sendall(protocol.wire(pickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL)))
    except BaseException:
        ours.close()
        if process is not None:  # it never got its spec: it must not linger
            process.kill()
            process.wait()
        raise
    return process, ours
