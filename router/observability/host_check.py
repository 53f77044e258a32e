"""On a loopback listener, answer only requests addressed to loopback (against DNS rebinding).

On loopback the admin endpoints ask for no token and the Lambda API may run without credentials:
whoever can reach 127.0.0.1 can read the config anyway. A web page cannot, except by DNS
rebinding: its own name, re-resolved to 127.0.0.1, lets the browser send requests to the daemon
and read the answers, since to the browser they are same-origin. Such requests still carry the
page's name in `Host`, so the unauthenticated endpoints accept only a loopback Host: `localhost`
(and names under `.localhost`), a 127.0.0.0/8 address or `[::1]`, with any port. Requests with a
token or a signature do not need this, and neither do the user's own HTTP routes, which are served
under whatever names the user gives them.
"""

from __future__ import annotations

import ipaddress


def is_loopback_host(host: str | None) -> bool:
    """Whether an HTTP Host header names this machine's loopback interface."""
    if not host:
        return False
    name = host.strip().lower()
    if name.startswith("["):  # [v6]:port
        name = name[1 : name.find("]")] if "]" in name else ""
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    name = name.rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
