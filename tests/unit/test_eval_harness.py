"""`kubemoe eval` against deterministic stand-in backends whose accuracies are known exactly.

The stand-ins answer "Task i: What is a+b?" right on a known set of tasks: all models share one seeded order
of the tasks, and a model of accuracy p is right on the first p*N of it (wrong answers are all a+b+1). So a
model alone scores exactly p, and an aggregator that takes the majority of three proposers is right exactly
where at least two are, i.e. on the first median(p)*N tasks. Everything runs over real loopback sockets,
through the real router.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from kubemoe.evaluate.cli import main as eval_main
from kubemoe.evaluate.cli import parse_sweep
from kubemoe.evaluate.dataset import EvalError, RegexGrader, load_tasks
from kubemoe.evaluate.graders import Grade, grade_regex, run_python
from kubemoe.evaluate.report import ProgressBar, percentile

N = 20
ACCURACY = {"good": 0.8, "fair": 0.6, "poor": 0.4, "coder": 0.5}
ORDER = random.Random(1234).sample(range(N), N)
_Q = re.compile(r"Task (\d+): What is (\d+)\+(\d+)\?")


def right(model: str, task: int) -> bool:
    return task in ORDER[: round(ACCURACY[model] * N)]


def reply(model: str, body: dict[str, Any]) -> str:
    messages = body["messages"]
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    user = messages[-1]["content"]
    if model == "agg":  # majority of the listed responses (the default aggregator prompt numbers them)
        if "Responses from models:" not in system:
            return "I do not know"  # asked alone: always wrong
        listed = system.split("Responses from models:")[-1]
        answers = [a.strip() for a in re.split(r"(?m)^\d+\. ", listed)[1:]]
        return max(answers, key=answers.count)
    if model == "critic" and "Reference answer:" in user:
        ref = re.search(r"Reference answer:\n(.*)", user)
        ans = re.search(r"Answer:\n(.*?)\n\n", user, re.DOTALL)
        return "CORRECT" if ref and ans and ref.group(1).strip() == ans.group(1).strip() else "INCORRECT"
    if model == "critic":
        return "no idea"
    if model == "coder":
        task = int(re.search(r"Task (\d+)", user).group(1))  # type: ignore[union-attr]
        if "loop" in user:
            return "```python\nwhile True:\n    pass\n```"
        op = "+" if right(model, task) else "-"
        return f"Here you go:\n```python\ndef add(a, b):\n    return a {op} b\n```"
    m = _Q.search(user)
    assert m, user
    task, a, b = (int(x) for x in m.groups())
    return str(a + b if right(model, task) else a + b + 1)


@pytest.fixture
async def backend() -> AsyncIterator[str]:
    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        text = reply(body["model"], body)
        return web.json_response(
            {
                "id": "x",
                "object": "chat.completion",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            }
        )

    async def stream(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return await handle_plain(request, body)
        text = reply(body["model"], body)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for chunk in (
            {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}},
        ):
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def handle_plain(request: web.Request, body: dict[str, Any]) -> web.Response:
        text = reply(body["model"], body)
        return web.json_response(
            {
                "id": "x",
                "object": "chat.completion",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            }
        )

    del handle
    app = web.Application()
    app.router.add_post("/v1/chat/completions", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}/v1"
    await runner.cleanup()


def write_pipeline(tmp: Path, url: str, proposers: list[str], *, extra_agents: list[str] = ()) -> Path:  # type: ignore[assignment]
    doc = {
        "apiVersion": "kubemoe.io/v1alpha1",
        "kind": "MoAPipeline",
        "metadata": {"name": "moa-eval", "namespace": "default"},
        "spec": {
            "layers": [{"agents": [{"name": p, "endpoint": {"url": url, "model": p}} for p in proposers]}],
            "aggregator": {"endpoint": {"url": url, "model": "agg"}},
        },
    }
    for name in extra_agents:
        doc["spec"]["layers"][0]["agents"].append({"name": name, "endpoint": {"url": url, "model": name}})  # type: ignore[index]
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def write_tasks(tmp: Path, lines: list[dict[str, Any]]) -> Path:
    path = tmp / "tasks.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def arithmetic(n: int = N) -> list[dict[str, Any]]:
    return [
        {
            "id": f"t{i}",
            "prompt": f"Task {i}: What is {i}+{2 * i}?",
            "grader": {"type": "exact", "answer": str(3 * i)},
        }
        for i in range(n)
    ]


async def run_cli(*args: str) -> tuple[int, str, str]:
    """`kubemoe eval` as a real child process (the stand-in keeps serving in this event loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kubemoe.cli",
        "eval",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_pipeline_and_models_alone_score_their_known_accuracies(backend: str, tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path, backend, ["good", "fair", "poor"])
    tasks = write_tasks(tmp_path, arithmetic())
    out_json, out_png = tmp_path / "results.json", tmp_path / "results.png"
    rc, out, err = await run_cli(
        "-f",
        str(pipeline),
        "--dataset",
        str(tasks),
        "-o",
        str(out_json),
        "--plot",
        str(out_png),
        "--price",
        "good=1000",
    )
    assert rc == 0, err
    results = json.loads(out_json.read_text())
    acc = {c["configuration"]: c["accuracy"] for c in results["configurations"]}
    assert acc == {"pipeline": 0.6, "model:good": 0.8, "model:fair": 0.6, "model:poor": 0.4, "model:agg": 0.0}
    assert all(c["errors"] == 0 for c in results["configurations"])
    conf = {c["configuration"]: c for c in results["configurations"]}
    assert conf["pipeline"]["tokens"] == N * 4 * 15  # three proposers and the aggregator per task
    assert conf["model:good"]["tokens"] == N * 15
    assert conf["model:good"]["cost"] == pytest.approx(N * 15 * 1000 / 1e6)
    assert conf["pipeline"]["cost"] == pytest.approx(N * 15 * 1000 / 1e6)  # only the good agent is priced
    assert 0 < conf["pipeline"]["latency_p50_seconds"] <= conf["pipeline"]["latency_p95_seconds"]
    assert len(results["results"]) == 5 * N
    assert "pipeline" in out
    assert "80.0%" in out
    assert "60.0%" in out
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "] 100/100" in err  # the progress bar reached the end


async def test_sweep_layers_and_agents(backend: str, tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path, backend, ["good", "fair", "poor"])
    tasks = write_tasks(tmp_path, arithmetic())
    out_json = tmp_path / "sweep.json"
    rc, _out, err = await run_cli(
        "-f",
        str(pipeline),
        "--dataset",
        str(tasks),
        "--sweep",
        "layers=1,2",
        "agents=1,3",
        "--no-models",
        "-q",
        "-o",
        str(out_json),
    )
    assert rc == 0, err
    conf = {c["configuration"]: c for c in json.loads(out_json.read_text())["configurations"]}
    # One agent: the good model alone, then aggregated; three: the majority of good, fair, poor.
    assert {k: v["accuracy"] for k, v in conf.items()} == {
        "moa L=1 A=1": 0.8,
        "moa L=1 A=3": 0.6,
        "moa L=2 A=1": 0.8,
        "moa L=2 A=3": 0.6,
    }
    assert conf["moa L=2 A=3"]["tokens"] == N * (2 * 3 + 1) * 15
    assert err == ""  # -q: no progress bar


async def test_python_grader_end_to_end(backend: str, tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path, backend, ["coder"])
    lines = [
        {
            "id": f"py{i}",
            "prompt": f"Task {i}: write add(a, b)",
            "grader": {"type": "python", "tests": "assert add(2, 3) == 5"},
        }
        for i in range(N)
    ]
    lines.append(
        {
            "id": "loop",
            "prompt": "Task 0: loop forever",
            "grader": {"type": "python", "tests": "pass", "timeoutSeconds": 1},
        }
    )
    tasks = write_tasks(tmp_path, lines)
    out_json = tmp_path / "r.json"
    rc, _, err = await run_cli("-f", str(pipeline), "--dataset", str(tasks), "-q", "-o", str(out_json))
    assert rc == 0, err
    report = json.loads(out_json.read_text())
    results = {(r["configuration"], r["task"]): r for r in report["results"]}
    for config in ("pipeline", "model:coder"):  # one proposer: the aggregator passes its answer on
        py = [results[config, f"py{i}"]["correct"] for i in range(N)]
        assert [i for i in range(N) if py[i]] == sorted(ORDER[: round(ACCURACY["coder"] * N)])
        assert results[config, "loop"]["correct"] is False
        assert "timed out" in results[config, "loop"]["detail"]


async def test_judge_grader_asks_the_named_model(backend: str, tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path, backend, ["good", "critic"])
    lines = [
        {**t, "grader": {"type": "judge", "judge": "critic", "reference": t["grader"]["answer"]}}
        for t in arithmetic()
    ]
    tasks = write_tasks(tmp_path, lines)
    out_json = tmp_path / "j.json"
    rc, _, err = await run_cli("-f", str(pipeline), "--dataset", str(tasks), "-q", "-o", str(out_json))
    assert rc == 0, err
    acc = {c["configuration"]: c["accuracy"] for c in json.loads(out_json.read_text())["configurations"]}
    assert acc["model:good"] == 0.8
    assert acc["model:critic"] == 0.0
    lines[0]["grader"]["judge"] = "nobody"
    write_tasks(tmp_path, lines)
    rc, _, err = await run_cli(
        "-f", str(pipeline), "--dataset", str(tasks), "-q", "-o", str(out_json), "--no-models"
    )
    assert rc == 0, err
    first = next(r for r in json.loads(out_json.read_text())["results"] if r["task"] == "t0")
    assert "judge 'nobody' is not a model of the pipeline" in first["detail"]


async def test_python_sandbox_limits() -> None:
    env = await run_python(
        "import os, sys",
        "assert set(os.environ) <= {'PATH', 'HOME', 'LC_CTYPE'}, dict(os.environ)",
        timeout_seconds=10,
    )
    assert env == Grade(True), env
    cwd = await run_python(
        "import os", "assert os.getcwd().split('/')[-1].startswith('kubemoe-eval-')", timeout_seconds=10
    )
    assert cwd.correct, cwd
    isolated = await run_python("import sys", "assert sys.flags.isolated == 1", timeout_seconds=10)
    assert isolated.correct, isolated
    memory = await run_python("x = bytearray(4 << 30)", "pass", timeout_seconds=10)
    assert not memory.correct
    assert "MemoryError" in memory.detail
    slow = await run_python("import time\ntime.sleep(30)", "pass", timeout_seconds=0.5)
    assert not slow.correct
    assert "timed out" in slow.detail
    failing = await run_python("def f(): return 1", "assert f() == 2", timeout_seconds=10)
    assert not failing.correct
    assert "AssertionError" in failing.detail


def test_regex_grader_and_percentiles() -> None:
    assert grade_regex(RegexGrader(type="regex", pattern=r"\b1[137]\b"), "It is 13.").correct
    assert not grade_regex(RegexGrader(type="regex", pattern=r"\b1[137]\b"), "It is 12.").correct
    bad = grade_regex(RegexGrader(type="regex", pattern="("), "x")
    assert not bad.correct
    assert "invalid pattern" in bad.detail
    assert percentile([1, 2, 3, 4], 50) == 2
    assert percentile(list(range(1, 101)), 95) == 95
    assert percentile([], 50) == 0.0


def test_bad_input_names_file_and_line(tmp_path: Path) -> None:
    path = write_tasks(tmp_path, [*arithmetic(2), {"id": "x", "prompt": "p", "grader": {"type": "fuzzy"}}])
    with pytest.raises(EvalError, match=r"tasks.jsonl:3: invalid task at grader"):
        load_tasks(path)
    dup = write_tasks(tmp_path, [*arithmetic(2), arithmetic(1)[0]])
    with pytest.raises(EvalError, match=r"tasks.jsonl:3: duplicate task id .t0."):
        load_tasks(dup)
    (tmp_path / "broken.jsonl").write_text('{"id": "a",\n')
    with pytest.raises(EvalError, match=r"broken.jsonl:1: invalid task"):
        load_tasks(tmp_path / "broken.jsonl")
    with pytest.raises(EvalError, match="--sweep: unknown dimension 'depth'"):
        parse_sweep(["depth=1"])
    with pytest.raises(EvalError, match=r"values must be 1\.\.8"):
        parse_sweep(["layers=0,9"])


def test_cli_reports_bad_input_with_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tasks = write_tasks(tmp_path, arithmetic(1))
    (tmp_path / "p.yaml").write_text("kind: MoEModel\n")
    assert eval_main(["-f", str(tmp_path / "p.yaml"), "--dataset", str(tasks)]) == 1
    assert "no MoAPipeline in the file" in capsys.readouterr().err
    doc = {
        "kind": "MoAPipeline",
        "metadata": {"name": "p", "namespace": "d"},
        "spec": {
            "layers": [{"agents": [{"name": "a", "moeModelRef": {"name": "mix"}}]}],
            "aggregator": {"moeModelRef": {"name": "mix"}},
        },
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    assert eval_main(["-f", str(tmp_path / "p.yaml"), "--dataset", str(tasks), "-q"]) == 1
    assert "pass --model-url mix=" in capsys.readouterr().err
    assert (
        eval_main(
            [
                "-f",
                str(tmp_path / "p.yaml"),
                "--dataset",
                str(tasks),
                "--url",
                "http://127.0.0.1:9/v1",
                "--sweep",
                "layers=2",
            ]
        )
        == 1
    )
    assert "cannot be used with --url" in capsys.readouterr().err


def test_progress_bar_without_a_terminal_prints_tenths() -> None:
    import io

    buf = io.StringIO()
    bar = ProgressBar(buf, width=10)
    for i in range(1, 101):
        bar(i, 100, "pipeline")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 11  # the first call, then once per tenth
    assert lines[0] == "[..........] 1/100 pipeline"
    assert lines[-1] == "[##########] 100/100 pipeline"
