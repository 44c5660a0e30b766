"""The webhook URL policy (app/domain/webhook_urls.py): https only, public addresses only,
with the dev setting admitting http and loopback/private receivers but never link-local."""

from __future__ import annotations

import ipaddress

import pytest

from app.domain.webhook_urls import (
    WebhookURLRefused,
    check_addresses,
    parse_webhook_url,
    refusal_reason,
)

REFUSED_ALWAYS = {
    "169.254.169.254": "link-local",          # cloud metadata
    "fe80::1": "link-local",
    "0.0.0.0": "unspecified",
    "::": "unspecified",
    "224.0.0.1": "multicast",
    "ff02::1": "multicast",
    "240.0.0.1": "reserved",
    "255.255.255.255": "reserved",
    "192.0.2.10": "reserved",                # documentation
    "198.18.0.1": "reserved",                # benchmarking
    "2001:db8::1": "reserved",
    "::ffff:8.8.8.8": "IPv4-mapped",
    "::ffff:127.0.0.1": "IPv4-mapped",
    "::ffff:169.254.169.254": "IPv4-mapped",
    "2002:a9fe:a9fe::1": "embeds 169.254.169.254",  # 6to4 of the metadata address
    "64:ff9b::a9fe:a9fe": "embeds 169.254.169.254",  # NAT64 of the metadata address
    "64:ff9b:1::1": "NAT64",
}
REFUSED_OUTSIDE_DEV = {
    "127.0.0.1": "loopback",
    "127.8.9.10": "loopback",
    "::1": "loopback",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "192.168.1.1": "private",
    "fd00::1": "private",
    "100.64.0.1": "CGNAT",
    "2002:7f00:1::1": "embeds 127.0.0.1",
}
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "2a00:1450:4001::1"]


@pytest.mark.parametrize("address,why", sorted(REFUSED_ALWAYS.items()))
@pytest.mark.parametrize("dev", [False, True])
def test_addresses_refused_even_in_dev(address, why, dev):
    reason = refusal_reason(ipaddress.ip_address(address), allow_private=dev)
    assert reason is not None and why in reason


@pytest.mark.parametrize("address,why", sorted(REFUSED_OUTSIDE_DEV.items()))
def test_loopback_and_private_only_in_dev(address, why):
    reason = refusal_reason(ipaddress.ip_address(address), allow_private=False)
    assert reason is not None and why in reason
    assert refusal_reason(ipaddress.ip_address(address), allow_private=True) is None


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address):
    assert refusal_reason(ipaddress.ip_address(address), allow_private=False) is None


def test_a_host_with_any_internal_address_is_refused():
    addresses = [ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("10.0.0.5")]
    with pytest.raises(WebhookURLRefused, match="resolves to 10.0.0.5 is a private address"):
        check_addresses(addresses, host="hooks.example.com", allow_private=False)
    assert str(check_addresses(addresses[:1], host="hooks.example.com",
                               allow_private=False)) == "8.8.8.8"
    with pytest.raises(WebhookURLRefused, match="has no address"):
        check_addresses([], host="hooks.example.com", allow_private=False)


@pytest.mark.parametrize("url,why", [
    ("http://hooks.example.com/x", "must use https"),
    ("ftp://hooks.example.com/x", "scheme must be https"),
    ("hooks.example.com/x", "scheme must be https"),
    ("https://user:pw@hooks.example.com/", "user name or password"),
    ("https:///path", "no host"),
    ("https://hooks.example.com:99999/", "cannot be parsed"),
    ("https://hooks.example.com:0/", "port"),
    ("https://hooks.example.com/a b", "whitespace"),
    ("https://hooks.example.com/\x00", "control"),
    ("https://" + "a" * 2050 + ".com/", "longer than"),
    ("", "empty"),
])
def test_malformed_urls_say_why(url, why):
    with pytest.raises(WebhookURLRefused, match=why):
        parse_webhook_url(url, allow_private=False)


def test_dev_allows_http():
    target = parse_webhook_url("http://127.0.0.1:8080/hook?x=1", allow_private=True)
    assert (target.scheme, target.host, target.port, target.target) == \
        ("http", "127.0.0.1", 8080, "/hook?x=1")
    assert target.host_header == "127.0.0.1:8080"


def test_parsed_parts():
    target = parse_webhook_url("https://Hooks.Exämple.com./in/hoök?a=1#frag",
                               allow_private=False)
    assert target.host == "hooks.xn--exmple-cua.com"
    assert target.port == 443 and target.host_header == "hooks.xn--exmple-cua.com"
    assert target.target == "/in/ho%C3%B6k?a=1"  # fragment dropped, path ASCII
    v6 = parse_webhook_url("https://[2606:4700::1111]:8443/", allow_private=False)
    assert v6.literal_address() == ipaddress.ip_address("2606:4700::1111")
    assert v6.host_header == "[2606:4700::1111]:8443"
