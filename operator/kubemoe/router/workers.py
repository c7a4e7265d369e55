"""Several router processes on one port (`kubemoe router --workers N`): one per core, sharing the listening
port through `SO_REUSEPORT`, so a pod uses all its cores without a proxy in front.

The parent only supervises. It starts N fresh interpreters (multiprocessing's `spawn`: no state is forked),
each serving the same app with `reuse_port=True`; the kernel spreads new connections over them. The parent
forwards SIGTERM/SIGINT to every worker, and each then shuts down as one process does (in-flight answers get
aiohttp's shutdown timeout). If a worker dies on its own, the parent stops the others and exits with an error,
so the kubelet restarts the pod rather than serving with fewer processes than configured.

Shared limits: each worker gets `ceil(limit / N)` of `maxConcurrentRequests` and of an explicit `poolSize`
(`split_config`). The kernel hashes connections, not requests, over the workers, so the total is the
configured one to within one connection's share. Per-key rate limits are not split: a client on one
keep-alive connection would get a N-th of its rate. The workers share one token bucket per key instead, in a
file next to the metrics (`router.buckets.SharedBuckets`), so a key gets exactly its `requestsPerSecond` and
`burst` over the pod.

Metrics: every worker writes its samples to `PROMETHEUS_MULTIPROC_DIR` (prometheus-client's multiprocess
mode; the parent sets it to an empty directory before the workers start, an emptyDir in the pod), and
`/metrics` on any worker returns the sum over all workers (the in-flight gauge sums live workers only).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from multiprocessing.process import BaseProcess
from types import FrameType

from prometheus_client import multiprocess

from kubemoe.router.buckets import create_shared_file
from kubemoe.router.config import RouterConfig
from kubemoe.router.metrics import MULTIPROC_ENV

log = logging.getLogger("kubemoe.router")

#: The per-key token buckets the workers share, in the metrics directory (an emptyDir in the pod).
BUCKETS_FILE = "rate-limits.buckets"


def split_config(config: RouterConfig, workers: int) -> RouterConfig:
    """`config` with the per-process share of its concurrency limit and pool (client rate limits are shared,
    not split: `router.buckets`)."""
    if workers == 1:
        return config
    limits = config.limits
    upstream = limits.upstream
    pool = upstream.pool_size
    share = {
        "max_concurrent_requests": math.ceil(limits.max_concurrent_requests / workers),
        "upstream": upstream.model_copy(
            update={"pool_size": None if pool is None else math.ceil(pool / workers)}
        ),
    }
    return config.model_copy(update={"limits": limits.model_copy(update=share)})


def _worker(
    config_path: str, host: str, port: int, workers: int, loop: str, *, log_level: int, buckets: str
) -> None:
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from kubemoe.router.process import serve_one

    config = split_config(RouterConfig.from_file(config_path), workers)
    serve_one(config, host=host, port=port, loop=loop, reuse_port=True, shared_buckets=(buckets, workers))


def run_workers(config_path: str, *, host: str, port: int, workers: int, loop: str) -> int:
    """Start `workers` serving processes and supervise them until a signal or a worker's death."""
    RouterConfig.from_file(config_path)  # a bad config fails here, once, with exit 2 (serve_main)
    own_dir = None
    if not os.environ.get(MULTIPROC_ENV):
        own_dir = os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="kubemoe-metrics-")
    for stale in os.listdir(os.environ[MULTIPROC_ENV]):  # a restarted container keeps its emptyDir
        if stale.endswith(".db"):
            os.unlink(os.path.join(os.environ[MULTIPROC_ENV], stale))
    buckets = os.path.join(os.environ[MULTIPROC_ENV], BUCKETS_FILE)
    create_shared_file(buckets)  # full buckets for every key, as after a restart of one process
    ctx = multiprocessing.get_context("spawn")
    level = logging.getLogger().getEffectiveLevel()
    procs: list[BaseProcess] = [
        ctx.Process(
            target=_worker,
            args=(config_path, host, port, workers, loop),
            kwargs={"log_level": level, "buckets": buckets},
            name=f"router-{i}",
            daemon=False,
        )
        for i in range(workers)
    ]
    stopping = False

    def _forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.pid is not None and proc.exitcode is None:
                os.kill(proc.pid, signum)

    previous = {s: signal.signal(s, _forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for proc in procs:
            proc.start()
        log.info("serving with %d worker processes on %s:%d (SO_REUSEPORT)", workers, host, port)
        code = 0
        while any(p.exitcode is None for p in procs):
            dead = [p for p in procs if p.exitcode is not None]
            if dead and not stopping:
                log.error("worker %s exited with %s; stopping the others", dead[0].name, dead[0].exitcode)
                multiprocess.mark_process_dead(dead[0].pid)  # type: ignore[no-untyped-call]
                code = 1
                _forward(signal.SIGTERM, None)
            time.sleep(0.2)
        if not stopping:
            code = 1
        return code
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for proc in procs:
            if proc.exitcode is None:
                proc.kill()
            proc.join(5)
            if proc.pid is not None:
                multiprocess.mark_process_dead(proc.pid)  # type: ignore[no-untyped-call]  # its live gauges stop counting
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
