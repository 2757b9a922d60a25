"""An ASGI guard in front of the service: bearer auth, JSON-only bodies, body size and read time, and unknown
paths, answered before parsing and before BentoML's own metrics see them.

Health, metrics, docs and the schema stay open (the BentoML client reads /schema.json when it starts). A path
that is no route of the service gets its 404 here: BentoML labels its request metrics by the raw path, so
every unknown path would add a series to ``/metrics`` (2,000 of them grew it from 186 KB to 10 MB, with the
paths, and whatever a caller put in them, readable by anyone).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class BodyLimits:
    max_bytes: int = 32 * 2**20
    idle_timeout_s: float = 10.0  # the longest pause between two parts of a body


class GuardMiddleware:
    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        token: Callable[[], str | None],
        routes: frozenset[str] = frozenset(),
        protect_metrics: Callable[[], bool] = lambda: False,
        responses: dict[str, dict[int, str]] | None = None,
        limits: Callable[[], BodyLimits] = BodyLimits,
        spec: Callable[[dict[str, Any]], dict[str, Any]] = lambda spec: spec,
    ) -> None:
        self.app = app
        self.token = token
        self.routes = routes  # the service's API routes
        self.protect_metrics = protect_metrics
        self.limits = limits
        self.spec = spec  # the routes' own corrections of BentoML's spec
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
        body = await self._read_body(headers, receive, send)
        if body is None:
            return
        await self.app(scope, _replay(body, receive), _plain_errors(send))

    async def _read_body(self, headers: dict[bytes, bytes], receive: Receive, send: Send) -> bytes | None:
        """The whole body, read here within the limits (None: refused, the answer sent): BentoML would read
        and parse any size (a 200 MB body before its 400) and wait for a half-sent body for ever."""
        limits = self.limits()
        too_large = f"the body is larger than the limit of {limits.max_bytes:,} bytes (PREDICTOR_SERVICE__MAX_BODY_MB)"
        declared = headers.get(b"content-length", b"").strip()
        if declared.isdigit() and int(declared) > limits.max_bytes:
            await _answer(send, 413, too_large, close=True)
            return None
        parts: list[bytes] = []
        size = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=limits.idle_timeout_s)
            except TimeoutError:
                pause = limits.idle_timeout_s
                stalled = f"the body stopped arriving for {pause:g} s (PREDICTOR_SERVICE__BODY_TIMEOUT_S)"
                await _answer(send, 408, stalled, close=True)
                return None
            if message["type"] == "http.disconnect":
                return None  # the caller left: nobody to answer
            part = message.get("body", b"")
            size += len(part)
            if size > limits.max_bytes:
                await _answer(send, 413, too_large, close=True)
                return None
            parts.append(part)
            if not message.get("more_body", False):
                return b"".join(parts)

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
        spec = document(self.spec(json.loads(b"".join(chunks))), self.routes, self.responses, bool(self.token()))
        body = json.dumps(spec).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def _authorised(self, headers: dict[bytes, bytes]) -> bool:
        expected = self.token()
        if not expected:
            return True
        return hmac.compare_digest(headers.get(b"authorization", b""), f"Bearer {expected}".encode())


ERROR_BODY = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
FIELD_ERROR = {
    "type": "object",
    "required": ["field", "message", "type"],
    "properties": {
        "field": {"type": "string", "description": "The field, dotted for nested ones (body: the whole body)."},
        "message": {"type": "string"},
        "type": {"type": "string", "description": "pydantic's error type, e.g. missing, string_pattern_mismatch."},
    },
}
BAD_REQUEST_BODY = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "What was wrong, naming the fields."},
        "detail": {"type": "array", "items": FIELD_ERROR, "description": "One entry per invalid field."},
    },
}


def plain_error(body: Any) -> dict[str, Any]:
    """A 400 body as the spec documents it: the fields and what is wrong with each, no input values, no
    internal class names (BentoML says "7 validation error for ContactInIODescriptor")."""
    if isinstance(body, list) and len(body) == 1:  # BentoML's own exceptions: a list of one
        body = body[0]
    if not isinstance(body, dict):
        return {"error": "bad request"}
    detail = body.get("detail")
    if isinstance(detail, list):
        errors = [
            {
                "field": ".".join(str(part) for part in error.get("loc", ())) or "body",
                "message": str(error.get("msg", "invalid")),
                "type": str(error.get("type", "invalid")),
            }
            for error in detail
            if isinstance(error, dict)
        ]
        fields = ", ".join(dict.fromkeys(f"{e['field']} ({e['message']})" for e in errors))
        return {"error": f"{len(errors)} invalid field(s): {fields}", "detail": errors}
    return {"error": str(body.get("error", "bad request")).replace("IODescriptor", "")}


def _plain_errors(send: Send) -> Send:
    """``send`` with every 400 body rewritten by ``plain_error``."""
    start: dict[str, Any] | None = None
    parts: list[bytes] = []

    async def rewriting(message: dict[str, Any]) -> None:
        nonlocal start
        if message["type"] == "http.response.start" and message.get("status") == 400:
            start = message
            return
        if start is None:
            await send(message)
            return
        parts.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        try:
            body = plain_error(json.loads(b"".join(parts)))
        except ValueError:
            body = {"error": "bad request"}
        encoded = json.dumps(body).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-length", b"content-type")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(encoded)).encode())]
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": encoded})

    return rewriting


def document(
    spec: dict[str, Any], routes: frozenset[str], responses: dict[str, dict[int, str]], token: bool
) -> dict[str, Any]:
    """Add the guard's own answers (401 with a token set, 408, 413, 415, its 400 body) and each route's extra
    ones to the spec."""
    spec.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "PREDICTOR_API_TOKEN (required on the scoring routes when it is set)",
    }
    for route in routes:
        operation = spec.get("paths", {}).get(route, {}).get("post")
        if operation is None:
            continue
        operation["responses"]["400"] = {
            "description": "The body is not valid JSON, or fields are invalid (each named in detail).",
            "content": {"application/json": {"schema": BAD_REQUEST_BODY}},
        }
        extra = {
            408: "The body (or the request headers) did not arrive in time.",
            413: "The body is larger than the service's limit (named in the error).",
            415: "The body is not JSON (Content-Type must be application/json).",
        }
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


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body already read, as the app's ``receive``; after it, whatever the connection says next."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _answer(
    send: Send, status: int, message: str, extra: list[tuple[bytes, bytes]] | None = None, close: bool = False
) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]
    if close:  # the rest of the body is not read: the connection cannot carry another request
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b'content-length: 56\r\n\r\n{"error": "the request headers did not arrive in time"}\n'
)


def bound_header_time(seconds: float) -> None:
    """Close a connection whose request headers have not all arrived ``seconds`` after it opened (or after
    its previous response): uvicorn waits for half-sent headers for ever, a slot held per connection.

    uvicorn has no such setting; its h11 protocol is extended (and made the one "auto" picks, so an installed
    httptools does not bypass it). Pinned with uvicorn as BentoML 1.4.39 installs it, covered by a test."""
    import h11
    from uvicorn.protocols.http import auto, h11_impl

    protocol = h11_impl.H11Protocol
    auto.AutoHTTPProtocol = protocol
    if getattr(protocol, "_header_seconds", None) is not None:
        protocol._header_seconds = seconds
        return
    protocol._header_seconds = seconds
    made, received, lost = protocol.connection_made, protocol.data_received, protocol.connection_lost

    def expire(self: Any) -> None:
        self._header_timer = None
        if self.conn.their_state == h11.IDLE and not self.transport.is_closing():
            self.transport.write(TIMEOUT_RESPONSE)
            self.transport.close()

    def arm(self: Any) -> None:
        if getattr(self, "_header_timer", None) is None:
            self._header_timer = self.loop.call_later(protocol._header_seconds, expire, self)

    def disarm(self: Any) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def connection_made(self: Any, transport: Any) -> None:
        made(self, transport)
        arm(self)

    def data_received(self: Any, data: bytes) -> None:
        received(self, data)
        # h11 stays IDLE until a request's headers are complete; then the body's own timeout takes over.
        if self.conn.their_state == h11.IDLE:
            arm(self)
        else:
            disarm(self)

    def connection_lost(self: Any, exc: Exception | None) -> None:
        disarm(self)
        lost(self, exc)

    protocol.connection_made, protocol.data_received, protocol.connection_lost = (
        connection_made,
        data_received,
        connection_lost,
    )
