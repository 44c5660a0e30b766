"""One webhook attempt (app/services/webhook_sender.py) against a real local receiver: the
signed body arrives, redirects are not followed, slow receivers time out, only an excerpt
of the answer is read, and the request goes to the address that was checked (TLS still
verified for the host name), so DNS rebinding cannot reach an internal address."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl

import pytest
import trustme
from standardwebhooks import Webhook

from app.domain import webhooks
from app.domain.webhook_urls import WebhookURLRefused
from app.services.webhook_sender import check_url, make_client, send_attempt
from tests.app.webhooks.receiver import Receiver, Reply

HOST = "hooks.example.test"


def run(coro):
    return asyncio.run(coro)


def signed(secret: str, event_id: str = "evt-test"):
    body = webhooks.event_body(event_id=event_id, type=webhooks.JOB_SUCCEEDED,
                               created_at=1719168000, data={"id": "ftjob-abc"})
    return body, webhooks.signed_headers(secret=secret, event_id=event_id, body=body)


def static_resolver(*answers: list[str]):
    """Answers one list of addresses per call (the last one repeats), counting calls."""
    calls = []

    async def resolve(host: str, port: int):
        calls.append(host)
        addresses = answers[min(len(calls), len(answers)) - 1]
        return [ipaddress.ip_address(a) for a in addresses]

    resolve.calls = calls
    return resolve


async def attempt(url: str, body: bytes, headers: dict, *, timeout_s: float = 5.0,
                  allow_private: bool = True, resolve=None, verify=True):
    kwargs = {"resolve": resolve} if resolve is not None else {}
    async with make_client(verify=verify) as client:
        return await send_attempt(client, url=url, body=body, headers=headers,
                                  timeout_s=timeout_s, allow_private=allow_private, **kwargs)


def test_delivers_a_verifiable_event_to_a_local_receiver():
    secret = webhooks.new_secret()
    body, headers = signed(secret)
    with Receiver() as receiver:
        receiver.replies.append(Reply(200, b'{"received": true}'))
        result = run(attempt(receiver.url + "/hook?src=crma", body, headers))
        [request] = receiver.wait_for(1)
    assert result.succeeded and result.status_code == 200 and result.error is None
    assert result.excerpt == '{"received": true}' and result.address == "127.0.0.1"
    assert request.path == "/hook?src=crma" and request.body == body
    assert request.headers["host"] == f"127.0.0.1:{receiver.port}"
    assert request.headers["user-agent"].startswith("crma-webhooks/")
    assert Webhook(secret).verify(request.body, request.headers)["data"] == {"id": "ftjob-abc"}


@pytest.mark.parametrize("status", [500, 404, 410])
def test_an_error_status_is_a_failed_attempt_with_an_excerpt(status):
    body, headers = signed(webhooks.new_secret())
    with Receiver() as receiver:
        receiver.replies.append(Reply(status, b"E" * 10_000))
        result = run(attempt(receiver.url, body, headers))
    assert not result.succeeded and result.status_code == status and result.error is None
    assert result.excerpt == "E" * webhooks.EXCERPT_BYTES


def test_redirects_are_not_followed():
    body, headers = signed(webhooks.new_secret())
    with Receiver() as target, Receiver() as receiver:
        receiver.replies.append(Reply(307, b"", headers={"location": target.url + "/stolen"}))
        result = run(attempt(receiver.url, body, headers))
        assert not target.requests
    assert not result.succeeded and result.status_code == 307
    assert "redirect not followed" in result.excerpt and "/stolen" in result.excerpt


def test_a_slow_receiver_times_out():
    body, headers = signed(webhooks.new_secret())
    with Receiver() as receiver:
        receiver.replies.append(Reply(200, b"late", delay_s=3.0))
        result = run(attempt(receiver.url, body, headers, timeout_s=0.5))
    assert not result.succeeded and result.status_code is None
    assert "0.5 s" in result.error or "Timeout" in result.error


def test_a_receiver_that_is_down_is_a_connection_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connection refused
        body, headers = signed(webhooks.new_secret())
        result = run(attempt(f"http://127.0.0.1:{port}/", body, headers))
    assert result.status_code is None and "ConnectError" in result.error


def test_loopback_and_metadata_are_refused_outside_dev():
    body, headers = signed(webhooks.new_secret())
    with Receiver() as receiver:
        https_loopback = receiver.url.replace("http://", "https://")
        result = run(attempt(https_loopback, body, headers, allow_private=False))
        assert result.error.startswith("refused:") and "loopback" in result.error
        result = run(attempt("https://169.254.169.254/latest/meta-data/", body, headers,
                             allow_private=True))
        assert result.error.startswith("refused:") and "link-local" in result.error
        assert not receiver.requests


def test_tls_is_verified_for_the_host_name_while_connecting_to_the_checked_address():
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    secret = webhooks.new_secret()
    body, headers = signed(secret)
    with Receiver(tls=server_context) as receiver:
        url = f"https://{HOST}:{receiver.port}/hook"
        resolve = static_resolver(["127.0.0.1"])
        result = run(attempt(url, body, headers, resolve=resolve, verify=client_context))
        [request] = receiver.wait_for(1)
        assert result.succeeded, result
        assert request.headers["host"] == f"{HOST}:{receiver.port}"
        Webhook(secret).verify(request.body, request.headers)
        # The same address under another name: the certificate does not match, no delivery.
        other = run(attempt(f"https://other.example.test:{receiver.port}/hook", body, headers,
                            resolve=resolve, verify=client_context))
        assert other.status_code is None and "certificate" in other.error.lower()
        assert len(receiver.requests) == 1


def test_dns_rebinding_cannot_swap_the_address():
    """Registration saw a public address; at delivery the name points at loopback: refused
    (the check runs at every delivery, and only the checked address is connected to)."""
    resolve = static_resolver(["93.184.215.14"], ["127.0.0.1"])
    target = run(check_url(f"https://{HOST}/hook", allow_private=False, resolve=resolve))
    assert target.host == HOST
    body, headers = signed(webhooks.new_secret())
    result = run(attempt(f"https://{HOST}/hook", body, headers, allow_private=False,
                         resolve=resolve))
    assert result.status_code is None and result.address is None
    assert "resolves to 127.0.0.1 is a loopback address" in result.error
    assert len(resolve.calls) == 2


def test_registration_check_names_the_reason():
    with pytest.raises(WebhookURLRefused, match="resolves to 10.0.0.7 is a private address"):
        run(check_url(f"https://{HOST}/", allow_private=False,
                      resolve=static_resolver(["93.184.215.14", "10.0.0.7"])))
    with pytest.raises(WebhookURLRefused, match="169.254.169.254 is link-local"):
        run(check_url("https://169.254.169.254/", allow_private=False))
    with pytest.raises(WebhookURLRefused, match="127.0.0.1 is a loopback address"):
        run(check_url("https://127.0.0.1:8443/", allow_private=False))
    with pytest.raises(WebhookURLRefused, match="does not resolve"):
        run(check_url("https://no-such-host.invalid/", allow_private=False))
    assert run(check_url("http://127.0.0.1:9/", allow_private=True)).port == 9
