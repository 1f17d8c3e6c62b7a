"""Secure by default: a server that others can reach does not start without API keys."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Only this machine can connect: localhost, 127.0.0.0/8 or ::1. Any other name, and the
    wildcard addresses (0.0.0.0, ::, ""), may be reachable from elsewhere."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


def open_server_refusal(host: str) -> str | None:
    """Why a server on `host` without keys must not start, or None when it may."""
    if is_loopback(host):
        return None
    shown = host or "every address"
    return (
        f"refusing to serve on {shown} without API keys: anyone who can reach the ports could "
        "use, load and unload every model. Give --api-keys FILE (or MODELPORT_API_KEYS, or "
        "MODELPORT_API_KEY for one key), or pass --allow-unauthenticated to serve without keys "
        "on purpose (e.g. behind a gateway that authenticates)"
    )
