"""Per-API-key request rate limit: a token bucket per key, in this API process.

Each key gets a bucket of `rate_limit_per_minute` tokens that refills continuously at
limit/60 tokens per second; a request takes one token, and a request that finds the bucket
empty is a 429 `rate_limit_exceeded` with Retry-After (seconds until one token is back).
Every authenticated response carries OpenAI's headers: `x-ratelimit-limit-requests`,
`x-ratelimit-remaining-requests` and `x-ratelimit-reset-requests` (time until the bucket is
full again, e.g. `12ms`, `1.5s`, `6m0s`).

The buckets live in the memory of each API process (no network round trip per request). With
N uvicorn workers behind one port a key can therefore reach up to N x the limit; that is the
documented trade-off (operator guide). `rate_limit_per_minute <= 0` turns the limit off.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict

from app.domain.errors import RateLimited

# Buckets of idle keys are dropped (least recently used first) beyond this many: a dropped
# bucket was full anyway after a minute of idleness, so forgetting it changes nothing.
MAX_BUCKETS = 100_000
STATE_KEY = "ratelimit_headers"


def format_reset(seconds: float) -> str:
    """OpenAI's duration style: `0ms`, `250ms`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return f"{int(math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{round(seconds, 1):g}s"
    minutes, rest = divmod(int(math.ceil(seconds)), 60)
    return f"{minutes}m{rest}s"


class RateLimiter:
    def __init__(self, per_minute: int, *, clock=time.monotonic) -> None:  # noqa: ANN001
        self.capacity = float(per_minute)
        self.per_second = per_minute / 60.0
        self._clock = clock
        # key id -> (tokens, last refill time); a lock because sync routes run in threads.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def take(self, key: str) -> tuple[dict[str, str], int | None]:
        """Take one token for `key`: (response headers, None), or (headers, Retry-After
        seconds) when the bucket is empty."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.pop(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.per_second)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > MAX_BUCKETS:
                self._buckets.popitem(last=False)
        headers = {
            "x-ratelimit-limit-requests": str(int(self.capacity)),
            "x-ratelimit-remaining-requests": str(int(tokens)),
            "x-ratelimit-reset-requests": format_reset((self.capacity - tokens) / self.per_second),
        }
        if allowed:
            return headers, None
        return headers, max(1, math.ceil((1.0 - tokens) / self.per_second))


def enforce(limiter: RateLimiter | None, *, key: str, state) -> None:  # noqa: ANN001 - State
    """Take a token for `key`, leave the headers in the request state (the request-context
    middleware adds them to the response, whatever it is), raise 429 when none is left."""
    if limiter is None or not limiter.enabled:
        return
    headers, retry_after = limiter.take(key)
    setattr(state, STATE_KEY, headers)
    if retry_after is not None:
        raise RateLimited(
            f"Rate limit reached: {int(limiter.capacity)} requests per minute for this API "
            f"key. Retry after {retry_after} s.", retry_after_s=retry_after)


def response_headers(state: dict) -> list[tuple[bytes, bytes]]:
    """The rate-limit headers a request's authentication left in its ASGI scope state."""
    headers = state.get(STATE_KEY)
    if not headers:
        return []
    return [(k.encode(), v.encode()) for k, v in headers.items()]
