"""A handler cannot read the daemon's secrets (issue 19 item 1), checked the way a curious handler
would look: its own /proc/self/environ (the environment it was exec'd with), the daemon's
/proc/<ppid>/environ, and os.environ, through a real `router run` and a real HTTP request."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path

import pytest
from daemon_support import Daemon

pytestmark = pytest.mark.integration

CODE = Path(__file__).resolve().parents[1] / "secret_handlers"
SECRETS = {
    "ROUTER_ADMIN_TOKEN": "admin-9f2c41d7",
    "ROUTER_WEBHOOK_TOKEN": "webhook-5ab0e3c1",
    "KAFKA_SASL_PASSWORD": "sasl-77d0c2aa",  # in the daemon's environment, not in its config
    "AWS_SECRET_ACCESS_KEY": "s3-secret-0c8e51b9",
}

# The daemon runs as an unprivileged user in the shipped unit and manifests; tests here may run as
# root, whose capabilities open any process's /proc whatever it asks. Root without capabilities is
# an unprivileged user that happens to have uid 0, so that is how the daemon is started here.
AS_UNPRIVILEGED = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"] if os.geteuid() == 0 else []


@pytest.mark.skipif(AS_UNPRIVILEGED and shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_a_handler_finds_no_daemon_secret_in_its_own_or_the_daemons_proc(tmp_path: Path) -> None:
    config = {
        "functions": {"peek": {"handler": "peek.handler", "code_path": str(CODE), "timeout": 10,
                               "environment": {"variables": {"FUNCTION_OWN": "visible-to-it"}}}},
        "http": {"admin_token": "${ROUTER_ADMIN_TOKEN}", "webhook_token": "${ROUTER_WEBHOOK_TOKEN}"},
        "http_routes": {"peek": {"function_name": "peek", "method": "GET", "path": "/peek"}},
    }
    daemon = Daemon(config, tmp_path, env=SECRETS, prefix=AS_UNPRIVILEGED).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/peek", timeout=20) as answer:
            found = json.loads(answer.read())
    finally:
        daemon.stop()
    assert found["ppid"] == daemon.proc.pid  # the parent it looked at is the daemon itself
    # What the handler is meant to see, it sees: its own variables and Lambda's.
    assert "FUNCTION_OWN=visible-to-it" in found["self_environ"]
    assert "AWS_LAMBDA_FUNCTION_NAME=peek" in found["self_environ"]
    assert found["os_environ"]["FUNCTION_OWN"] == "visible-to-it"
    # The daemon's /proc is closed to it (non-dumpable), its command line is not a secret.
    assert found["parent_environ"].startswith("unreadable: PermissionError")
    assert "router.cli" in found["parent_cmdline"]
    everything = json.dumps(found)
    for name, secret in SECRETS.items():
        assert secret not in everything, name
        assert name not in found["os_environ"], name
    # And the containment around it (issue 19 item 6): first in line for the OOM killer, no cores.
    assert found["oom_score_adj"] == "1000"
    assert found["core_limit"] == [0, 0]
