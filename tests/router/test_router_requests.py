"""Bad requests get a 400 naming the field, over real sockets; a hypothesis fuzzer finds no 500.

The fuzzer draws requests from every field the router's own schema declares (the one `/openapi.json` serves),
with values of every JSON type, plus unknown fields, broken messages and raw bytes. A router and its stub
backend run on an event loop in a background thread, so hypothesis drives them from plain synchronous code.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moa_stub import StubBackend
from router_harness import RouterFactory, make_config
from test_router_pipeline import USER, _post

from kubemoe.router.request import ChatRequest
from kubemoe.router.server import build_app


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("body", "param", "phrase"),
    [
        ({"messages": [{"role": "user"}]}, "messages.0.content", "needs content"),
        ({"messages": [{"role": "user", "content": None}]}, "messages.0.content", "needs content"),
        ({"messages": [{"role": "user", "content": 42}]}, "messages.0.content", "string or a list"),
        ({"messages": [{"role": "user", "content": []}]}, "messages.0.content", "must not be empty"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages.0.content.0.text",
            "needs",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
            "messages.0.content.0.text",
            "",
        ),
        ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages.0.role", ""),
        (
            {"messages": [{"role": "user", "content": "x", "extra": _nested(3)}]},
            "messages.0.extra",
            "unrecognized",
        ),
        ({"messages": []}, "messages", ""),
        ({"messages": "hi"}, "messages", ""),
        ({"stream": "yes"}, "stream", "boolean"),
        ({"stream": 1}, "stream", "boolean"),
        ({"moa_trace": "true"}, "moa_trace", "boolean"),
        ({"stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage", ""),
        ({"max_tokens": 5.5}, "max_tokens", ""),
        ({"max_tokens": "5"}, "max_tokens", ""),
        ({"max_tokens": 0}, "max_tokens", ""),
        ({"model": 3}, "model", ""),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "not supported"),
        ({"tool_choice": "auto"}, "tool_choice", "not supported"),
        ({"n": 2}, "n", "not supported"),
        ({"logprobs": True}, "logprobs", "not supported"),
        ({"top_logprobs": 3}, "top_logprobs", "not supported"),
        ({"functions": [{"name": "f"}]}, "functions", "not supported"),
        ({"response_format": {"type": "json_object"}}, "response_format", "not supported"),
        ({"modalities": ["text", "audio"]}, "modalities", "not supported"),
        ({"audio": {"voice": "alloy"}}, "audio", "not supported"),
        ({"strem": True}, "strem", "unrecognized request argument"),
    ],
)
async def test_bad_requests_get_400_naming_the_field(
    body: dict[str, Any], param: str, phrase: str, stub: StubBackend, start_router: RouterFactory
) -> None:
    base = await start_router(make_config(stub.url, [("a",)]))
    status, result = await _post(base, body)
    assert status == 400, result
    err = result["error"]
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param, err
    assert param in err["message"]
    assert phrase in err["message"]
    assert stub.received == []  # refused before any upstream was called


@pytest.mark.parametrize(
    "body",
    [
        {"n": 1, "tools": [], "tool_choice": "none", "logprobs": False},
        {"temperature": 0.2, "seed": 7, "user": "u", "stop": ["\n"]},
        {"metadata": {"deep": _nested(40)}},
    ],
)
async def test_do_nothing_values_and_sampling_params_are_accepted(
    body: dict[str, Any], stub: StubBackend, start_router: RouterFactory
) -> None:
    base = await start_router(make_config(stub.url, [("a",)]))
    status, result = await _post(base, body)
    assert status == 200, result
    # Sampling comes from the pipeline: the client's settings are not forwarded.
    assert stub.calls("a")[0].body["temperature"] == 0.7


async def test_deeply_nested_json_is_a_400_not_a_500(stub: StubBackend, start_router: RouterFactory) -> None:
    import aiohttp

    base = await start_router(make_config(stub.url, [("a",)]))
    deep = "[" * 100_000 + "]" * 100_000
    raw = f'{{"model": "moa-test", "messages": {json.dumps(USER)}, "metadata": {deep}}}'
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{base}/v1/chat/completions", data=raw, headers={"Content-Type": "application/json"}
        ) as resp,
    ):
        assert resp.status == 400
        body = await resp.json()
    assert "not valid JSON" in body["error"]["message"]
    assert "recursion" in body["error"]["message"].lower()


async def test_openapi_document_describes_the_request_schema(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    import aiohttp

    base = await start_router(make_config(stub.url, [("a",)]))
    async with aiohttp.ClientSession() as http, http.get(f"{base}/openapi.json") as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc["openapi"].startswith("3.1")
    schemas = doc["components"]["schemas"]
    request = schemas["ChatRequest"]
    assert request["additionalProperties"] is False
    assert request["properties"]["stream"]["type"] == "boolean"
    assert set(request["required"]) == {"model", "messages"}
    assert "ChatMessage" in schemas
    op = doc["paths"]["/v1/chat/completions"]["post"]
    assert (
        op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        == "#/components/schemas/ChatRequest"
    )


# --- fuzzing -------------------------------------------------------------------------------------------------

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
_PART = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "audio"]) | _JSON},
    optional={
        "text": st.text(max_size=20) | _JSON,
        "image_url": st.fixed_dictionaries({"url": st.text()}) | _JSON,
    },
)
_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "function"]) | _JSON},
    optional={
        "content": st.text(max_size=40) | st.lists(_PART, max_size=3) | _JSON,
        "name": st.text(max_size=10) | _JSON,
        "tool_calls": _JSON,
        "refusal": st.none() | _JSON,
    },
)
#: Every field the schema declares gets drawn (so a field added to ChatRequest is fuzzed too), plus unknown ones.
_FIELDS = {name: _JSON for name in ChatRequest.model_fields if name not in ("model", "messages")}
_FIELDS |= {
    "stream": st.booleans() | _JSON,
    "n": st.integers(0, 3) | _JSON,
    "max_tokens": st.integers(-2, 64) | _JSON,
}
_REQUEST = st.fixed_dictionaries(
    {
        "model": st.just("moa-test") | _JSON,
        "messages": st.lists(_MESSAGE, min_size=0, max_size=3) | _JSON,
    },
    optional={**_FIELDS, "bogus_field": _JSON},
)
#: Requests that are valid or nearly so (one odd field at most), so the fuzzer reaches the pipeline too.
_TEXT_PART = st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=30)})
_GOOD_MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["system", "developer", "user", "assistant"]),
        "content": st.text(max_size=60) | st.lists(_TEXT_PART, min_size=1, max_size=2),
    }
)
_NEAR_VALID = st.fixed_dictionaries(
    {"model": st.just("moa-test"), "messages": st.lists(_GOOD_MESSAGE, min_size=1, max_size=3)},
    optional={
        "stream": st.booleans(),
        "moa_trace": st.booleans(),
        "max_tokens": st.integers(1, 64),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "n": st.just(1),
        "tools": st.just([]),
        "temperature": st.floats(0, 2),
        "user": st.text(max_size=10),
    },
)


class _LiveRouter:
    """A stub and a router on their own event loop in a thread; `post` is synchronous (for hypothesis)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.stub = StubBackend()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> int:
        from aiohttp import web

        await self.stub.start()
        self.runner = web.AppRunner(
            build_app(make_config(self.stub.url, [("a", "b")])), handler_cancellation=True
        )
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        return int(self.runner.addresses[0][1])

    def post(self, raw: bytes) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(
                "POST", "/v1/chat/completions", body=raw, headers={"Content-Type": "application/json"}
            )
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def close(self) -> None:
        async def stop() -> None:
            await self.runner.cleanup()
            await self.stub.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def live() -> Iterator[_LiveRouter]:
    router = _LiveRouter()
    yield router
    router.close()


