"""One webhook attempt over HTTP: resolve the host, check every address, connect to the
address that was checked, send the signed body, keep a short excerpt of the answer.

Pinning the checked address is what defeats DNS rebinding: the request goes to
``https://<checked ip>:<port>/path`` with the original host in the ``Host`` header and as
the TLS server name (httpcore's ``sni_hostname`` extension), so the certificate is still
verified for the registered host name while no second DNS lookup can swap the address.
Redirects are never followed (a 3xx is a failed attempt), proxies from the environment are
ignored, the answer is read raw (no decompression) and only up to ``EXCERPT_BYTES``, and one
deadline bounds the whole attempt: resolution, connection, TLS, upload and the excerpt.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from app.domain.webhook_urls import (
    Address,
    WebhookTarget,
    WebhookURLRefused,
    check_addresses,
    parse_webhook_url,
)
from app.domain.webhooks import EXCERPT_BYTES, response_excerpt

USER_AGENT = "crma-webhooks/1"
Resolver = Callable[[str, int], Awaitable[list[Address]]]


@dataclass(frozen=True)
class AttemptResult:
    """What one attempt got: an HTTP status and an excerpt of the body, or an error saying
    why there was no answer (refused address, DNS, connection, TLS, timeout)."""

    status_code: int | None
    excerpt: str
    error: str | None
    address: str | None
    duration_ms: int

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


async def resolve_host(host: str, port: int) -> list[Address]:
    """Every address ``host`` resolves to, in the resolver's order, without duplicates."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[Address] = []
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


async def checked_address(target: WebhookTarget, *, allow_private: bool,
                          resolve: Resolver = resolve_host) -> Address:
    """The address to connect to for ``target``; raises ``WebhookURLRefused`` (with the
    reason) when the host does not resolve or any of its addresses is refused."""
    literal = target.literal_address()
    if literal is not None:
        addresses = [literal]
    else:
        try:
            addresses = await resolve(target.host, target.port)
        except (socket.gaierror, UnicodeError) as exc:
            raise WebhookURLRefused(f"the host {target.host!r} does not resolve ({exc})") \
                from None
    return check_addresses(addresses, host=target.host, allow_private=allow_private)


async def check_url(url: str, *, allow_private: bool,
                    resolve: Resolver = resolve_host) -> WebhookTarget:
    """Registration's check: the URL's form and every address its host resolves to now."""
    target = parse_webhook_url(url, allow_private=allow_private)
    await checked_address(target, allow_private=allow_private, resolve=resolve)
    return target


def make_client(*, verify: ssl.SSLContext | bool = True) -> httpx.AsyncClient:
    """The client deliveries share. No keep-alive: a pooled connection is keyed by address,
    and a TLS session verified for one host name must never carry another host's request."""
    return httpx.AsyncClient(
        follow_redirects=False, trust_env=False, verify=verify,
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=0),
        headers={"user-agent": USER_AGENT, "accept-encoding": "identity"})


async def send_attempt(client: httpx.AsyncClient, *, url: str, body: bytes,
                       headers: dict[str, str], timeout_s: float, allow_private: bool,
                       resolve: Resolver = resolve_host) -> AttemptResult:
    """POST ``body`` to ``url`` once, within ``timeout_s`` in all; never raises for network
    trouble (it is the attempt's result)."""
    started = time.monotonic()
    address: Address | None = None
    status: int | None = None
    excerpt, error = "", None
    try:
        async with asyncio.timeout(timeout_s):
            target = parse_webhook_url(url, allow_private=allow_private)
            address = await checked_address(target, allow_private=allow_private,
                                            resolve=resolve)
            status, excerpt = await _post(client, target, address, body, headers, timeout_s)
    except WebhookURLRefused as exc:
        error = f"refused: {exc}"
    except TimeoutError:
        error = f"no answer within {timeout_s:g} s"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
    return AttemptResult(status_code=status, excerpt=excerpt, error=error,
                         address=str(address) if address is not None else None,
                         duration_ms=int((time.monotonic() - started) * 1000))


async def _post(client: httpx.AsyncClient, target: WebhookTarget, address: Address,
                body: bytes, headers: dict[str, str], timeout_s: float) -> tuple[int, str]:
    pinned = httpx.URL(scheme=target.scheme, host=str(address), port=target.port,
                       raw_path=target.target.encode("ascii", errors="strict"))
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    request = client.build_request(
        "POST", pinned, content=body, headers={**headers, "host": target.host_header},
        timeout=httpx.Timeout(timeout_s), extensions=extensions)
    response = await client.send(request, stream=True)
    try:
        raw = b""
        async for chunk in response.aiter_raw():
            raw += chunk
            if len(raw) >= EXCERPT_BYTES:
                break
    finally:
        await response.aclose()
    excerpt = response_excerpt(raw)
    if response.is_redirect:
        location = response.headers.get("location", "")
        excerpt = f"redirect not followed (Location: {location[:200]})" + \
            (f"; {excerpt}" if excerpt else "")
    return response.status_code, excerpt
