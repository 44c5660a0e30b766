"""The engine's adapters in memory: least recently used first out, bounded by a count and a
byte budget. Adapters in use (pinned by a queued or running generation) are never evicted;
when nothing can be evicted to make room, the load is refused as busy (503, retry later)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from serving.adapters import LoadedAdapter
from serving.errors import AdapterIncompatible, AdapterNotFound, EngineBusy
from serving.requests import AdapterSpec


class AdapterCache:
    """Thread-safe LRU of LoadedAdapter by id.

    ``load(spec)`` reads an adapter (in the calling thread, outside the lock; concurrent
    requests for one cold id load it once). ``on_evict(adapter)`` is told of every adapter
    leaving the cache, so the engine can unmerge it on its own thread.
    """

    def __init__(self, *, max_count: int, max_bytes: int,
                 load: Callable[[AdapterSpec], LoadedAdapter],
                 on_evict: Callable[[LoadedAdapter], None]):
        if max_count < 1 or max_bytes < 1:
            raise ValueError("the adapter cache needs room for at least one adapter")
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._load = load
        self._on_evict = on_evict
        self._items: OrderedDict[str, LoadedAdapter] = OrderedDict()
        self._pins: dict[str, int] = {}
        self._loading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def acquire(self, spec: AdapterSpec) -> tuple[LoadedAdapter, bool]:
        """The adapter for ``spec``, pinned (call ``release`` when done); True if it was cold."""
        with self._lock:
            gate = self._loading.setdefault(spec.id, threading.Lock())
        with gate:
            with self._lock:
                adapter = self._items.get(spec.id)
                if adapter is not None:
                    self._items.move_to_end(spec.id)
                    self._pins[spec.id] = self._pins.get(spec.id, 0) + 1
                    self.hits += 1
                    return adapter, False
            adapter = self._load(spec)
            with self._lock:
                existing = self._items.get(spec.id)
                if existing is None:
                    self._admit(adapter)
                else:  # loaded meanwhile through another gate
                    adapter = existing
                self._pins[spec.id] = self._pins.get(spec.id, 0) + 1
                self.misses += 1
            return adapter, True

    def release(self, adapter: LoadedAdapter) -> None:
        with self._lock:
            count = self._pins.get(adapter.id, 0) - 1
            if count > 0:
                self._pins[adapter.id] = count
            else:
                self._pins.pop(adapter.id, None)

    def _admit(self, adapter: LoadedAdapter) -> None:
        if adapter.nbytes > self.max_bytes:
            raise AdapterIncompatible(
                f"adapter {adapter.id!r} needs {adapter.nbytes} bytes; this engine's adapter "
                f"budget is {self.max_bytes}", param="adapter")
        evicted = []
        while len(self._items) >= self.max_count or \
                self._bytes() + adapter.nbytes > self.max_bytes:
            victim = next((key for key in self._items if not self._pins.get(key)), None)
            if victim is None:
                for item in reversed(evicted):  # put back what this load pushed out, in order
                    self._items[item.id] = item
                    self._items.move_to_end(item.id, last=False)
                raise EngineBusy("every cached adapter is in use and another one does not fit; "
                                 "retry shortly", retry_after_s=2)
            evicted.append(self._items.pop(victim))
        self._items[adapter.id] = adapter
        for item in evicted:
            self._on_evict(item)

    def remove(self, adapter_id: str) -> LoadedAdapter:
        """Drop an adapter (even a pinned one: running generations keep their reference)."""
        with self._lock:
            adapter = self._items.pop(adapter_id, None)
        if adapter is None:
            raise AdapterNotFound(f"no adapter {adapter_id!r} is loaded", param="adapter_id")
        self._on_evict(adapter)
        return adapter

    def get(self, adapter_id: str) -> LoadedAdapter | None:
        with self._lock:
            return self._items.get(adapter_id)

    def _bytes(self) -> int:
        return sum(item.nbytes for item in self._items.values())

    def snapshot(self) -> dict:
        with self._lock:
            items = [dict(item.info(), in_use=self._pins.get(item.id, 0))
                     for item in reversed(self._items.values())]
            return {"count": len(items), "bytes": self._bytes(), "max_count": self.max_count,
                    "max_bytes": self.max_bytes, "hits": self.hits, "misses": self.misses,
                    "adapters": items}
