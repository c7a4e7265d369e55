"""Graders: exact, regex, python (unit tests in a sandboxed subprocess), judge (a named model).

The python grader runs code a model wrote, so it runs it as little trusted as a subprocess allows here:
`python -I` (no user site, no PYTHON* variables, no script directory on sys.path), an empty environment, a
fresh temporary working directory that is deleted afterwards, its own session (so the whole process group
is killed at the time limit), and POSIX resource limits on CPU seconds, address space, file size and
processes. It is not a container: code can still read world-readable files and open sockets; run
`kubemoe eval` on untrusted datasets inside one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from kubemoe.evaluate.dataset import ExactGrader, JudgeGrader, PythonGrader, RegexGrader, Task

_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)
#: Address space of the graded code (bytes); enough for the interpreter and ordinary tests.
_MEMORY_LIMIT = 1 << 30


@dataclass(frozen=True)
class Grade:
    correct: bool
    detail: str = ""


def _normal(text: str, *, case_sensitive: bool) -> str:
    text = " ".join(text.split()).strip().rstrip(".")
    return text if case_sensitive else text.casefold()


def grade_exact(grader: ExactGrader, answer: str) -> Grade:
    ok = _normal(answer, case_sensitive=grader.case_sensitive) == _normal(
        grader.answer, case_sensitive=grader.case_sensitive
    )
    return Grade(ok, "" if ok else f"expected {grader.answer!r}")


def grade_regex(grader: RegexGrader, answer: str) -> Grade:
    try:
        pattern = re.compile(grader.pattern, re.IGNORECASE if grader.ignore_case else 0)
    except re.error as exc:
        return Grade(False, f"invalid pattern: {exc}")
    ok = pattern.search(answer) is not None
    return Grade(ok, "" if ok else f"no match for /{grader.pattern}/")


def extract_code(answer: str) -> str:
    """The first fenced code block of the answer, else the whole answer."""
    m = _FENCE.search(answer)
    return m.group(1) if m else answer


def _limits(cpu_seconds: int) -> None:  # runs in the child between fork and exec
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_AS, (_MEMORY_LIMIT, _MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 24, 1 << 24))
    resource.setrlimit(resource.RLIMIT_NPROC, (64, 64))


async def run_python(code: str, tests: str, *, timeout_seconds: float) -> Grade:
    """Run `code` then `tests` in a sandboxed interpreter; right when it exits 0 within the time limit."""
    with tempfile.TemporaryDirectory(prefix="kubemoe-eval-") as tmp:
        script = Path(tmp) / "solution.py"
        script.write_text(f"{code}\n\n# --- tests ---\n{tests}\n", encoding="utf-8")
        cpu = max(1, int(timeout_seconds) + 1)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            str(script),
            cwd=tmp,
            env={"PATH": "/usr/bin:/bin", "HOME": tmp},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: _limits(cpu),
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout_seconds)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            return Grade(False, f"timed out after {timeout_seconds:g}s")
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
    if proc.returncode == 0:
        return Grade(True)
    tail = out.decode("utf-8", "replace").strip().splitlines()[-1:] if out else []
    return Grade(False, f"exit {proc.returncode}: {tail[0] if tail else ''}"[:300])


#: Asks a model a question and returns its text: (judge name, messages) -> answer.
JudgeCall = Callable[[str, list[dict[str, str]]], Awaitable[str]]

JUDGE_PROMPT = (
    "You grade answers. Reply with exactly one word: CORRECT if the answer is right, INCORRECT otherwise."
)


def judge_messages(task: Task, grader: JudgeGrader, answer: str) -> list[dict[str, str]]:
    parts = [f"Question:\n{task.question()}", f"Answer:\n{answer}"]
    if grader.reference:
        parts.append(f"Reference answer:\n{grader.reference}")
    if grader.rubric:
        parts.append(f"Rubric:\n{grader.rubric}")
    return [{"role": "system", "content": JUDGE_PROMPT}, {"role": "user", "content": "\n\n".join(parts)}]


async def grade(task: Task, answer: str, *, judge: JudgeCall | None = None) -> Grade:
    g = task.grader
    if isinstance(g, ExactGrader):
        return grade_exact(g, answer)
    if isinstance(g, RegexGrader):
        return grade_regex(g, answer)
    if isinstance(g, PythonGrader):
        return await run_python(extract_code(answer), g.tests, timeout_seconds=g.timeout_seconds)
    if judge is None:
        return Grade(False, "no judge available")
    verdict = (await judge(g.judge, judge_messages(task, g, answer))).strip().upper()
    ok = verdict.startswith("CORRECT")
    return Grade(ok, "" if ok else f"judge {g.judge}: {verdict[:80]}")
