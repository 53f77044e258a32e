"""scripts/install lays router out as its systemd unit expects, and the unit then verifies.

The install goes below a temporary root standing for a fresh machine: the script installs the
venv, unit, config and env file there, and the test adds what any systemd machine already has
(its own unit files and /bin/kill, which ExecReload uses) so that `systemd-analyze verify
--root` checks the unit against exactly what the script installed."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_installed_unit_verifies_and_the_installed_command_runs(tmp_path: Path) -> None:
    root = tmp_path / "root"
    env = {**os.environ, "PIP_NO_COMPILE": "1"}  # bytecode is not what this test is about
    done = subprocess.run([str(REPO / "scripts" / "install"), "--root", str(root)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    unit = root / "etc/systemd/system/router.service"
    assert unit.read_text() == (REPO / "deploy/systemd/router.service").read_text()
    assert stat.S_IMODE((root / "etc/router/router.env").stat().st_mode) == 0o600
    assert (root / "etc/router/router.yaml").read_text() == (REPO / "config/router.example.yaml").read_text()
    router = root / "opt/router/.venv/bin/router"
    shown = subprocess.run([str(router), "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "validate" in shown.stdout
    # The secrets the example config references come from router.env on a real machine.
    example = (root / "etc/router/router.yaml").read_text()
    secrets = {name: "x" for name in re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", example)}
    validated = subprocess.run([str(router), "validate", "--config", str(root / "etc/router/router.yaml")],
                               capture_output=True, text=True, timeout=60, env={**os.environ, **secrets})
    assert validated.returncode == 0, validated.stdout + validated.stderr

    # A second run keeps the operator's edited config and secrets.
    (root / "etc/router/router.env").write_text("MQTT_PASSWORD=kept\n")
    again = subprocess.run([str(REPO / "scripts" / "install"), "--root", str(root)], env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and (root / "etc/router/router.env").read_text() == "MQTT_PASSWORD=kept\n"

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here: the layout was checked, the unit was not verified")
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.realpath(shutil.which("kill") or "/bin/kill"), root / "usr/bin/kill")
    if not (root / "bin").exists():
        (root / "bin").symlink_to("usr/bin")
    verified = subprocess.run([analyze, "verify", f"--root={root}", str(unit)], capture_output=True, text=True,
                              timeout=60)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "not executable" not in verified.stderr

    router.unlink()  # the check is real: without the installed command the unit does not verify
    broken = subprocess.run([analyze, "verify", f"--root={root}", str(unit)], capture_output=True, text=True,
                            timeout=60)
    assert broken.returncode != 0 and "router" in broken.stderr
