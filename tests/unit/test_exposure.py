"""Which bind addresses count as this machine only (security/exposure.py): the others need API
keys or --allow-unauthenticated."""

from __future__ import annotations

import pytest

from modelport.security.exposure import is_loopback, open_server_refusal


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.0.0.53", "127.255.255.254", "::1", "[::1]", "localhost", "LocalHost"],
)
def test_loopback_addresses_may_serve_without_keys(host: str) -> None:
    assert is_loopback(host)
    assert open_server_refusal(host) is None


@pytest.mark.parametrize(
    "host",
    [
        "0.0.0.0",  # every IPv4 address
        "::",  # every address (dual stack)
        "[::]",
        "",  # what an empty --host binds: every address
        "192.168.1.20",  # a LAN address
        "10.0.0.7",
        "fe80::1",  # link-local: the neighbours reach it
        "203.0.113.5",
        "model-host.example.com",  # a name may resolve to anything
        "myhost",
        "localhost.example.com",  # not localhost, whatever it starts with
        "127.0.0.1.nip.io",
        "128.0.0.1",
    ],
)
def test_every_other_address_needs_keys(host: str) -> None:
    assert not is_loopback(host)
    refusal = open_server_refusal(host)
    assert refusal is not None
    assert f"refusing to serve on {host or 'every address'} without API keys" in refusal
    assert "--api-keys" in refusal and "--allow-unauthenticated" in refusal
