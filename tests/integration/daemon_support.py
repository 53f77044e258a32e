"""Running the real `router run` daemon as a subprocess, for the operator-level tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from router.devstack import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]


class Daemon:
    def __init__(
        self, config: dict[str, Any], workdir: Path, env: dict[str, str] | None = None,
        *, prefix: list[str] | None = None,
    ) -> None:
        self.extra_env = env or {}
        self.prefix = prefix or []
        self.port = free_port()
        config.setdefault("http", {})["listen"] = f"127.0.0.1:{self.port}"
        config.setdefault("state_dir", str(workdir / "state"))
        self.config_path = workdir / "router.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "daemon.log"
        self.err_path = workdir / "daemon.err"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")} | self.extra_env
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "router.cli", "run", "--config", str(self.config_path),
             "--log-format", "json"],
            stdout=self.log_path.open("wb"), stderr=self.err_path.open("wb"), cwd=ROOT, env=env,
            start_new_session=True,
        )
        wait_for(lambda: self.get("/healthz")[0] == 200, timeout=30, what="router /healthz")
        return self

    def get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                body = response.read()
                return response.status, json.loads(body) if path != "/metrics" else body.decode()
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")
        except OSError:
            return 0, None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]


