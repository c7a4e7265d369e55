"""Run every task through each configuration: the pipeline (or its sweep variants) and each model alone.

The pipeline runs behind the real router, started in-process on 127.0.0.1 from the MoAPipeline file (or
reached at `--url`), and is asked with the `moa_trace` extension so every agent's tokens are known and can be
priced by model. A model alone is asked directly on its OpenAI-compatible endpoint with the agent's own
sampling settings. Calls are bounded: `concurrency` at a time, each with a time limit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import yaml
from aiohttp import web
from pydantic import ValidationError

from kubemoe.api.moapipeline import Agent, Aggregator, Layer, MoAPipeline, MoAPipelineSpec
from kubemoe.evaluate.dataset import EvalError, Task
from kubemoe.evaluate.graders import JudgeCall, grade
from kubemoe.router.config import ResolvedUpstream, RouterConfig
from kubemoe.router.server import build_app


@dataclass(frozen=True)
class Target:
    """One configuration: the pipeline (a variant of it), or one model alone."""

    label: str
    kind: Literal["pipeline", "model"]
    url: str
    model: str
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class TaskResult:
    configuration: str
    task: str
    correct: bool
    latency_seconds: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    detail: str = ""
    answer: str = ""


Progress = Callable[[int, int, str], None]


def load_pipeline(path: str | Path) -> MoAPipeline:
    """The MoAPipeline in a YAML file (the first one, if the file holds several documents)."""
    try:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text(encoding="utf-8")) if d]
    except (OSError, yaml.YAMLError) as exc:
        raise EvalError(f"{path}: cannot read pipeline: {exc}") from exc
    found = [d for d in docs if isinstance(d, dict) and d.get("kind") == "MoAPipeline"]
    if not found:
        raise EvalError(f"{path}: no MoAPipeline in the file")
    try:
        return MoAPipeline.model_validate(found[0])
    except ValidationError as exc:
        raise EvalError(f"{path}: invalid MoAPipeline: {exc}") from exc


class Resolver:
    """Model references -> URLs without a cluster: endpoints as written, MoEModels from `--model-url`."""

    def __init__(self, model_urls: Mapping[str, str]) -> None:
        self.model_urls = dict(model_urls)

    def __call__(self, ref: Agent | Aggregator) -> ResolvedUpstream:
        if ref.endpoint is not None:
            if ref.endpoint.api_key_secret_ref is not None:
                raise EvalError(
                    f"{ref.endpoint.url}: the API key is in a Kubernetes Secret, which eval cannot read; "
                    "evaluate against the deployed router with --url instead"
                )
            return ResolvedUpstream(url=ref.endpoint.url.rstrip("/"), model=ref.endpoint.model)
        assert ref.moe_model_ref is not None
        name = ref.moe_model_ref.name
        if name not in self.model_urls:
            raise EvalError(f"moeModelRef {name}: pass --model-url {name}=http://HOST:PORT/v1")
        return ResolvedUpstream(url=self.model_urls[name].rstrip("/"), model=name)


def variant(spec: MoAPipelineSpec, *, layers: int, agents: int) -> MoAPipelineSpec:
    """The pipeline with `layers` layers of `agents` agents, drawn in turn from its own agents."""
    pool = [a for layer in spec.layers for a in layer.agents]
    new_layers = [
        Layer(
            agents=[
                pool[j % len(pool)].model_copy(
                    update={"name": f"{pool[j % len(pool)].name[:48]}-l{i + 1}a{j + 1}"}
                )
                for j in range(agents)
            ]
        )
        for i in range(layers)
    ]
    policy = spec.policy
    if policy.min_responses is not None and policy.min_responses > agents:
        policy = policy.model_copy(update={"min_responses": agents})
    return spec.model_copy(update={"layers": new_layers, "policy": policy})


def model_targets(spec: MoAPipelineSpec, resolve: Resolver) -> list[Target]:
    """Each distinct model of the pipeline alone, with the settings of the first agent using it."""
    out: dict[tuple[str, str], Target] = {}
    refs: list[Agent | Aggregator] = [*(a for layer in spec.layers for a in layer.agents), spec.aggregator]
    for ref in refs:
        r = resolve(ref)
        if (r.url, r.model) in out:
            continue
        settings: dict[str, Any] = {"temperature": ref.temperature, "max_tokens": ref.max_tokens}
        if ref.top_p is not None:
            settings["top_p"] = ref.top_p
        if isinstance(ref, Agent) and ref.system_prompt:
            settings["system_prompt"] = ref.system_prompt
        out[(r.url, r.model)] = Target(f"model:{r.model}", "model", r.url, r.model, settings)
    return list(out.values())


def judges(spec: MoAPipelineSpec, resolve: Resolver) -> dict[str, ResolvedUpstream]:
    """Judge names: every agent's name, `aggregator`, and every model name."""
    named: dict[str, ResolvedUpstream] = {}
    for layer in spec.layers:
        for a in layer.agents:
            named[a.name] = resolve(a)
    named["aggregator"] = resolve(spec.aggregator)
    for r in list(named.values()):
        named.setdefault(r.model, r)
    return named


