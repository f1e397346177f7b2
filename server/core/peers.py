"""A client's address in three u64 words of shared memory (pure), for the
stream ledger (``server.core.streams``), so that ``inspect`` can say who
each connection is::

    port word   the port; bit 16 set for an IPv6 address
    two words   the address's 16 bytes (IPv4: 4 bytes, then zeros)

A peer that is not an IP address (a Unix socket) is all zeros: "?".
"""

from __future__ import annotations

import ipaddress

_V6 = 1 << 16


def pack_peer(host: str, port: int) -> tuple[int, int, int]:
    """The port word and the two address words of a peer (zeros if it is
    not an IP address)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return 0, 0, 0
    raw = ip.packed.ljust(16, b"\0")
    flag = _V6 if ip.version == 6 else 0
    return (
        (port & 0xFFFF) | flag,
        int.from_bytes(raw[:8], "little"),
        int.from_bytes(raw[8:], "little"),
    )


def unpack_peer(port: int, lo: int, hi: int) -> str:
    raw = lo.to_bytes(8, "little") + hi.to_bytes(8, "little")
    if port & _V6:
        return f"[{ipaddress.IPv6Address(raw)}]:{port & 0xFFFF}"
    if not port and not lo:
        return "?"
    return f"{ipaddress.IPv4Address(raw[:4])}:{port & 0xFFFF}"
