"""The MoA algorithm over real sockets: layers, quorum, deadlines, failure policy, disconnects, trace.

Timing assertions use generous bounds: a stub that would take 5-10 s stands in for a straggler, and the router
has to finish in well under that.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import openai
import pytest
from moa_stub import Behavior, StubBackend
from openai.types.chat import ChatCompletionMessageParam
from router_harness import RouterFactory, make_config

USER: list[dict[str, Any]] = [{"role": "user", "content": "Capital of France?"}]
USER_PARAM: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Capital of France?"}]


async def _post(base: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, Any]:
    payload = {"model": "moa-test", "messages": USER, **body}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base}/v1/chat/completions", json=payload, headers=headers) as resp,
    ):
        if payload.get("stream") and resp.status == 200:
            return resp.status, (await resp.read()).decode()
        return resp.status, await resp.json()


def _sse_events(raw: str) -> list[Any]:
    out: list[Any] = []
    for event in raw.split("\n\n"):
        if event.startswith("data: "):
            data = event.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


async def test_later_layers_and_the_aggregator_see_the_previous_answers(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    stub.behaviors.update(
        a=Behavior(reply="alpha says Paris"),
        b=Behavior(reply="beta says Paris"),
        c=Behavior(reply="gamma refined"),
    )
    config = make_config(
        stub.url, agent_extra={"a": {"systemPrompt": "You are agent {{ agent }}.", "topP": 0.5}}
    )
    base = await start_router(config)
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, *USER]
    status, body = await _post(base, {"messages": history})
    assert status == 200, body

    (a,) = stub.calls("a")
    assert a.system_prompt.startswith("You are agent a.")
    assert a.body["messages"][1:] == history  # multi-turn history passes through after the system prompt
    assert (a.body["top_p"], a.body["max_tokens"], a.body["stream"]) == (0.5, 512, False)
    assert "alpha" not in a.system_prompt  # layer 1 sees no answers

    (c,) = stub.calls("c")
    assert "1. alpha says Paris\n2. beta says Paris" in c.system_prompt
    assert c.body["messages"][1:] == history

    (agg,) = stub.calls("agg")
    assert "synthesize" in agg.system_prompt
    assert "1. gamma refined\n2. stub answer" in agg.system_prompt
    assert "alpha says Paris" not in agg.system_prompt  # only the final layer's answers
    # Layer 2 started after layer 1 finished, the aggregator after layer 2.
    assert stub.calls("a")[0].at <= c.at <= agg.at


async def test_quorum_moves_on_and_cancels_the_straggler(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    stub.behaviors.update(slow=Behavior(hang=True))
    config = make_config(
        stub.url, [("a", "b", "slow")], policy={"minResponses": 2, "layerTimeoutSeconds": 30}
    )
    base = await start_router(config)
    started = time.monotonic()
    status, body = await _post(base, {"moa_trace": True})
    elapsed = time.monotonic() - started
    assert status == 200, body
    assert elapsed < 5  # the straggler would hang for 10 s
    assert await stub.wait_cancelled("slow")
    layer = body["moa_trace"]["layers"][0]
    assert layer["outcome"] == "quorum"
    assert {a["agent"]: a["status"] for a in layer["agents"]} == {"a": "ok", "b": "ok", "slow": "cancelled"}
    assert "slow" not in stub.calls("agg")[0].system_prompt.split("Responses from models:")[1]


async def test_deadline_bounds_latency_by_the_layer_timeout(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    stub.behaviors.update(a=Behavior(reply="fast answer"), straggler=Behavior(latency=8, reply="late answer"))
    config = make_config(stub.url, [("a", "straggler")], policy={"layerTimeoutSeconds": 0.5})
    base = await start_router(config)
    started = time.monotonic()
    status, body = await _post(base, {"moa_trace": True})
    elapsed = time.monotonic() - started
    assert status == 200, body
    assert 0.4 < elapsed < 4  # bounded by the 0.5 s deadline, not by the 8 s straggler
    assert await stub.wait_cancelled("straggler")
    layer = body["moa_trace"]["layers"][0]
    assert layer["outcome"] == "deadline"
    assert layer["agents"][1]["status"] == "timeout"
    prompt = stub.calls("agg")[0].system_prompt
    assert "fast answer" in prompt
    assert "late answer" not in prompt


async def test_skip_policy_drops_a_failing_agent(stub: StubBackend, start_router: RouterFactory) -> None:
    stub.behaviors.update(a=Behavior(reply="good answer"), b=Behavior(status=500))
    base = await start_router(make_config(stub.url, [("a", "b")], policy={"onAgentError": "skip"}))
    status, body = await _post(base, {"moa_trace": True})
    assert status == 200, body
    b = body["moa_trace"]["layers"][0]["agents"][1]
    assert (b["agent"], b["status"]) == ("b", "error")
    assert "HTTP 500" in b["error"]
    assert "stub failure" in b["error"]
    assert "good answer" in stub.calls("agg")[0].system_prompt


async def test_fail_policy_fails_the_request_naming_the_agent(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    stub.behaviors.update(b=Behavior(status=500))
    base = await start_router(make_config(stub.url, [("a", "b")], policy={"onAgentError": "fail"}))
    status, body = await _post(base, {})
    assert status == 502
    assert body["error"]["code"] == "upstream_error"
    assert "agent 'b'" in body["error"]["message"]
    assert "HTTP 500" in body["error"]["message"]
    assert stub.calls("agg") == []


async def test_fail_policy_treats_a_straggler_at_the_deadline_as_a_failure(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    stub.behaviors.update(slow=Behavior(hang=True))
    policy = {"onAgentError": "fail", "layerTimeoutSeconds": 0.3}
    base = await start_router(make_config(stub.url, [("a", "slow")], policy=policy))
    status, body = await _post(base, {})
    assert status == 504
    assert "agent 'slow'" in body["error"]["message"]
    assert "deadline" in body["error"]["message"]


async def test_a_layer_without_any_answer_fails_with_every_cause(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    stub.behaviors.update(a=Behavior(status=503), b=Behavior(reset=True))
    base = await start_router(make_config(stub.url, [("a", "b")]))
    status, body = await _post(base, {})
    assert status == 502
    assert body["error"]["code"] == "no_responses"
    message = body["error"]["message"]
    assert "layer 1" in message
    assert "a: upstream returned HTTP 503" in message
    assert "b: connection" in message


async def test_upstream_read_timeout_is_a_504_naming_the_agent(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    stub.behaviors.update(b=Behavior(hang=True))
    config = make_config(
        stub.url,
        [("a", "b")],
        policy={"onAgentError": "fail"},
        limits={"upstream": {"readTimeoutSeconds": 0.3}},
    )
    base = await start_router(config)
    started = time.monotonic()
    status, body = await _post(base, {})
    assert status == 504
    assert time.monotonic() - started < 4
    assert "agent 'b'" in body["error"]["message"]
    assert "timed out" in body["error"]["message"]


async def test_connection_reset_names_the_agent(stub: StubBackend, start_router: RouterFactory) -> None:
    stub.behaviors.update(a=Behavior(reset=True))
    base = await start_router(make_config(stub.url, [("a",)], policy={"onAgentError": "fail"}))
    status, body = await _post(base, {})
    assert status == 502
    assert "agent 'a'" in body["error"]["message"]
    assert "connection" in body["error"]["message"]


async def test_unreachable_upstream_is_a_connection_error(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    config = make_config(stub.url, [("a",)], policy={"onAgentError": "fail"})
    dead = config.model_copy(
        update={
            "layers": [
                config.layers[0].model_copy(
                    update={
                        "agents": [
                            config.layers[0].agents[0].model_copy(update={"url": "http://127.0.0.1:9/v1"})
                        ]
                    }
                )
            ]
        }
    )
    base = await start_router(dead)
    status, body = await _post(base, {})
    assert status == 502
    assert "agent 'a'" in body["error"]["message"]
    assert "connection failed" in body["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
async def test_malformed_sse_from_the_aggregator_is_a_502(
    stub: StubBackend, start_router: RouterFactory, stream: bool
) -> None:
    stub.behaviors.update(agg=Behavior(malformed_sse=True))
    base = await start_router(make_config(stub.url))
    status, body = await _post(base, {"stream": stream})
    # No token had been produced yet, so even a streaming request still gets a real HTTP error.
    assert status == 502
    assert "agent 'agg'" in body["error"]["message"]
    assert "malformed SSE" in body["error"]["message"]


async def test_aggregator_500_is_a_502(stub: StubBackend, start_router: RouterFactory) -> None:
    stub.behaviors.update(agg=Behavior(status=500, error_message="model crashed"))
    base = await start_router(make_config(stub.url))
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0) as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="moa-test", messages=USER_PARAM)
    assert info.value.status_code == 502
    assert "agent 'agg'" in info.value.message
    assert "model crashed" in info.value.message


async def test_aggregator_reset_mid_stream_ends_the_stream_with_an_error_event(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    stub.behaviors.update(agg=Behavior(reply="first second third", reset_mid_stream=True))
    base = await start_router(make_config(stub.url))
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0) as client:
        stream = await client.chat.completions.create(model="moa-test", messages=USER_PARAM, stream=True)
        got: list[str] = []

        async def consume() -> None:
            async for chunk in stream:
                got.extend(c.delta.content or "" for c in chunk.choices)

        with pytest.raises(openai.APIError, match=r"agent 'agg'.*connection lost"):
            await consume()
    assert "".join(got) == "first"


async def test_client_disconnect_cancels_every_upstream_call(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    stub.behaviors.update(a=Behavior(hang=True), b=Behavior(hang=True))
    base = await start_router(make_config(stub.url, [("a", "b")]))
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(_post(base, {}), timeout=0.5)
    assert await stub.wait_cancelled("a")
    assert await stub.wait_cancelled("b")


async def test_client_disconnect_mid_stream_cancels_the_aggregator(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    stub.behaviors.update(agg=Behavior(reply=" ".join(["word"] * 50), chunk_delay=0.1))
    base = await start_router(make_config(stub.url))
    payload = {"model": "moa-test", "messages": USER, "stream": True}
    async with aiohttp.ClientSession() as http:
        resp = await http.post(f"{base}/v1/chat/completions", json=payload)
        assert resp.status == 200
        await resp.content.readuntil(b'"content":"word"')  # the answer is streaming
        resp.close()  # drop the connection
    assert await stub.wait_cancelled("agg")


async def test_template_that_escapes_at_runtime_fails_cleanly(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    # Trial renders at config load use one sample answer, so this only trips with two real answers.
    escape = "{% if responses|length > 1 %}{{ ''.__class__.__mro__[1].__subclasses__() }}{% endif %}"
    base = await start_router(
        make_config(stub.url, [("a", "b")], aggregator_extra={"promptTemplate": escape})
    )
    status, body = await _post(base, {})
    assert status == 500
    assert body["error"]["code"] == "prompt_template_error"
    assert "agent 'agg'" in body["error"]["message"]
    assert "SecurityError" in body["error"]["message"]
    assert stub.calls("agg") == []


async def test_trace_in_the_body_on_request_field_or_header(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    stub.behaviors.update(a=Behavior(reply="A", latency=0.05))
    base = await start_router(make_config(stub.url))
    _, plain = await _post(base, {})
    assert "moa_trace" not in plain
    for body, headers in (({"moa_trace": True}, None), ({}, {"X-MoA-Trace": "1"})):
        status, result = await _post(base, body, headers)
        assert status == 200
        trace = result["moa_trace"]
        assert [layer["layer"] for layer in trace["layers"]] == [1, 2]
        a = trace["layers"][0]["agents"][0]
        assert (a["agent"], a["model"], a["status"], a["content"]) == ("a", "a", "ok", "A")
        assert a["latency_ms"] >= 40
        assert a["usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
        assert trace["aggregator"]["status"] == "ok"
        assert "time_to_first_token_ms" in trace["aggregator"]
        assert trace["usage"] == result["usage"]


async def test_streaming_trace_sends_agent_events_before_tokens(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    stub.behaviors.update(a=Behavior(reply="A"), agg=Behavior(reply="final words"))
    base = await start_router(make_config(stub.url))
    status, raw = await _post(base, {"stream": True, "moa_trace": True})
    assert status == 200
    events = _sse_events(raw)
    assert events[-1] == "[DONE]"
    kinds = [
        e["moa"]["type"] if "moa" in e else ("trace" if "moa_trace" in e else "token") for e in events[:-1]
    ]
    # role chunk first (headers go out at once), then layer events, then tokens, then the trace.
    assert kinds[0] == "token"
    first_text = next(
        i for i, e in enumerate(events[:-1]) if e.get("choices") and e["choices"][0]["delta"].get("content")
    )
    assert kinds.index("aggregator_start") < first_text
    assert kinds[1:].count("agent") == 4
    assert kinds.count("layer_start") == 2
    assert kinds[-1] == "trace"
    agent_a = next(
        e["moa"] for e in events[:-1] if e.get("moa", {}).get("type") == "agent" and e["moa"]["agent"] == "a"
    )
    assert agent_a["content"] == "A"
    assert agent_a["status"] == "ok"
    assert all(e["choices"] == [] for e in events[:-1] if "moa" in e or "moa_trace" in e)


async def test_openai_client_still_parses_a_traced_stream(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    stub.behaviors.update(agg=Behavior(reply="hello there"))
    base = await start_router(make_config(stub.url))
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="moa-test",
            messages=USER_PARAM,
            stream=True,
            extra_body={"moa_trace": True},
        )
        chunks = [c async for c in stream]
    assert "".join(ch.delta.content or "" for c in chunks for ch in c.choices) == "hello there"
    extras = [c.model_extra or {} for c in chunks]
    assert any("moa" in e for e in extras)
    assert "moa_trace" in extras[-1]
