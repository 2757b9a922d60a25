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
        responses: dict[str, dict[int, str]] | None = None,
    ) -> None:
        self.app = app
        self.token = token
        self.routes = routes  # the service's API routes
        self.protect_metrics = protect_metrics
        # Answers a route gives that BentoML's spec does not list (it knows only 200, 400, 404 and 500).
        self.responses = responses or {}

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
        if path == "/docs.json" and scope["method"] == "GET":
            await self._documented_spec(scope, receive, send)
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

    async def _documented_spec(self, scope: Scope, receive: Receive, send: Send) -> None:
        """BentoML's OpenAPI spec with what this guard and the routes also answer, and the bearer scheme."""
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            else:
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        if start.get("status") != 200:
            await send(start)
            await send({"type": "http.response.body", "body": b"".join(chunks)})
            return
        spec = document(json.loads(b"".join(chunks)), self.routes, self.responses, bool(self.token()))
        body = json.dumps(spec).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def _authorised(self, headers: dict[bytes, bytes]) -> bool:
        expected = self.token()
        if not expected:
            return True
        return hmac.compare_digest(headers.get(b"authorization", b""), f"Bearer {expected}".encode())


ERROR_BODY = {"type": "object", "properties": {"error": {"type": "string"}}}


def document(
    spec: dict[str, Any], routes: frozenset[str], responses: dict[str, dict[int, str]], token: bool
) -> dict[str, Any]:
    """Add the guard's own answers (401 with a token set, 415) and each route's extra ones to the spec."""
    spec.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "PREDICTOR_API_TOKEN (required on the scoring routes when it is set)",
    }
    for route in routes:
        operation = spec.get("paths", {}).get(route, {}).get("post")
        if operation is None:
            continue
        extra = {415: "The body is not JSON (Content-Type must be application/json)."}
        if token:
            extra[401] = "Missing or wrong bearer token."
            operation["security"] = [{"bearer": []}]
        extra |= responses.get(route, {})
        for status, description in extra.items():
            operation["responses"].setdefault(
                str(status), {"description": description, "content": {"application/json": {"schema": ERROR_BODY}}}
            )
    return spec


async def _unauthorised(send: Send) -> None:
    message = "missing or wrong bearer token (header Authorization: Bearer <token>)"
    await _answer(send, 401, message, extra=[(b"www-authenticate", b"Bearer")])


async def _answer(send: Send, status: int, message: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
