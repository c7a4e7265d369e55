"""The router's aiohttp app: OpenAI-compatible endpoints, load shedding, probes, metrics and the playground.

Routes: `POST /v1/chat/completions` (JSON or SSE), `GET /v1/models`, `GET /openapi.json`, `GET /healthz`,
`GET /readyz`, `GET /metrics`, and the playground at `GET /` (static files, no CDN: clusters may be offline)
with `GET /v1/playground` and `POST /v1/playground/export` (edited runs: `kubemoe.router.playground`).

Error handling has one boundary: every `RouterError` becomes an OpenAI error body in `_error_middleware`. Once an
SSE response has started, the status line is already sent, so an error is written as a last
`data: {"error": ...}` event instead (the `openai` client raises it as `APIError`), without `[DONE]`.

Streaming without the trace extension sends headers only when the aggregator's first chunk arrives. A proposer
failure therefore still gets a real HTTP status. With the trace extension, headers go out at once so that
agent answers can stream while later layers run.

Client disconnects: the app must run with `handler_cancellation=True` (`process.run_router` does). aiohttp then
cancels the handler when the connection drops, and the pipeline's `finally` blocks cancel every upstream call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from kubemoe.router.api import CompletionIds, sse
from kubemoe.router.auth import ClientKeys
from kubemoe.router.buckets import Buckets
from kubemoe.router.config import RouterConfig
from kubemoe.router.errors import (
    ModelNotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    RequestError,
    RequestTimeoutError,
    RouterError,
)
from kubemoe.router.http1 import HttpClient
from kubemoe.router.metrics import CONTENT_TYPE, RouterMetrics
from kubemoe.router.pipeline import ChatBackend, PipelineObserver, PipelineRun
from kubemoe.router.playground import (
    EditedRunObserver,
    alone_config,
    describe,
    edited_config,
    export_manifest,
)
from kubemoe.router.request import ChatRequest, openapi_document, parse_chat_request
from kubemoe.router.upstream import HttpBackend, build_session

log = logging.getLogger("kubemoe.router")

STATIC_DIR = Path(__file__).parent / "static"
CHAT_PATH = "/v1/chat/completions"
#: The playground talks only to this origin, loads nothing from elsewhere and cannot be framed.
_PLAYGROUND_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass
class RouterState:
    """Mutable per-app state (the app itself is frozen once it runs)."""

    backend: ChatBackend | None = None
    #: The shared upstream session (an edited run builds its own HttpBackend over it).
    session: HttpClient | None = None
    ready: bool = False
    in_flight: int = 0
    started: int = 0


CONFIG = web.AppKey("config", RouterConfig)
KEYS = web.AppKey("keys", ClientKeys)
#: The authenticated client key's name on a request (absent with auth off).
KEY_NAME = web.RequestKey("key_name", str)
METRICS = web.AppKey("metrics", RouterMetrics)
STATE = web.AppKey("state", RouterState)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error_response(err: RouterError) -> web.Response:
    return web.json_response(err.to_body(), status=err.status, headers=err.headers())


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """RouterError -> OpenAI error body; unknown /v1 routes get OpenAI-shaped 404/405 too."""
    try:
        return await handler(request)
    except RouterError as err:
        return _error_response(err)
    except web.HTTPException as exc:
        if not request.path.startswith("/v1/") or exc.status < 400:
            raise
        body = RequestError(exc.reason).to_body()
        body["error"]["code"] = str(exc.status)
        return web.json_response(body, status=exc.status)
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:
        # A bug: keep details in the log (no request bodies or keys are in exception messages we raise).
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error_response(RouterError("internal router error"))


@web.middleware
async def _auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """`/v1/` needs a client key (when auth is on); probes, metrics, the playground and /openapi.json do not."""
    if request.path.startswith("/v1/"):
        try:
            name = request.app[KEYS].authenticate(request.headers.get("Authorization"))
        except RouterError as err:
            reason = err.code or "refused"
            request.app[METRICS].auth_failures.labels(reason=reason).inc()
            if err.status != 401:  # 401s are noise under a scan; a known key refused is worth a line
                log.warning("client refused (%s): %s", reason, err.message)
            raise
        if name is not None:
            request[KEY_NAME] = name
    return await handler(request)


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    """One shared upstream session for the app's lifetime (created and closed here, nowhere else)."""
    state = app[STATE]
    async with build_session(app[CONFIG].limits.upstream, app[CONFIG].pool_size) as session:
        state.backend = HttpBackend(session, app[CONFIG])
        state.session = session
        state.ready = True
        yield
        state.ready = False
        state.backend = None
        state.session = None


