"""The router as an OpenAI server: official client, models list, probes, metrics, limits and error bodies."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import openai
import pytest
from moa_stub import Behavior, StubBackend
from router_harness import RouterFactory, make_config

from kubemoe.router.__main__ import main


def _client(base: str) -> openai.AsyncOpenAI:
    # max_retries=0: the tests assert on the router's first answer, not on the client's retries.
    return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=10)


async def test_openai_client_gets_a_whole_completion(stub: StubBackend, start_router: RouterFactory) -> None:
    stub.behaviors["agg"] = Behavior(reply="The capital of France is Paris.")
    base = await start_router(make_config(stub.url))
    async with _client(base) as client:
        result = await client.chat.completions.create(
            model="moa-test", messages=[{"role": "user", "content": "Capital of France?"}]
        )
    assert result.object == "chat.completion"
    assert result.model == "moa-test"
    assert result.choices[0].message.content == "The capital of France is Paris."
    assert result.choices[0].finish_reason == "stop"
    # Usage sums every call: a, b (layer 1), c, d (layer 2) and the aggregator: 5 calls x (11 prompt + 7
    # completion) = 55 + 35 = 90 tokens.
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (
        55,
        35,
        90,
    )


async def test_openai_client_streams_the_aggregator_answer(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    stub.behaviors["agg"] = Behavior(reply="one two three four")
    base = await start_router(make_config(stub.url))
    async with _client(base) as client:
        stream = await client.chat.completions.create(
            model="moa-test",
            messages=[{"role": "user", "content": "Count."}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four"
    assert all(c.object == "chat.completion.chunk" and c.model == "moa-test" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 90
    # The aggregator was asked to stream, with usage.
    agg = stub.calls("agg")[0].body
    assert agg["stream"] is True
    assert agg["stream_options"] == {"include_usage": True}


async def test_raw_stream_is_openai_sse_ending_with_done(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    base = await start_router(make_config(stub.url))
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{base}/v1/chat/completions",
            json={"model": "moa-test", "messages": [{"role": "user", "content": "Hi"}], "stream": True},
        ) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        raw = (await resp.read()).decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    for event in events[:-1]:
        assert json.loads(event.removeprefix("data: "))["object"] == "chat.completion.chunk"


async def test_models_lists_the_pipeline_only(stub: StubBackend, start_router: RouterFactory) -> None:
    base = await start_router(make_config(stub.url))
    async with _client(base) as client:
        models = [m.id async for m in client.models.list()]
        assert models == ["moa-test"]
        assert (await client.models.retrieve("moa-test")).id == "moa-test"
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("a")


async def test_unknown_model_is_404_in_openai_shape(stub: StubBackend, start_router: RouterFactory) -> None:
    base = await start_router(make_config(stub.url))
    async with _client(base) as client:
        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(model="a", messages=[{"role": "user", "content": "Hi"}])
    assert info.value.code == "model_not_found"
    assert stub.received == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b'{"model": "moa-test", "messages": []}', "messages"),
        (b'{"model": "moa-test", "messages": [{"role": "wizard", "content": "x"}]}', "messages.0.role"),
        (b'{"model": "moa-test", "n": 2, "messages": [{"role": "user", "content": "x"}]}', "n"),
    ],
)
async def test_bad_requests_get_400_with_the_param(
    stub: StubBackend, start_router: RouterFactory, body: bytes, param: str | None
) -> None:
    base = await start_router(make_config(stub.url))
    async with aiohttp.ClientSession() as http, http.post(f"{base}/v1/chat/completions", data=body) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


async def test_body_over_the_limit_is_413(stub: StubBackend, start_router: RouterFactory) -> None:
    base = await start_router(make_config(stub.url, limits={"maxRequestBodyBytes": 2048}))
    big = {"model": "moa-test", "messages": [{"role": "user", "content": "x" * 4096}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/v1/chat/completions", json=big) as resp:
            assert resp.status == 413
            assert (await resp.json())["error"]["code"] == "payload_too_large"

        # Chunked upload (no Content-Length): aiohttp's own limit, mapped to the same OpenAI error.
        async def body() -> object:
            yield json.dumps(big).encode()

        async with http.post(f"{base}/v1/chat/completions", data=body()) as resp:
            assert resp.status == 413
            assert (await resp.json())["error"]["code"] == "payload_too_large"
    assert stub.received == []


async def test_requests_over_the_concurrency_limit_get_429_with_retry_after(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    stub.behaviors["agg"] = Behavior(latency=0.5)
    base = await start_router(
        make_config(stub.url, limits={"maxConcurrentRequests": 2, "retryAfterSeconds": 3})
    )
    payload = {"model": "moa-test", "messages": [{"role": "user", "content": "Hi"}]}
    async with aiohttp.ClientSession() as http:

        async def post() -> tuple[int, str | None, dict[str, object]]:
            async with http.post(f"{base}/v1/chat/completions", json=payload) as resp:
                return resp.status, resp.headers.get("Retry-After"), await resp.json()

        first = [asyncio.create_task(post()) for _ in range(2)]
        for _ in range(200):  # wait (up to ~2 s) until both are waiting on the slow aggregator
            if len(stub.calls("agg")) == 2:
                break
            await asyncio.sleep(0.01)
        status, retry_after, body = await post()
        assert (status, retry_after) == (429, "3")
        assert body["error"]["code"] == "rate_limit_exceeded"  # type: ignore[index]
        assert [r[0] for r in await asyncio.gather(*first)] == [200, 200]
        async with http.get(f"{base}/metrics") as resp:
            metrics = await resp.text()
    assert 'kubemoe_router_shed_requests_total{reason="concurrency"} 1.0' in metrics


async def test_probes_and_metrics(stub: StubBackend, start_router: RouterFactory) -> None:
    base = await start_router(make_config(stub.url))
    async with _client(base) as client:
        await client.chat.completions.create(model="moa-test", messages=[{"role": "user", "content": "Hi"}])
    async with aiohttp.ClientSession() as http:
        for path in ("/healthz", "/readyz"):
            async with http.get(f"{base}{path}") as resp:
                assert resp.status == 200
        async with http.get(f"{base}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    for expected in (
        'kubemoe_router_requests_total{code="200",stream="false"} 1.0',
        "kubemoe_router_request_duration_seconds_count",
        "kubemoe_router_time_to_first_token_seconds_count",
        'kubemoe_router_agent_duration_seconds_count{agent="a",layer="1"}',
        'kubemoe_router_agent_duration_seconds_count{agent="agg",layer="0"}',
        'kubemoe_router_agent_tokens_total{agent="c",kind="completion"} 7.0',
        "kubemoe_router_quorum_short_circuits_total",
        "kubemoe_router_requests_in_flight 0.0",
    ):
        assert expected in text, expected


async def test_unknown_v1_route_is_openai_shaped(stub: StubBackend, start_router: RouterFactory) -> None:
    base = await start_router(make_config(stub.url))
    async with aiohttp.ClientSession() as http, http.get(f"{base}/v1/embeddings") as resp:
        assert resp.status == 404
        assert set((await resp.json())["error"]) == {"message", "type", "param", "code"}


def test_main_exits_2_with_the_reason_on_a_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "router.yaml"
    bad.write_text("name: x\nlayers: []\n")
    assert main(["--config", str(bad)]) == 2
    assert "invalid router config" in capsys.readouterr().err


async def test_python_m_kubemoe_router_serves_until_sigterm(stub: StubBackend, tmp_path: Path) -> None:
    config = tmp_path / "router.json"
    config.write_text(json.dumps(make_config(stub.url).to_file_dict()))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kubemoe.router",
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    )
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(600):  # up to ~30 s for the interpreter to start (imports take 13 s under load)
                try:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            async with _client(f"http://127.0.0.1:{port}") as client:
                result = await client.chat.completions.create(
                    model="moa-test", messages=[{"role": "user", "content": "Hi"}]
                )
        assert result.choices[0].message.content == "stub answer"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0


async def test_start_up_objects_are_frozen_out_of_the_gc_and_the_backlog_fits_the_limit() -> None:
    import gc

    from kubemoe.router import process, server

    before = gc.get_freeze_count()
    try:
        await process._freeze_start_up_objects(server.build_app(make_config("http://127.0.0.1:9/v1")))
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()  # a test process must not keep its objects out of the GC
    config = make_config("http://127.0.0.1:9/v1", limits={"maxConcurrentRequests": 2048})
    assert process.listen_backlog(config) == 2048
    assert (
        process.listen_backlog(make_config("http://127.0.0.1:9/v1", limits={"maxConcurrentRequests": 8}))
        == 128
    )
