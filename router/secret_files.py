"""Secrets read from files, so they need not sit in the daemon's environment at all.

`${file:PATH}` in the config is replaced by the contents of PATH (relative to the working
directory, as `code_path` is): a Kubernetes secret volume, a Docker secret, any file only the
daemon's user can read. `${credential:NAME}` reads `$CREDENTIALS_DIRECTORY/NAME`, where systemd's
`LoadCredential=` puts a credential for the service alone. One trailing newline is dropped (files
written by `echo` end in one; no token does). A file is read at every load, so a SIGHUP reload
picks up a rotated secret. Errors name the file and why, never the contents.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

# A secret is a token or a password; a larger file is the wrong file.
MAX_SECRET_BYTES = 64 * 1024


def resolve(kind: str, name: str, env: Mapping[str, str]) -> str:
    """The secret `${kind:name}` refers to; ValueError with a one-line reason otherwise."""
    if kind == "credential":
        directory = env.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ValueError(f"credential {name}: $CREDENTIALS_DIRECTORY is not set "
                             "(systemd sets it for LoadCredential=)")
        if "/" in name or name in (".", ".."):
            raise ValueError(f"credential {name!r}: a credential name has no slashes")
        path = Path(directory) / name
    else:
        path = Path(name)
    try:
        with path.open("rb") as file:
            data = file.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read secret file {path} ({exc.strerror or type(exc).__name__})") from None
    if len(data) > MAX_SECRET_BYTES:
        raise ValueError(f"secret file {path} is larger than {MAX_SECRET_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"secret file {path} is not UTF-8 text") from None
    return text.removesuffix("\n").removesuffix("\r") if text.endswith("\n") else text



