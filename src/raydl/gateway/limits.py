"""Request limits: a body-size cap (413, checked on the declared length and on the bytes as they
arrive) and a per-token rate limit (token bucket; 429 with Retry-After)."""

from __future__ import annotations

import json
import threading
import time


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` is answered 413 before the app reads it all."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._too_large(send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge
            return message

        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracking_send)
        except _TooLarge:
            if not started:
                await self._too_large(send)

    async def _too_large(self, send) -> None:
        body = json.dumps({"detail": f"request body too large: at most {self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class RateLimiter:
    """A token bucket per key: `burst` at once, refilled at `per_minute` / 60 a second."""

    def __init__(self, per_minute: float, burst: int) -> None:
        self.rate, self.burst = per_minute / 60.0, float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 when allowed, else the seconds to wait."""
        now = time.monotonic()
        with self._lock:
            level, then = self._buckets.get(key, (self.burst, now))
            level = min(self.burst, level + (now - then) * self.rate)
            if level >= 1:
                self._buckets[key] = (level - 1, now)
                return 0.0
            self._buckets[key] = (level, now)
            return (1 - level) / self.rate


class FailedAuth:
    """Failed authentications per client address: after `burst` in a row (refilled at `per_minute`),
    the address waits before its next token is even hashed (429)."""

    def __init__(self, per_minute: float = 30, burst: int = 20) -> None:
        self.bucket = RateLimiter(per_minute, burst)
        self._until: dict[str, float] = {}

    def blocked(self, key: str) -> float:
        return max(0.0, self._until.get(key, 0.0) - time.monotonic())

    def failed(self, key: str) -> None:
        wait = self.bucket.take(key)
        if wait:
            self._until[key] = time.monotonic() + wait