async def _not_ready_on_shutdown(app: web.Application) -> None:
    app[STATE].ready = False


def build_app(
    config: RouterConfig, *, metrics: RouterMetrics | None = None, buckets: Buckets | None = None
) -> web.Application:
    """The router app for `config`; each app has its own metrics registry. `buckets`: the per-key rate
    limits' buckets (default: this process's own; the workers of a pod share theirs)."""
    app = web.Application(
        middlewares=[_error_middleware, _auth_middleware],
        # aiohttp enforces the limit on chunked bodies too; the handler maps its 413 to an OpenAI error.
        client_max_size=config.limits.max_request_body_bytes,
    )
    app[CONFIG] = config
    app[KEYS] = ClientKeys(config.auth, buckets=buckets)
    app[METRICS] = metrics or RouterMetrics()
    app[STATE] = RouterState(started=int(time.time()))
    app.cleanup_ctx.append(_upstream_ctx)
    app.on_shutdown.append(_not_ready_on_shutdown)
    app.router.add_post(CHAT_PATH, handle_chat_completions)
    app.router.add_get("/v1/models", handle_models)
    app.router.add_get("/v1/models/{model}", handle_model)
    app.router.add_get("/v1/playground", handle_playground_pipeline)
    app.router.add_post("/v1/playground/export", handle_playground_export)
    app.router.add_get("/openapi.json", handle_openapi)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/", handle_playground)
    app.router.add_static("/static/", STATIC_DIR, show_index=False, follow_symlinks=False)
    return app


def _model_entry(app: web.Application) -> dict[str, Any]:
    return {"id": app[CONFIG].name, "object": "model", "created": app[STATE].started, "owned_by": "kubemoe"}


async def handle_models(request: web.Request) -> web.Response:
    """Only the pipeline is a model here; its proposers stay hidden behind it."""
    return web.json_response({"object": "list", "data": [_model_entry(request.app)]})


async def handle_model(request: web.Request) -> web.Response:
    if request.match_info["model"] != request.app[CONFIG].name:
        raise ModelNotFoundError(f"The model `{request.match_info['model']}` does not exist.", param="model")
    return web.json_response(_model_entry(request.app))


async def handle_openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(request.app[CONFIG].name))


async def handle_healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def handle_readyz(request: web.Request) -> web.Response:
    keys = request.app[KEYS]
    if keys.enabled and not keys.names():
        # Auth on but no keys (the Secret is missing or empty): every request would get 401.
        dir_ = request.app[CONFIG].auth.keys_dir
        return web.json_response({"status": "not ready", "reason": f"no client keys in {dir_}"}, status=503)
    ready = request.app[STATE].ready
    return web.json_response({"status": "ready" if ready else "not ready"}, status=200 if ready else 503)


async def handle_metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def handle_playground(request: web.Request) -> web.FileResponse:
    return web.FileResponse(
        STATIC_DIR / "index.html",
        headers={"Content-Security-Policy": _PLAYGROUND_CSP, "X-Content-Type-Options": "nosniff"},
    )


async def handle_playground_pipeline(request: web.Request) -> web.Response:
    """The deployed spec's layers and aggregator, its models and limits (403 unless edits are allowed)."""
    return web.json_response(describe(request.app[CONFIG]))


