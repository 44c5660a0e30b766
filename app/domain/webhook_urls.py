"""Which webhook URLs and addresses the service may call (pure rules; no DNS, no sockets).

No server-side request forgery: an endpoint URL must be https and its host must resolve only
to public unicast addresses. The check runs at registration and again at every delivery,
and the sender connects to the very address that passed it (app/services/webhook_sender.py),
so a DNS answer that changes between check and connect (rebinding) cannot reach an internal
address. ``allow_private`` (the dev setting ``webhook_allow_private_urls``, on under
``crma dev``) admits http and loopback / private / shared (CGNAT) addresses for local
receivers; link-local (cloud metadata at 169.254.169.254), multicast, unspecified and
reserved addresses stay refused even then.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2048
_PATH_SAFE = "/%:@!$&'()*+,;=~-._"
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_PRIVATE_USE = tuple(ipaddress.ip_network(n) for n in
                     ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))


class WebhookURLRefused(ValueError):
    """A URL or an address the policy refuses; ``str(error)`` says why."""


@dataclass(frozen=True)
class WebhookTarget:
    """A URL split into what the sender needs: scheme, host (IDNA, lower case), port, and the
    path with its query (the fragment is never sent)."""

    url: str
    scheme: str
    host: str
    port: int
    target: str

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    def literal_address(self) -> Address | None:
        """The host as an IP address when the URL names one (no DNS needed)."""
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None


def parse_webhook_url(url: str, *, allow_private: bool) -> WebhookTarget:
    """Split and check a URL's form (scheme, credentials, host, port); raises
    ``WebhookURLRefused`` with the reason. Addresses are checked by ``refusal_reason``."""
    if not isinstance(url, str) or not url.strip():
        raise WebhookURLRefused("the URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise WebhookURLRefused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise WebhookURLRefused("the URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookURLRefused(f"the URL cannot be parsed ({exc})") from None
    scheme = parts.scheme.lower()
    allowed = ("https", "http") if allow_private else ("https",)
    if scheme not in allowed:
        raise WebhookURLRefused("the URL must use https" if scheme == "http"
                                else f"the URL scheme must be https, not {scheme or 'missing'!r}")
    if parts.username is not None or parts.password is not None:
        raise WebhookURLRefused("the URL must not contain a user name or password")
    if not parts.hostname:
        raise WebhookURLRefused("the URL has no host")
    if port == 0:
        raise WebhookURLRefused("the URL's port must be between 1 and 65535")
    host = _normalise_host(parts.hostname)
    # Percent-encoded once here so the request line is plain ASCII (existing escapes kept).
    target = quote(parts.path or "/", safe=_PATH_SAFE)
    if parts.query:
        target += "?" + quote(parts.query, safe=_PATH_SAFE + "?")
    return WebhookTarget(url=url, scheme=scheme, host=host,
                         port=port or (443 if scheme == "https" else 80), target=target)


def _normalise_host(hostname: str) -> str:
    host = hostname.rstrip(".").lower()
    if not host:
        raise WebhookURLRefused("the URL has no host")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        raise WebhookURLRefused(f"the host {hostname!r} is not a valid domain name") from None


def refusal_reason(address: Address, *, allow_private: bool) -> str | None:
    """Why the service must not connect to ``address`` (None: it may)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return f"{address} is an IPv4-mapped IPv6 address"
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = refusal_reason(embedded, allow_private=allow_private)
            if reason is not None:
                return f"{address} embeds {embedded}: {reason}"
        if address in _NAT64_LOCAL:
            return f"{address} is a local-use NAT64 address"
    if address.is_unspecified:
        return f"{address} is the unspecified address"
    if address.is_link_local:
        return f"{address} is link-local (cloud metadata services live there)"
    if address.is_multicast:
        return f"{address} is a multicast address"
    if address.is_loopback:
        return None if allow_private else f"{address} is a loopback address"
    if _is_private_use(address):
        return None if allow_private else f"{address} is a private address"
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return None if allow_private else f"{address} is a shared (CGNAT) address"
    if not address.is_global:
        return f"{address} is a reserved or special-purpose address"
    return None


def _is_private_use(address: Address) -> bool:
    """RFC 1918 and IPv6 unique-local: the ranges a dev setup legitimately uses."""
    return any(address in network for network in _PRIVATE_USE)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a 6to4, Teredo (client) or NAT64 address routes to."""
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def check_addresses(addresses: list[Address], *, host: str, allow_private: bool) -> Address:
    """The address to connect to: the first of a host's resolved addresses, provided every one
    of them passes (a host that also resolves to an internal address is refused)."""
    if not addresses:
        raise WebhookURLRefused(f"the host {host!r} has no address")
    for address in addresses:
        reason = refusal_reason(address, allow_private=allow_private)
        if reason is not None:
            where = "" if str(address) == host else f"the host {host!r} resolves to "
            raise WebhookURLRefused(f"{where}{reason}; webhooks go to public addresses only")
    return addresses[0]
