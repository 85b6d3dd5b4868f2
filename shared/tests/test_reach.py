"""The network reach policy: allowed CIDRs, the always-denied set, resolution like a connect."""

from __future__ import annotations

import ipaddress

import pytest
from brokerlink_shared.reach import (
    LOOPBACK,
    PRIVATE_RANGES,
    HostNotAllowed,
    NetworkReach,
    parse_networks,
)


def test_denied_wins_over_allowed() -> None:
    everything = NetworkReach.from_settings("0.0.0.0/0,::/0")
    for address in (
        "169.254.169.254",
        "fe80::1",
        "fd00:ec2::254",
        "::ffff:169.254.169.254",
    ):
        assert not everything.permits(ipaddress.ip_address(address)), address
    assert everything.permits(ipaddress.ip_address("8.8.8.8"))


def test_private_ranges_exclude_loopback_and_public() -> None:
    private = NetworkReach.from_settings(PRIVATE_RANGES)
    assert private.permits(ipaddress.ip_address("10.1.2.3"))
    assert private.permits(ipaddress.ip_address("192.168.0.10"))
    assert not private.permits(ipaddress.ip_address("127.0.0.1"))
    assert not private.permits(ipaddress.ip_address("1.1.1.1"))


def test_extra_denied_networks() -> None:
    reach = NetworkReach.from_settings(PRIVATE_RANGES, "10.96.0.0/12")
    assert not reach.permits(ipaddress.ip_address("10.96.0.1"))
    assert reach.permits(ipaddress.ip_address("10.0.0.1"))


def test_bad_cidr_names_its_position() -> None:
    with pytest.raises(ValueError, match="entry 2"):
        parse_networks("10.0.0.0/8, not-a-network")


async def test_names_resolve_like_a_connect() -> None:
    loopback = NetworkReach.from_settings(LOOPBACK)
    assert "127.0.0.1" in await loopback.resolve("localhost", 4002)
    with pytest.raises(HostNotAllowed) as refused:
        await NetworkReach.from_settings(PRIVATE_RANGES).resolve("localhost", 4002)
    assert refused.value.code == "host_not_allowed"
    assert "127.0.0.1" not in refused.value.message
    with pytest.raises(HostNotAllowed) as unknown:
        await loopback.resolve("no-such-host.invalid", 4002)
    assert unknown.value.code == "host_unresolvable"
    with pytest.raises(HostNotAllowed):
        await NetworkReach.from_settings("0.0.0.0/0").resolve("169.254.169.254", 80)
