"""The client address behind trusted proxies, from ``Forwarded`` or ``X-Forwarded-For``.

Those headers are anyone's to write, so they are read only when the TCP peer is one of
``FLASHFLOW_TRUSTED_PROXIES``. Each proxy appends the address it got the request from, so
the list is walked from the right: the first address that is not itself a trusted proxy is
the client. Entries left of it were written by the client and are never believed.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

#: IPv6 clients are counted by this prefix: one subscriber is usually given a whole /64.
IPV6_CLIENT_PREFIX = 64

_FOR = re.compile(r'(?:^|;)\s*for\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)', re.IGNORECASE)


def parse_address(text: str) -> Address | None:
    """An address from a header entry (``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``, ``::1``)."""
    text = text.strip().strip('"').strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def forwarded_for(values: Iterable[str]) -> list[str]:
    """The ``for=`` entries of ``Forwarded`` headers (RFC 7239), left to right."""
    found = []
    for value in values:
        for element in _split_outside_quotes(value):
            match = _FOR.search(element)
            found.append(match.group(1) if match else "")
    return found


def _split_outside_quotes(value: str) -> list[str]:
    parts, current, quoted = [], [], False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def client_address_from(peer: str, forwarded: list[str], x_forwarded_for: list[str],
                        trusted: tuple[Network, ...]) -> str:
    """The key of the client's address: the peer, or the right-most untrusted forwarded hop.

    ``Forwarded`` wins over ``X-Forwarded-For`` when both are present. An entry that is not
    an address (``unknown``, an obfuscated name) stops the walk at the hop that wrote it.
    """
    address = parse_address(peer)
    if address is None:
        return peer
    if trusted and _is_trusted(address, trusted):
        if forwarded:
            hops = forwarded_for(forwarded)
        else:
            hops = [hop for value in x_forwarded_for for hop in value.split(",")]
        for hop in reversed(hops):
            parsed = parse_address(hop)
            if parsed is None:
                break
            address = parsed
            if not _is_trusted(parsed, trusted):
                break
    return address_key(address)


def _is_trusted(address: Address, trusted: tuple[Network, ...]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def address_key(address: Address) -> str:
    """How an address is counted: itself for IPv4, its /64 network for IPv6."""
    if isinstance(address, IPv6Address):
        return str(ipaddress.ip_network(f"{address}/{IPV6_CLIENT_PREFIX}", strict=False))
    return str(address)