async def handle_playground_export(request: web.Request) -> web.Response:
    """An edit as a whole MoAPipeline manifest (JSON and YAML), validated like an edited run."""
    raw = await _read_body(request, request.app[CONFIG].limits.max_request_body_bytes)
    return web.json_response(export_manifest(request.app[CONFIG], raw))


async def _read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLargeError(
            f"request body of {request.content_length} bytes exceeds the limit of {limit}"
        )
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes") from exc


def _wants_trace(request: web.Request, req: ChatRequest) -> bool:
    return req.moa_trace or request.headers.get("X-MoA-Trace", "").strip().lower() in ("1", "true", "yes")


async def handle_chat_completions(request: web.Request) -> web.StreamResponse:
    """Admission (concurrency, size, validation), then the pipeline, as JSON or SSE."""
    app = request.app
    config, metrics, state = app[CONFIG], app[METRICS], app[STATE]
    limits = config.limits
    if state.in_flight >= limits.max_concurrent_requests:
        metrics.shed.labels(reason="concurrency").inc()
        metrics.requests.labels(code="429", stream="unknown").inc()
        raise OverloadedError(
            f"the pipeline is at its limit of {limits.max_concurrent_requests} concurrent requests; retry later",
            retry_after_seconds=limits.retry_after_seconds,
        )
    state.in_flight += 1
    metrics.in_flight.inc()
    start = time.monotonic()
    deadline = asyncio.get_running_loop().time() + config.policy.request_timeout_seconds
    stream_label = "unknown"
    code = "500"
    try:
        try:
            raw = await _read_body(request, limits.max_request_body_bytes)
        except PayloadTooLargeError:
            metrics.shed.labels(reason="body_size").inc()
            raise
        req = parse_chat_request(raw)
        stream_label = "true" if req.stream else "false"
        if req.model != config.name:
            raise ModelNotFoundError(f"The model `{req.model}` does not exist.", param="model")
        if state.backend is None or state.session is None:
            raise RouterError("router is not ready")
        trace = _wants_trace(request, req)
        run_config: RouterConfig = config
        backend: ChatBackend = state.backend
        observer: PipelineObserver = metrics
        if req.moa_pipeline is not None and req.moa_alone is not None:
            raise RequestError("send moa_pipeline or moa_alone, not both", param="moa_alone")
        if req.moa_pipeline is not None or req.moa_alone is not None:
            # A playground edit, or one model alone: 403/400 unless allowed and within bounds.
            run_config = (
                edited_config(config, req.moa_pipeline)
                if req.moa_pipeline is not None
                else alone_config(config, req.moa_alone)
            )
            backend = HttpBackend(state.session, run_config)
            observer = EditedRunObserver(metrics)
        run = PipelineRun(
            run_config,
            backend,
            observer,
            req.conversation(),
            max_tokens=req.token_cap,
            stream_proposers=trace,
        )
        clock = _request_deadline(deadline, config.policy.request_timeout_seconds)
        if req.stream:
            resp, code = await _stream(request, req, run, metrics, trace=trace, start=start, clock=clock)
        else:
            async with clock:
                resp = await _complete(req, run, metrics, trace=trace, start=start)
            code = "200"
        metrics.child(metrics.request_duration, stream_label).observe(time.monotonic() - start)
        return resp
    except RouterError as err:
        code = str(err.status)
        raise
    except (asyncio.CancelledError, ConnectionError):
        code = "499"  # client closed the request (nginx's convention)
        raise
    finally:
        state.in_flight -= 1
        metrics.in_flight.dec()
        metrics.child(metrics.requests, code, stream_label).inc()
        metrics.child(metrics.client_requests, request.get(KEY_NAME) or "-", code).inc()


@asynccontextmanager
async def _request_deadline(deadline: float, seconds: float) -> AsyncIterator[None]:
    """`policy.requestTimeoutSeconds`: cancels whatever runs inside (and so every upstream call), then 504."""
    try:
        async with asyncio.timeout_at(deadline) as clock:
            yield
    except TimeoutError as exc:
        if clock.expired():
            raise RequestTimeoutError(seconds) from exc
        raise


