"""A decentralised MoA peer's aiohttp app: user queries, peer calls, status and metrics.

Routes:
- `POST /v1/chat/completions`: a user query (JSON or SSE). Admission first (429 + Retry-After, or a lower
  k), then `gossip.Gossip` runs it through M layers of this peer plus k neighbours and aggregates here.
- `POST /peer/v1/chat/completions`: a peer call. This peer's model answers the messages it is given, with
  this peer's sampling settings; it is never gossiped further, so calls cannot loop.
- `GET /status` (JSON: rho, lambda, alpha, k...), `GET /metrics`, `GET /healthz`, `GET /readyz`,
  `GET /v1/models`.

`/v1/` and `/peer/v1/` need a client key unless the pipeline's auth is off (`peer.auth` says how and why);
probes, `/status` and `/metrics` do not, as on the router.

It reuses the router's pieces (wire format, upstream client, pipeline, error bodies, metric families), so
a peer and the central router answer clients identically. Like the router it must run with
`handler_cancellation=True`: a client that goes away cancels its query's upstream calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import Gauge

from kubemoe.peer.admission import Admission
from kubemoe.peer.auth import CALLER_AUTH, PeerBackend, gossip_keys
from kubemoe.peer.config import PEER_PREFIX, PeerConfig
from kubemoe.peer.gossip import Gossip, MeteredBackend, Selector
from kubemoe.router.api import CompletionIds, sse
from kubemoe.router.auth import ClientKeys
from kubemoe.router.errors import ModelNotFoundError, OverloadedError, RouterError
from kubemoe.router.metrics import CONTENT_TYPE, RouterMetrics
from kubemoe.router.pipeline import PipelineRun
from kubemoe.router.request import parse_chat_request
from kubemoe.router.results import StreamDelta, Usage
from kubemoe.router.upstream import build_session

log = logging.getLogger("kubemoe.peer")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PeerMetrics(RouterMetrics):
    """The router's metric families (so its alerts apply unchanged) plus the stability figures."""

    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.rho = Gauge(
            "kubemoe_peer_utilization", "rho = alpha((k+1)M+1)lambda at the configured k.", registry=r
        )
        self.arrival_rate = Gauge(
            "kubemoe_peer_arrival_rate", "Accepted user queries per second.", registry=r
        )
        self.offered_rate = Gauge("kubemoe_peer_offered_rate", "Offered user queries per second.", registry=r)
        self.service_time = Gauge(
            "kubemoe_peer_service_time_seconds", "Measured mean service time alpha of the model.", registry=r
        )
        self.max_stable_rate = Gauge(
            "kubemoe_peer_max_stable_rate", "1 / (alpha((k+1)M+1)): the rate at which rho = 1.", registry=r
        )
        self.neighbours = Gauge("kubemoe_peer_neighbours", "k used for the last admitted query.", registry=r)
        self.busy = Gauge(
            "kubemoe_peer_model_busy_fraction", "Fraction of the window the model was busy.", registry=r
        )


@dataclass
class PeerState:
    backend: MeteredBackend | None = None
    ready: bool = False
    in_flight: int = 0
    last_neighbours: int = 0
    clock: Callable[[], float] = time.monotonic
    started: int = field(default_factory=lambda: int(time.time()))


CONFIG = web.AppKey("peer_config", PeerConfig)
METRICS = web.AppKey("peer_metrics", PeerMetrics)
STATE = web.AppKey("peer_state", PeerState)
GOSSIP = web.AppKey("peer_gossip", Gossip)
ADMISSION = web.AppKey("peer_admission", Admission)
SELECTOR = web.AppKey("peer_selector", Selector)
KEYS = web.AppKey("peer_client_keys", ClientKeys)
GOSSIP_KEYS = web.AppKey("peer_gossip_keys", ClientKeys)


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RouterError as err:
        return web.json_response(err.to_body(), status=err.status, headers=err.headers())
    except (asyncio.CancelledError, ConnectionError, web.HTTPException):
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        internal = RouterError("internal peer error")
        return web.json_response(internal.to_body(), status=internal.status)


