"""One generation's events, handed from the engine thread to a consumer that is either a
thread (iterate it) or a coroutine (``async for``); ``cancel`` stops the generation at the
next step and frees its slot."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator

from serving.errors import EngineError
from serving.requests import Completion, StreamEvent


class GenerationStream:
    def __init__(self, request_id: str | None = None):
        self.request_id = request_id
        self._events: deque[StreamEvent] = deque()
        self._cond = threading.Condition()
        self._waker: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        self._cancelled = threading.Event()
        self.finished = False

    # -- the engine side ---------------------------------------------------------------------
    def put(self, event: StreamEvent) -> None:
        with self._cond:
            if self.finished:
                return
            self._events.append(event)
            if event.type in ("done", "error"):
                self.finished = True
            self._cond.notify_all()
            waker = self._waker
        if waker is not None:
            loop, ready = waker
            try:
                loop.call_soon_threadsafe(ready.set)
            except RuntimeError:  # the consumer's loop is closed: nobody is listening
                self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    # -- the consumer side -------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop generating (a client went away); the engine frees the slot at its next step."""
        self._cancelled.set()

    def __iter__(self) -> Iterator[StreamEvent]:
        while True:
            with self._cond:
                while not self._events:
                    self._cond.wait()
                event = self._events.popleft()
            yield event
            if event.type in ("done", "error"):
                return

    async def __aiter__(self) -> AsyncIterator[StreamEvent]:
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        with self._cond:
            self._waker = (loop, ready)
        try:
            while True:
                with self._cond:
                    event = self._events.popleft() if self._events else None
                    if event is None:
                        ready.clear()
                if event is None:
                    await ready.wait()
                    continue
                yield event
                if event.type in ("done", "error"):
                    return
        finally:
            with self._cond:
                self._waker = None

    def result(self) -> Completion:
        """Wait for the end and return the whole generation (raises the engine's error)."""
        return collect(iter(self))

    async def aresult(self) -> Completion:
        parts: list[str] = []
        async for event in self:
            if (done := _fold(event, parts)) is not None:
                return done
        raise EngineError("the generation ended without a result")


def _fold(event: StreamEvent, parts: list[str]) -> Completion | None:
    """Add one event to the text so far; the Completion once the "done" event arrives."""
    if event.type == "error":
        raise event.error if isinstance(event.error, Exception) else EngineError(str(event.error))
    if event.type == "delta":
        parts.append(event.text)
    if event.type != "done":
        return None
    return Completion(text="".join(parts), finish_reason=event.finish_reason or "stop",
                      usage=event.usage, adapter=event.adapter, domain=event.domain,
                      routing=event.routing, timing=event.timing)


def collect(events: Iterator[StreamEvent]) -> Completion:
    parts: list[str] = []
    for event in events:
        if (done := _fold(event, parts)) is not None:
            return done
    raise EngineError("the generation ended without a result")
