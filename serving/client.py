"""An asynchronous client of the engine server, for the API process (torch-free: httpx only).

Every failure comes back as an EngineError carrying the engine's status and OpenAI's error
body; an engine that cannot be reached, or does not answer in time, is EngineUnavailable
(503 with Retry-After), never a hang.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from serving.errors import EngineError, EngineUnavailable, error_from_body
from serving.requests import AdapterSpec, Completion, GenerationRequest, Routing, StreamEvent


def _payload(model: Any) -> dict[str, Any]:
    if isinstance(model, dict):
        return model
    return model.model_dump(mode="json", exclude_unset=True)


class EngineClient:
    """``async with EngineClient("http://127.0.0.1:8100") as engine: ...``

    ``timeout`` bounds connecting and each read (a stream's gap between two tokens), not a
    whole generation.
    """

    def __init__(self, base_url: str, *, timeout: float = 60.0, connect_timeout: float = 2.0,
                 retry_after_s: int = 5, transport: httpx.AsyncBaseTransport | None = None):
        self.retry_after_s = retry_after_s
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), transport=transport,
            timeout=httpx.Timeout(timeout, connect=connect_timeout))

    async def __aenter__(self) -> EngineClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = await self._http.request(method, path, json=body)
        except httpx.TransportError as error:
            raise self._unreachable(error) from None
        if response.status_code >= 400:
            raise _error(response, response.content)
        return response.json()

    def _unreachable(self, error: Exception) -> EngineUnavailable:
        return EngineUnavailable(f"the inference engine is unavailable ({type(error).__name__})",
                                 retry_after_s=self.retry_after_s)

    async def health(self) -> dict[str, Any]:
        return await self._request("GET", "/health")

    async def adapters(self) -> dict[str, Any]:
        return await self._request("GET", "/adapters")

    async def load_adapter(self, spec: AdapterSpec | dict) -> dict[str, Any]:
        return await self._request("POST", "/adapters", _payload(spec))

    async def unload_adapter(self, adapter_id: str) -> dict[str, Any]:
        return await self._request("DELETE", f"/adapters/{adapter_id}")

    async def route(self, request: GenerationRequest | dict) -> Routing:
        return Routing.from_dict(await self._request("POST", "/route", _payload(request)))

    async def generate(self, request: GenerationRequest | dict) -> Completion:
        body = dict(_payload(request), stream=False)
        return Completion.from_dict(await self._request("POST", "/generate", body))

    async def stream(self, request: GenerationRequest | dict) -> AsyncIterator[StreamEvent]:
        """Events as the engine sends them; leaving the loop early closes the connection,
        which cancels the generation in the engine."""
        body = dict(_payload(request), stream=True)
        last = None
        try:
            async with self._http.stream("POST", "/generate", json=body) as response:
                if response.status_code >= 400:
                    raise _error(response, await response.aread())
                async for line in response.aiter_lines():
                    if last is not None or not line.startswith("data:"):
                        continue  # blank separators, keep-alive comments, the body's end
                    event = StreamEvent.from_dict(json.loads(line[5:].strip()))
                    if event.type in ("done", "error"):
                        # Held until the body has been read to its end, so the connection
                        # goes back to the pool (a response closed unread closes it, and
                        # every request would pay a new TCP connection).
                        last = event
                        continue
                    yield event
        except httpx.TransportError as error:
            if last is None:
                raise self._unreachable(error) from None
        if last is not None:
            yield last


def _error(response: httpx.Response, content: bytes) -> EngineError:
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    return error_from_body(response.status_code, body, dict(response.headers))