@web.middleware
async def _auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """`/v1/`: the caller's client key, as on the router; `/peer/v1/`: the forwarded key of the query that
    the calling peer serves (see `peer.auth`). The header is kept for this request's own peer calls."""
    path = request.path
    keys = request.app[GOSSIP_KEYS] if path.startswith(f"{PEER_PREFIX}/") else request.app[KEYS]
    if path.startswith(("/v1/", f"{PEER_PREFIX}/")):
        header = request.headers.get("Authorization")
        try:
            keys.authenticate(header)
        except RouterError as err:
            request.app[METRICS].auth_failures.labels(reason=err.code or "refused").inc()
            if err.status != 401:
                log.warning("client refused on %s (%s): %s", path, err.code or "refused", err.message)
            raise
        if keys.enabled:
            token = CALLER_AUTH.set(header)
            try:
                return await handler(request)
            finally:
                CALLER_AUTH.reset(token)
    return await handler(request)


async def _backend_ctx(app: web.Application) -> AsyncIterator[None]:
    state, config, admission = app[STATE], app[CONFIG], app[ADMISSION]
    async with build_session(config.limits.upstream, config.pool_size) as session:
        meter = admission.service
        state.backend = MeteredBackend(
            PeerBackend(session, app[GOSSIP].backend_config(), peer_apis={p.peer_api for p in config.peers}),
            own_url=config.model.url,
            started=lambda: meter.started(state.clock()),
            finished=lambda: meter.finished(state.clock()),
            selector=app[SELECTOR],
        )
        state.ready = True
        yield
        state.ready = False
        state.backend = None


def build_app(config: PeerConfig, *, clock: Callable[[], float] = time.monotonic) -> web.Application:
    app = web.Application(
        middlewares=[_error_middleware, _auth_middleware],
        client_max_size=config.limits.max_request_body_bytes,
    )
    app[CONFIG] = config
    app[METRICS] = PeerMetrics()
    app[STATE] = PeerState(clock=clock)
    app[GOSSIP] = Gossip(config)
    app[SELECTOR] = Selector(config, clock=clock)
    app[KEYS] = ClientKeys(config.auth)
    app[GOSSIP_KEYS] = gossip_keys(config.auth)
    topo = config.topology
    app[ADMISSION] = Admission(topo.admission, neighbours=topo.neighbours, layers=topo.layers)
    app.cleanup_ctx.append(_backend_ctx)
    app.router.add_post("/v1/chat/completions", handle_query)
    app.router.add_post(f"{PEER_PREFIX}/chat/completions", handle_peer_call)
    app.router.add_get("/v1/models", handle_models)
    app.router.add_get("/status", handle_status)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    return app


async def handle_healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def handle_readyz(request: web.Request) -> web.Response:
    keys = request.app[KEYS]
    if keys.enabled and not keys.names():
        # Auth on but no keys (the Secret is missing or empty): every query would get 401, as on the router.
        reason = f"no client keys in {request.app[CONFIG].auth.keys_dir}"
        return web.json_response({"status": "not ready", "reason": reason}, status=503)
    ready = request.app[STATE].ready
    return web.json_response({"status": "ready" if ready else "not ready"}, status=200 if ready else 503)


async def handle_models(request: web.Request) -> web.Response:
    entry = {
        "id": request.app[CONFIG].pipeline,
        "object": "model",
        "created": request.app[STATE].started,
        "owned_by": "kubemoe",
    }
    return web.json_response({"object": "list", "data": [entry]})