async def _complete(
    req: ChatRequest, run: PipelineRun, metrics: RouterMetrics, *, trace: bool, start: float
) -> web.Response:
    ids = CompletionIds(req.model)
    responses = await run.run_layers()
    parts: list[str] = []
    finish: str | None = None
    async with aclosing(run.stream_answer(responses)) as deltas:
        async for delta in deltas:
            if delta.content:
                if not parts:
                    metrics.child(metrics.time_to_first_token, "false").observe(time.monotonic() - start)
                parts.append(delta.content)
            finish = delta.finish_reason or finish
    body = ids.completion(content="".join(parts), finish_reason=finish, usage=run.usage.to_dict())
    if trace:
        body["moa_trace"] = run.trace()
    return web.Response(body=orjson.dumps(body), content_type="application/json")


class _SseWriter:
    """Writes chunks to one SSE response, sending the headers on first use."""

    def __init__(self, request: web.Request, ids: CompletionIds) -> None:
        self.request = request
        self.ids = ids
        self.response: web.StreamResponse | None = None

    async def start(self) -> web.StreamResponse:
        if self.response is None:
            resp = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream; charset=utf-8",
                    "Cache-Control": "no-cache",
                    # Reverse proxies (nginx) must not buffer the stream.
                    "X-Accel-Buffering": "no",
                }
            )
            await resp.prepare(self.request)
            self.response = resp
            await self.send(self.ids.chunk(delta={"role": "assistant", "content": ""}))
        return self.response

    async def send(self, data: dict[str, Any] | str) -> None:
        resp = self.response or await self.start()
        await resp.write(sse(data))

    async def event(self, event: dict[str, Any]) -> None:
        await self.send(self.ids.chunk(moa=event))


async def _stream(
    request: web.Request,
    req: ChatRequest,
    run: PipelineRun,
    metrics: RouterMetrics,
    *,
    trace: bool,
    start: float,
    clock: AbstractAsyncContextManager[None],
) -> tuple[web.StreamResponse, str]:
    """Serve the pipeline as SSE within `clock` (the request deadline); returns the response and the code."""
    out = _SseWriter(request, CompletionIds(req.model))
    if trace:
        await out.start()
        run.on_event = out.event
    try:
        async with clock:
            await _stream_body(req, run, metrics, out, trace=trace, start=start)
    except RouterError as err:
        if out.response is None:
            raise
        log.warning(
            "stream for key %s failed after it started: %s", request.get(KEY_NAME) or "-", err.message
        )
        body = err.to_body()
        if trace:
            body["moa_trace"] = run.trace()
        await out.send(body)
        return out.response, str(err.status)
    assert out.response is not None
    await out.response.write_eof()
    return out.response, "200"


async def _stream_body(
    req: ChatRequest, run: PipelineRun, metrics: RouterMetrics, out: _SseWriter, *, trace: bool, start: float
) -> None:
    """The layers, then the aggregator's tokens as chunks, then usage, trace and `[DONE]`."""
    finish: str | None = None
    responses = await run.run_layers()
    first = True
    async with aclosing(run.stream_answer(responses)) as deltas:
        async for delta in deltas:
            if delta.content:
                if first:
                    metrics.child(metrics.time_to_first_token, "true").observe(time.monotonic() - start)
                    first = False
                await out.send(out.ids.chunk(delta={"content": delta.content}))
            finish = delta.finish_reason or finish
    await out.send(out.ids.chunk(delta={}, finish_reason=finish or "stop"))
    if req.include_usage:
        await out.send(out.ids.chunk(usage=run.usage.to_dict()))
    if trace:
        await out.send(out.ids.chunk(usage=run.usage.to_dict(), moa_trace=run.trace()))
    await out.send("[DONE]")