@asynccontextmanager
async def serve_router(config: RouterConfig) -> AsyncIterator[str]:
    """The real router app on an ephemeral loopback port; yields its base URL (up to /v1)."""
    runner = web.AppRunner(build_app(config), handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}/v1"
    finally:
        await runner.cleanup()


def _tokens(usage: Any) -> tuple[int, int]:
    if not isinstance(usage, Mapping):
        return 0, 0
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def _price(prices: Mapping[str, float], model: str, usage: Any) -> float:
    p, c = _tokens(usage)
    return (p + c) * prices.get(model, 0.0) / 1e6


def _trace_cost(trace: Any, prices: Mapping[str, float]) -> float:
    if not isinstance(trace, Mapping):
        return 0.0
    calls = [a for layer in trace.get("layers") or [] for a in layer.get("agents") or []]
    if trace.get("aggregator"):
        calls.append(trace["aggregator"])
    return sum(_price(prices, str(a.get("model")), a.get("usage")) for a in calls)


class Evaluator:
    """Asks and grades; one aiohttp session, `concurrency` calls at a time."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        judges: Mapping[str, ResolvedUpstream],
        prices: Mapping[str, float],
        concurrency: int = 4,
    ) -> None:
        self.http = http
        self.judges = judges
        self.prices = prices
        self.slots = asyncio.Semaphore(concurrency)

    async def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.http.post(f"{url}/chat/completions", json=body) as resp:
            data = await resp.json(content_type=None)
            if resp.status != 200:
                err = data.get("error") if isinstance(data, dict) else data
                message = err.get("message") if isinstance(err, dict) else err
                raise EvalError(f"HTTP {resp.status}: {str(message)[:200]}")
            if not isinstance(data, dict):
                raise EvalError("not a chat completion")
            return data

    async def judge(self, name: str, messages: list[dict[str, str]]) -> str:
        target = self.judges.get(name)
        if target is None:
            raise EvalError(
                f"judge {name!r} is not a model of the pipeline (known: {', '.join(sorted(self.judges))})"
            )
        data = await self._post(
            target.url, {"model": target.model, "messages": messages, "temperature": 0, "max_tokens": 8}
        )
        return str(data["choices"][0]["message"].get("content") or "")

    async def ask(self, target: Target, task: Task) -> TaskResult:
        async with self.slots:
            messages = task.conversation()
            settings = dict(target.settings)
            system = settings.pop("system_prompt", None)
            if system:
                messages = [{"role": "system", "content": system}, *messages]
            body: dict[str, Any] = {"model": target.model, "messages": messages, **settings}
            if target.kind == "pipeline":
                body["moa_trace"] = True
            start = time.monotonic()
            try:
                data = await self._post(target.url, body)
                answer = str(data["choices"][0]["message"].get("content") or "")
            except (EvalError, aiohttp.ClientError, TimeoutError, KeyError, IndexError, TypeError) as exc:
                latency = time.monotonic() - start
                return TaskResult(target.label, task.id, False, latency, detail=f"error: {exc}")
            latency = time.monotonic() - start
            prompt, completion = _tokens(data.get("usage"))
            if target.kind == "pipeline":
                cost = _trace_cost(data.get("moa_trace"), self.prices)
            else:
                cost = _price(self.prices, target.model, data.get("usage"))
        judge: JudgeCall = self.judge
        try:
            g = await grade(task, answer, judge=judge)
        except (EvalError, aiohttp.ClientError, TimeoutError, KeyError, IndexError) as exc:
            return TaskResult(
                target.label,
                task.id,
                False,
                latency,
                prompt,
                completion,
                cost,
                f"judge failed: {exc}",
                answer,
            )
        return TaskResult(
            target.label, task.id, g.correct, latency, prompt, completion, cost, g.detail, answer
        )

    async def run(
        self, targets: Sequence[Target], tasks: Sequence[Task], progress: Progress | None = None
    ) -> list[TaskResult]:
        jobs = [(t, task) for t in targets for task in tasks]
        done = 0
        results: list[TaskResult] = []

        async def one(target: Target, task: Task) -> TaskResult:
            nonlocal done
            result = await self.ask(target, task)
            done += 1
            if progress is not None:
                progress(done, len(jobs), target.label)
            return result

        results = list(await asyncio.gather(*(one(t, task) for t, task in jobs)))
        return results


def as_dicts(results: Sequence[TaskResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]