def status_of(app: web.Application) -> dict[str, Any]:
    """What `/status` reports (and the controller copies into the pipeline's status)."""
    config, admission, state, selector = app[CONFIG], app[ADMISSION], app[STATE], app[SELECTOR]
    now = state.clock()
    cap = admission.capacity(now)
    rho = admission.rho(now)
    return {
        "peer": config.name,
        "pipeline": config.pipeline,
        "neighbours": config.topology.neighbours,
        "effectiveNeighbours": state.last_neighbours,
        "layers": config.topology.layers,
        "callsPerQuery": cap.calls_per_query if cap else None,
        "arrivalRate": admission.accepted.rate(now),
        "offeredRate": admission.offered.rate(now),
        "serviceTimeSeconds": admission.alpha(now),
        "maxStableRate": cap.max_stable_requests_per_second if cap else None,
        "utilization": rho,
        "stable": cap.is_stable(admission.accepted.rate(now)) if cap else True,
        "maxUtilization": config.admission.max_utilization,
        "policy": config.admission.policy,
        "inFlight": state.in_flight,
        "modelBusyFraction": admission.service.busy_fraction(now),
        "peers": [{"name": p.name, "url": p.url, "suspect": selector.suspect(p.name)} for p in config.peers],
    }


async def handle_status(request: web.Request) -> web.Response:
    return web.json_response(status_of(request.app))


async def handle_metrics(request: web.Request) -> web.Response:
    s, m = status_of(request.app), request.app[METRICS]
    m.rho.set(s["utilization"])
    m.arrival_rate.set(s["arrivalRate"])
    m.offered_rate.set(s["offeredRate"])
    m.service_time.set(s["serviceTimeSeconds"] or 0.0)
    m.max_stable_rate.set(s["maxStableRate"] or 0.0)
    m.neighbours.set(s["effectiveNeighbours"])
    m.busy.set(s["modelBusyFraction"])
    return web.Response(body=m.render(), headers={"Content-Type": CONTENT_TYPE})


async def handle_query(request: web.Request) -> web.StreamResponse:
    """A user query: admission, then M gossip layers and the local aggregation."""
    app = request.app
    config, metrics, state, admission = app[CONFIG], app[METRICS], app[STATE], app[ADMISSION]
    # Validated before admission, so a malformed request neither counts towards lambda nor gets a 429.
    req = parse_chat_request(await request.read())
    if req.model != config.pipeline:
        raise ModelNotFoundError(f"The model `{req.model}` does not exist.", param="model")
    decision = admission.decide(state.clock())
    if not decision.admit:
        metrics.shed.labels(reason="utilization").inc()
        metrics.requests.labels(code="429", stream="true" if req.stream else "false").inc()
        assert decision.retry_after_seconds is not None
        raise OverloadedError(
            f"peer {config.name} is at rho={decision.rho:.2f}, above its limit of "
            f"{config.admission.max_utilization:g}; retry later",
            retry_after_seconds=decision.retry_after_seconds,
        )
    state.in_flight += 1
    metrics.in_flight.inc()
    state.last_neighbours = decision.neighbours
    start, code, stream_label = time.monotonic(), "500", "unknown"
    try:
        stream_label = "true" if req.stream else "false"
        if state.backend is None:
            raise RouterError("peer is not ready")
        gossip = app[GOSSIP]
        neighbours = app[SELECTOR].choose(decision.neighbours)
        run = PipelineRun(
            gossip.query_config(neighbours),
            state.backend,
            metrics,
            req.conversation(),
            max_tokens=req.token_cap,
        )
        ids = CompletionIds(req.model)
        responses = await run.run_layers()
        peers_used = [p.name for p in neighbours]
        if not req.stream:
            parts: list[str] = []
            finish: str | None = None
            async with aclosing(gossip.answer(run, responses, neighbours)) as deltas:
                async for delta in deltas:
                    parts.append(delta.content)
                    finish = delta.finish_reason or finish
            body = ids.completion(content="".join(parts), finish_reason=finish, usage=run.usage.to_dict())
            body["moa_peers"] = peers_used
            if req.moa_trace:
                body["moa_trace"] = run.trace()
            code = "200"
            return web.json_response(body)
        resp, code = await _stream(
            request, ids, gossip.answer(run, responses, neighbours), run, req.include_usage
        )
        return resp
    except RouterError as err:
        code = str(err.status)
        raise
    except (asyncio.CancelledError, ConnectionError):
        code = "499"
        raise
    finally:
        state.in_flight -= 1
        metrics.in_flight.dec()
        metrics.requests.labels(code=code, stream=stream_label).inc()
        metrics.request_duration.labels(stream=stream_label).observe(time.monotonic() - start)


