"""Secrets from files (`${file:PATH}`, `${credential:NAME}`): read at load, one trailing newline
dropped, errors that name the file but never its contents."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.config import ConfigError, load_config_data
from router.secret_files import MAX_SECRET_BYTES


def _problems(data: dict, env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_data(data, env)
    return info.value.problems


def test_file_and_credential_references_become_the_secrets(tmp_path: Path) -> None:
    (tmp_path / "mqtt-password").write_text("s3cr3t-from-a-volume\n")  # as `echo > file` writes it
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "admin_token").write_bytes(b"tok-from-systemd")
    (creds / "webhook_token").write_bytes(b"two-lines\n\n")  # only one newline is framing
    data = {
        "mqtt": {"host": "broker", "username": "router", "password": f"${{file:{tmp_path}/mqtt-password}}"},
        "http": {"admin_token": "${credential:admin_token}", "webhook_token": "${credential:webhook_token}"},
    }
    config = load_config_data(data, {"CREDENTIALS_DIRECTORY": str(creds)})
    assert config.mqtt is not None and config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == "s3cr3t-from-a-volume"
    assert config.http.admin_token is not None
    assert config.http.admin_token.get_secret_value() == "tok-from-systemd"
    assert config.http.webhook_token is not None
    assert config.http.webhook_token.get_secret_value() == "two-lines\n"
    # Rotated on disk, picked up by the next load (a SIGHUP reload).
    (creds / "admin_token").write_bytes(b"rotated")
    config = load_config_data(data, {"CREDENTIALS_DIRECTORY": str(creds)})
    assert config.http.admin_token is not None and config.http.admin_token.get_secret_value() == "rotated"


def test_unreadable_secrets_are_config_errors_that_never_show_contents(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * (MAX_SECRET_BYTES + 1))
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe-secret-bytes")
    problems = _problems({"http": {
        "admin_token": f"${{file:{tmp_path}/missing}}",
        "webhook_token": f"${{file:{big}}}",
    }, "mqtt": {"host": "b", "password": f"${{file:{binary}}}", "username": "${credential:user}"}}, {})
    assert problems == [
        f"http.admin_token: cannot read secret file {tmp_path}/missing (No such file or directory)",
        f"http.webhook_token: secret file {big} is larger than {MAX_SECRET_BYTES} bytes",
        f"mqtt.password: secret file {binary} is not UTF-8 text",
        "mqtt.username: credential user: $CREDENTIALS_DIRECTORY is not set (systemd sets it for LoadCredential=)",
    ]
    assert not any("secret-bytes" in p or "xxxx" in p for p in problems)
    creds = tmp_path / "c"
    creds.mkdir()
    assert _problems({"http": {"admin_token": "${credential:../big}"}}, {"CREDENTIALS_DIRECTORY": str(creds)}) == [
        "http.admin_token: credential '../big': a credential name has no slashes",
    ]
