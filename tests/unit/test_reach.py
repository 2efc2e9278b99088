"""Which upstream addresses the daemon may reach (``debtorrent.reach``), as plain functions."""

from __future__ import annotations

import ipaddress

import pytest

from debtorrent.errors import MirrorForbiddenError
from debtorrent.reach import Reach, internal_reason, own_address, split_netloc


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.0.1.3",
        "127.255.255.254",
        "0.0.0.0",
        "0.1.2.3",
        "169.254.169.254",
        "224.0.0.251",
        "255.255.255.255",
        "240.0.0.1",
        "::1",
        "::",
        "fe80::1",
        "fec0::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.1.1",
        "::127.0.0.1",  # IPv4-compatible (deprecated)
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    ],
)
def test_internal_addresses(address: str) -> None:
    assert internal_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize(
    "address",
    [
        "192.0.2.10",
        "10.1.2.3",
        "192.168.1.1",
        "172.16.0.1",
        "100.64.0.1",
        "2001:db8::1",
        "::ffff:192.0.2.1",
    ],
)
def test_public_and_lan_addresses_are_not_internal(address: str) -> None:
    assert internal_reason(ipaddress.ip_address(address)) is None


def test_own_address_uses_the_kernel_table() -> None:
    assert own_address(ipaddress.ip_address("127.0.0.1"))
    assert not own_address(ipaddress.ip_address("192.0.2.77"))  # TEST-NET: never ours


@pytest.mark.parametrize(
    ("netloc", "split"),
    [
        ("deb.example.org", ("deb.example.org", None)),
        ("deb.example.org:8080", ("deb.example.org", 8080)),
        ("[::1]:443", ("[::1]", 443)),
        ("[::1]", ("[::1]", None)),
    ],
)
def test_split_netloc(netloc: str, split: tuple) -> None:
    assert split_netloc(netloc) == split


def test_wildcards_allow_names_but_never_internal_addresses() -> None:
    reach = Reach(["*"])
    assert reach.allows("deb.example.org") and reach.allows("127.0.0.1:8080")
    assert reach.refusal("deb.example.org:80", ipaddress.ip_address("192.0.2.1")) is None
    why = reach.refusal("deb.example.org:80", ipaddress.ip_address("127.0.0.1"))
    assert why is not None and "loopback" in why
    assert Reach(["127.0.0.*"]).refusal("127.0.0.5:80", ipaddress.ip_address("127.0.0.5"))


def test_literal_names_and_networks_name_internal_mirrors() -> None:
    reach = Reach(["*", "127.0.0.1", "localhost:8080", "[::1]", "10.9.0.0/16", "127.0.2.0/24"])
    loop = ipaddress.ip_address("127.0.0.1")
    assert reach.refusal("127.0.0.1:5000", loop) is None  # any port of a named host
    assert reach.refusal("localhost:8080", loop) is None
    assert reach.refusal("localhost:8081", loop) is not None  # another port
    assert reach.refusal("[::1]:99", ipaddress.ip_address("::1")) is None
    assert reach.refusal("anything:80", ipaddress.ip_address("127.0.2.9")) is None  # by network
    assert reach.allows("10.9.3.4:8080") and not Reach(["10.9.0.0/16"]).allows("10.8.0.1")


def test_literal_internal_mirror_is_refused_without_a_lookup() -> None:
    reach = Reach(["*"])
    with pytest.raises(MirrorForbiddenError) as refused:
        reach.check_literal("169.254.169.254", "http://169.254.169.254/x")
    assert refused.value.status == 403 and "link-local" in str(refused.value)
    reach.check_literal("deb.example.org", "http://deb.example.org/x")  # names: at connect


def test_addresses_keeps_only_what_may_be_reached() -> None:
    with pytest.raises(MirrorForbiddenError, match="loopback"):
        Reach(["*"]).addresses("localhost", 8080, "http://localhost:8080/")
    kept = Reach(["localhost:8080"]).addresses("localhost", 8080, "http://localhost:8080/")
    assert kept and all(sockaddr[0] in ("127.0.0.1", "::1") for _f, sockaddr in kept)
