"""The client address: the TCP peer, or behind a trusted proxy the right-most untrusted hop."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest
import trio

from flashflow.http.proxies import client_address_from
from flashflow.http.wire import CURRENT_PURCHASE

from ..helpers import live_server, make_sale

TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8:ffff::/48"))


@pytest.mark.parametrize(("peer", "forwarded", "xff", "expected"), [
    ("203.0.113.9", [], ["198.51.100.1"], "203.0.113.9"),
    ("10.0.0.2", [], ["198.51.100.1"], "198.51.100.1"),
    ("10.0.0.2", [], ["6.6.6.6, 198.51.100.1, 10.0.0.7"], "198.51.100.1"),
    ("10.0.0.2", [], ["6.6.6.6", "198.51.100.1"], "198.51.100.1"),
    ("10.0.0.2", [], [], "10.0.0.2"),
    ("10.0.0.2", [], ["10.0.0.9"], "10.0.0.9"),
    ("10.0.0.2", [], ["6.6.6.6, garbage"], "10.0.0.2"),
    ("10.0.0.2", ['for=6.6.6.6, for="198.51.100.1:4711";proto=https'], ["1.1.1.1"],
     "198.51.100.1"),
    ("10.0.0.2", ['for="[2001:db8:1:2::99]:4711"'], [], "2001:db8:1:2::/64"),
    ("10.0.0.2", ["for=unknown"], [], "10.0.0.2"),
    ("2001:db8:1:2:3:4:5:6", [], ["198.51.100.1"], "2001:db8:1:2::/64"),
    ("2001:db8:ffff::1", [], ["2001:db8:5:6::1"], "2001:db8:5:6::/64"),
    ("::ffff:10.0.0.2", [], ["198.51.100.1"], "198.51.100.1"),
], ids=["untrusted-peer", "trusted-peer", "right-most-untrusted", "several-headers",
        "no-header", "all-trusted", "garbage-stops", "forwarded-wins", "forwarded-ipv6",
        "forwarded-unknown", "ipv6-peer-per-64", "ipv6-proxy", "ipv4-mapped"])
def test_client_address(peer, forwarded, xff, expected):
    """Forwarding headers count only from a trusted peer, read from the right; IPv6 by /64."""
    assert client_address_from(peer, forwarded, xff, TRUSTED) == expected


def test_no_trusted_proxy_ignores_every_header():
    """With FLASHFLOW_TRUSTED_PROXIES empty, headers are never read, even from loopback."""
    assert client_address_from("127.0.0.1", ["for=1.2.3.4"], ["1.2.3.4"], ()) == "127.0.0.1"


async def spoofed_presses(settings) -> list[int]:
    """Three users from three claimed addresses, past an address burst of one."""
    settings = replace(settings, rate_address_per_s=0.01, rate_address_burst=1)
    await make_sale(settings.database_url, stock=10)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            return [(await server.client.post(
                CURRENT_PURCHASE, json={"userId": f"user-{i}"},
                headers={"X-Forwarded-For": f"198.51.100.{i}"})).status_code for i in range(3)]


async def test_a_spoofed_x_forwarded_for_from_an_untrusted_peer_is_ignored(settings):
    """From an untrusted peer every request counts against the peer: the claimed hops are not."""
    assert await spoofed_presses(settings) == [201, 429, 429]


async def test_x_forwarded_for_from_a_trusted_proxy_is_honoured(settings):
    """From a trusted proxy each forwarded client has a bucket of its own."""
    trusted = (ipaddress.ip_network("127.0.0.1/32"),)
    assert await spoofed_presses(replace(settings, trusted_proxies=trusted)) == [201, 201, 201]
