"""An ASGI guard in front of the service: bearer auth and JSON-only bodies, answered before parsing.

Health, metrics, docs and the schema stay open (the BentoML client reads /schema.json when it starts).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

OPEN_PATHS = frozenset({"/", "/docs", "/docs.json", "/schema.json", "/livez", "/readyz", "/healthz", "/metrics"})
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class GuardMiddleware:
    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], token: Callable[[], str | None]) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        expected = self.token()
        if expected:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, f"Bearer {expected}".encode()):
                await _answer(
                    send,
                    401,
                    "missing or wrong bearer token (header Authorization: Bearer <token>)",
                    extra=[(b"www-authenticate", b"Bearer")],
                )
                return
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        # A declared non-JSON body is refused here (a multipart body without a boundary makes BentoML
        # answer 500); no declared type at all is left to the JSON parser, which answers 400.
        if content_type and content_type != b"application/json":
            await _answer(send, 415, "the body must be JSON (Content-Type: application/json)")
            return
        await self.app(scope, receive, send)


async def _answer(send: Send, status: int, message: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
