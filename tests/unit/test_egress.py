"""Which addresses webhooks may not reach, and what non-admins see of a
failed delivery."""

from __future__ import annotations

import ipaddress

import pytest

from corral.config import Settings
from corral.egress import public_error, refused_kind


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "non-public"),  # carrier-grade NAT
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:10.0.0.1", "private"),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_refused_addresses(address: str, kind: str | None) -> None:
    assert refused_kind(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (None, None),
        ("HTTP 404: <html>internal admin page</html>", "HTTP 404"),
        ("HTTP 500: ", "HTTP 500"),
        ("ConnectError: [Errno 111] Connection refused", "connection failed"),
        ("ReadTimeout: timed out", "connection failed"),
        ("refused: webhook 'x': 10.0.0.5 is a private address ...", "refused: private address"),
    ],
)
def test_non_admins_see_no_socket_detail(error: str | None, shown: str | None) -> None:
    assert public_error(error) == shown


@pytest.mark.parametrize(
    ("host", "setting", "allowed"),
    [
        ("127.0.0.1", None, True),
        ("localhost", None, True),
        ("::1", None, True),
        ("0.0.0.0", None, False),
        ("10.0.0.4", None, False),
        ("0.0.0.0", True, True),
        ("127.0.0.1", False, False),
    ],
)
def test_private_webhooks_default_to_allowed_only_on_loopback(
    host: str, setting: bool | None, allowed: bool
) -> None:
    settings = Settings(host=host, webhook_allow_private=setting)
    assert settings.webhooks_may_reach_private is allowed
