"""An ASGI guard in front of the service: bearer auth, JSON-only bodies and unknown paths, answered before
parsing and before BentoML's own metrics see them.

Health, metrics, docs and the schema stay open (the BentoML client reads /schema.json when it starts). A path
that is no route of the service gets its 404 here: BentoML labels its request metrics by the raw path, so
every unknown path would add a series to ``/metrics`` (2,000 of them grew it from 186 KB to 10 MB, with the
paths, and whatever a caller put in them, readable by anyone).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

OPEN_PATHS = frozenset({"/", "/docs", "/docs.json", "/schema.json", "/livez", "/readyz", "/healthz", "/metrics"})
OPEN_PREFIXES = ("/static_content/",)  # the Swagger page's own files
UNKNOWN_PATH = "/{unknown}"  # the one label every path that is no route shares
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def is_known(path: str, routes: frozenset[str]) -> bool:
    return path in OPEN_PATHS or path in routes or path.startswith(OPEN_PREFIXES)


class PathBucket:
    """Outermost of all: a path that is no route is renamed ``UNKNOWN_PATH`` before BentoML's metrics, tracing
    and access log see it (they label by the raw path), and its query string is dropped."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], routes: frozenset[str]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not is_known(scope["path"], self.routes):
            scope = {**scope, "path": UNKNOWN_PATH, "raw_path": UNKNOWN_PATH.encode(), "query_string": b""}
        await self.app(scope, receive, send)


def bucket_unknown_paths(routes: frozenset[str]) -> None:
    """Put ``PathBucket`` in front of BentoML's own middlewares (once per process).

    BentoML 1.4 offers no hook outside its metrics middleware (``add_asgi_middleware`` lands inside it), so
    the app factory's middleware list is extended; pinned with bentoml==1.4.39 and covered by a test."""
    from _bentoml_impl.server.app import ServiceAppFactory
    from starlette.middleware import Middleware

    if getattr(ServiceAppFactory, "_paths_bucketed", False):
        return
    original = ServiceAppFactory.middlewares

    def middlewares(self: Any) -> list[Any]:
        return [Middleware(PathBucket, routes=routes), *original.fget(self)]

    ServiceAppFactory.middlewares = property(middlewares)
    ServiceAppFactory._paths_bucketed = True


class GuardMiddleware:
    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        token: Callable[[], str | None],
        routes: frozenset[str] = frozenset(),
        protect_metrics: Callable[[], bool] = lambda: False,
    ) -> None:
        self.app = app
        self.token = token
        self.routes = routes  # the service's API routes
        self.protect_metrics = protect_metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if not is_known(path, self.routes):
            await _answer(send, 404, "no such endpoint: see /docs.json for the service's API")
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if path == "/metrics" and self.protect_metrics():
            if not self._authorised(headers):
                await _unauthorised(send)
                return
            await self.app(scope, receive, send)
            return
        if path in OPEN_PATHS or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if not self._authorised(headers):
            await _unauthorised(send)
            return
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        # A declared non-JSON body is refused here (a multipart body without a boundary makes BentoML
        # answer 500); no declared type at all is left to the JSON parser, which answers 400.
        if content_type and content_type != b"application/json":
            await _answer(send, 415, "the body must be JSON (Content-Type: application/json)")
            return
        await self.app(scope, receive, send)


    def _authorised(self, headers: dict[bytes, bytes]) -> bool:
        expected = self.token()
        if not expected:
            return True
        return hmac.compare_digest(headers.get(b"authorization", b""), f"Bearer {expected}".encode())


async def _unauthorised(send: Send) -> None:
    message = "missing or wrong bearer token (header Authorization: Bearer <token>)"
    await _answer(send, 401, message, extra=[(b"www-authenticate", b"Bearer")])


async def _answer(send: Send, status: int, message: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
