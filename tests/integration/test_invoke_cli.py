"""`router invoke` as a user runs it: a real process, a real worker, stdout/stderr/exit code."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

HANDLERS = Path(__file__).resolve().parent.parent / "handlers"
REPORT_RE = re.compile(
    r"^REPORT RequestId: (?P<id>[0-9a-f-]{36})\tDuration: \d+\.\d\d ms\tBilled Duration: \d+ ms"
    r"\tMemory Size: 256 MB\tMax Memory Used: \d+ MB\tInit Duration: \d+\.\d\d ms(?P<rest>.*)$",
    re.MULTILINE,
)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("invoke-cli") / "router.yaml"
    functions = {
        "echo": {"handler": "basic.echo", "memory_size": 256},
        "boom": {"handler": "basic.boom", "memory_size": 256},
        "chatty": {"handler": "basic.chatty", "memory_size": 256},
        "crash": {"handler": "basic.crash", "memory_size": 256},
    }
    lines = ["functions:"]
    for name, spec in functions.items():
        lines.append(f"  {name}:")
        lines.extend(f"    {key}: {value}" for key, value in spec.items())
        lines.append(f"    code_path: {HANDLERS}")
    path.write_text("\n".join(lines) + "\n")
    return path


def router(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router.cli", *args], input=stdin, capture_output=True, text=True, timeout=60,
    )


def test_event_file_success_prints_only_the_response(config_file: Path, tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"photo": "cat.jpg", "size": [1, 2]}))
    done = router("invoke", "echo", "--event", str(event), "--config", str(config_file))
    assert done.returncode == 0, done.stderr
    response = json.loads(done.stdout)
    assert response["event"] == {"photo": "cat.jpg", "size": [1, 2]}
    request_id = response["request_id"]
    assert done.stdout.strip() == json.dumps(response)  # nothing else on stdout
    assert f"START RequestId: {request_id} Version: $LATEST" in done.stderr.splitlines()
    assert f"END RequestId: {request_id}" in done.stderr.splitlines()
    report = REPORT_RE.search(done.stderr)
    assert report is not None, done.stderr
    assert report["id"] == request_id and report["rest"] == ""


def test_event_from_stdin(config_file: Path) -> None:
    done = router("invoke", "echo", "--event", "-", "--config", str(config_file), stdin='{"from": "stdin"}')
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["event"] == {"from": "stdin"}


def test_no_event_means_an_empty_object(config_file: Path) -> None:
    done = router("invoke", "echo", "--config", str(config_file))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["event"] == {}


def test_function_error_exits_1_with_lambdas_error_json(config_file: Path) -> None:
    done = router("invoke", "boom", "--config", str(config_file), "--event", "-", stdin='{"n": 5}')
    assert done.returncode == 1
    error = json.loads(done.stdout)
    assert error["errorType"] == "ValueError"
    assert error["errorMessage"] == "boom 5"
    assert set(error) == {"errorMessage", "errorType", "requestId", "stackTrace"}
    assert "[ERROR] ValueError: boom 5" in done.stderr
    report = REPORT_RE.search(done.stderr)
    assert report is not None and report["id"] == error["requestId"]
    assert report["rest"] == "\tStatus: error\tError Type: ValueError"


def test_crash_exits_1_with_runtime_exit_error(config_file: Path) -> None:
    done = router("invoke", "crash", "--config", str(config_file), "--event", "-", stdin='{"status": 3}')
    assert done.returncode == 1
    error = json.loads(done.stdout)
    assert error["errorType"] == "Runtime.ExitError"
    assert error["errorMessage"].endswith("Runtime exited with error: exit status 3")


def test_handler_logs_go_to_stderr_not_stdout(config_file: Path) -> None:
    done = router("invoke", "chatty", "--config", str(config_file))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == "done"
    stderr = done.stderr.splitlines()
    for line in ("hello from stdout", "two", "lines", "to stderr", "no newline at the end"):
        assert line in stderr
    assert any(re.fullmatch(r"\[WARNING\]\t\S+Z\t[0-9a-f-]{36}\ta warning via logging", line) for line in stderr)


def test_unknown_function_exits_2(config_file: Path) -> None:
    done = router("invoke", "nope", "--config", str(config_file))
    assert done.returncode == 2
    assert done.stdout == ""
    assert "unknown function 'nope'" in done.stderr and "boom, chatty, crash, echo" in done.stderr


def test_bad_config_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("functions:\n  f:\n    handler: nodots\n")
    done = router("invoke", "f", "--config", str(bad))
    assert done.returncode == 2
    assert done.stdout == ""
    assert "router: config: functions.f.handler:" in done.stderr


def test_event_that_is_not_json_exits_2(config_file: Path) -> None:
    done = router("invoke", "echo", "--config", str(config_file), "--event", "-", stdin="{not json")
    assert done.returncode == 2
    assert "not valid JSON" in done.stderr