async def _sse_response(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await resp.prepare(request)
    return resp


async def _stream(
    request: web.Request,
    ids: CompletionIds,
    deltas: AsyncGenerator[StreamDelta, None],
    run: PipelineRun | None,
    include_usage: bool,
) -> tuple[web.StreamResponse, str]:
    """Relay `deltas` as SSE. Headers wait for the first chunk, so an early failure keeps its HTTP status."""
    resp: web.StreamResponse | None = None
    finish: str | None = None
    usage = Usage()
    try:
        async with aclosing(deltas) as stream:
            async for delta in stream:
                if resp is None:
                    resp = await _sse_response(request)
                    await resp.write(sse(ids.chunk(delta={"role": "assistant", "content": ""})))
                if delta.content:
                    await resp.write(sse(ids.chunk(delta={"content": delta.content})))
                if delta.usage is not None:
                    usage = delta.usage
                finish = delta.finish_reason or finish
    except RouterError as err:
        if resp is None:
            raise
        log.warning("stream failed after it started: %s", err.message)
        await resp.write(sse(err.to_body()))
        return resp, str(err.status)
    if resp is None:
        resp = await _sse_response(request)
    await resp.write(sse(ids.chunk(delta={}, finish_reason=finish or "stop")))
    if include_usage:
        total = run.usage if run is not None else usage
        await resp.write(sse(ids.chunk(usage=total.to_dict())))
    await resp.write(sse("[DONE]"))
    await resp.write_eof()
    return resp, "200"


async def handle_peer_call(request: web.Request) -> web.StreamResponse:
    """Another peer's call: this peer's model answers once, with this peer's sampling settings."""
    app = request.app
    config, metrics, state = app[CONFIG], app[METRICS], app[STATE]
    code = "500"
    try:
        req = parse_chat_request(await request.read())
        if state.backend is None:
            raise RouterError("peer is not ready")
        own = config.model
        body: dict[str, Any] = {
            "model": own.model,
            "messages": req.conversation(),
            "temperature": own.temperature,
            "max_tokens": min(
                own.max_tokens if req.token_cap is None else req.token_cap, config.aggregator_max_tokens
            ),
            "stream": req.stream,
        }
        if own.top_p is not None:
            body["top_p"] = own.top_p
        ids = CompletionIds(req.model)
        if not req.stream:
            result = await state.backend.complete(own, body)
            code = "200"
            usage = (result.usage or Usage()).to_dict()
            return web.json_response(
                ids.completion(content=result.content, finish_reason=result.finish_reason, usage=usage)
            )
        body["stream_options"] = {"include_usage": True}
        resp, code = await _stream(request, ids, state.backend.stream(own, body), None, req.include_usage)
        return resp
    except RouterError as err:
        code = str(err.status)
        raise
    finally:
        metrics.requests.labels(code=code, stream="peer").inc()


def run_peer(config_path: str | Path, *, host: str = "0.0.0.0", port: int = 8080) -> None:
    """Load the config and serve until SIGTERM/SIGINT (what `kubemoe peer --config FILE` calls)."""
    config = PeerConfig.from_file(config_path)
    log.info(
        "peer %s of %r: k=%d, M=%d, %s selection, on %s:%d",
        config.name,
        config.pipeline,
        config.topology.neighbours,
        config.topology.layers,
        config.topology.selection,
        host,
        port,
    )
    web.run_app(
        build_app(config),
        host=host,
        port=port,
        handler_cancellation=True,
        # Queries this peer accepted finish before it exits (Kubernetes sends SIGTERM after unlisting it).
        shutdown_timeout=30.0,
        print=None,
    )