def _check(status: int, raw: bytes) -> None:
    assert status in (200, 400, 403, 404), (status, raw[:500])
    if status != 200:
        err = json.loads(raw)["error"]
        assert isinstance(err["message"], str)
        if status == 403:  # the playground's extensions, which this router's pipeline does not allow
            assert (err["type"], err["param"]) in {
                ("permission_error", p) for p in ("moa_pipeline", "moa_alone")
            }
        else:
            assert err["type"] == "invalid_request_error"
    elif raw.startswith(b"data: "):
        assert raw.rstrip().endswith(b"data: [DONE]"), raw[-300:]
    else:
        assert json.loads(raw)["object"] == "chat.completion"


_FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_FUZZ
@given(body=_REQUEST)
def test_fuzzed_requests_never_get_a_500(live: _LiveRouter, body: dict[str, Any]) -> None:
    status, raw = live.post(json.dumps(body).encode())
    _check(status, raw)


@_FUZZ
@given(body=_NEAR_VALID, odd=st.none() | st.tuples(st.sampled_from(sorted(_FIELDS)), _JSON))
def test_fuzzed_near_valid_requests_are_served_or_refused_cleanly(
    live: _LiveRouter, body: dict[str, Any], odd: tuple[str, Any] | None
) -> None:
    if odd is not None:
        body[odd[0]] = odd[1]
    status, raw = live.post(json.dumps(body).encode())
    _check(status, raw)
    if odd is None:
        assert status == 200, raw[:500]  # a valid request is served


@_FUZZ
@given(raw=st.binary(max_size=200) | _JSON.map(lambda v: json.dumps(v).encode()))
def test_fuzzed_bodies_never_get_a_500(live: _LiveRouter, raw: bytes) -> None:
    status, out = live.post(raw)
    _check(status, out)
