"""Evaluation tasks: one JSON object per line, each with a prompt and how to grade the answer.

    {"id": "add-1", "prompt": "What is 2+3?", "grader": {"type": "exact", "answer": "5"}}
    {"id": "re-1", "prompt": "Name a prime > 10", "grader": {"type": "regex", "pattern": "\\\\b(11|13|17)\\\\b"}}
    {"id": "py-1", "prompt": "Write add(a, b)", "grader": {"type": "python", "tests": "assert add(2, 3) == 5"}}
    {"id": "j-1", "prompt": "Why is the sky blue?", "grader": {"type": "judge", "judge": "critic",
     "reference": "Rayleigh scattering"}}

`messages` may replace `prompt` (a whole conversation). Unknown fields are errors, and every error names the
line, so a typo in line 812 of a dataset fails before the first call rather than after an hour of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic.alias_generators import to_camel


class EvalError(ValueError):
    """A dataset, pipeline or option the evaluation cannot use; the message says where."""


class _Strict(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class ExactGrader(_Strict):
    """Right when the answer equals `answer` (surrounding whitespace, case and a final period ignored)."""

    type: Literal["exact"]
    answer: str
    case_sensitive: bool = False


class RegexGrader(_Strict):
    """Right when `pattern` (Python `re`) matches anywhere in the answer."""

    type: Literal["regex"]
    pattern: str
    ignore_case: bool = True


class PythonGrader(_Strict):
    """Right when `tests` pass after the answer's code (its first fenced block, else all of it) runs in a
    fresh, isolated interpreter with a time limit (see `graders.run_python`)."""

    type: Literal["python"]
    tests: str = Field(min_length=1)
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)


class JudgeGrader(_Strict):
    """Right when the named model (an agent of the pipeline, or `aggregator`) says so."""

    type: Literal["judge"]
    judge: str = Field(min_length=1)
    reference: str | None = None
    rubric: str | None = None


Grader = Annotated[ExactGrader | RegexGrader | PythonGrader | JudgeGrader, Field(discriminator="type")]


class Task(_Strict):
    id: str = Field(min_length=1, max_length=256)
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    grader: Grader

    @model_validator(mode="after")
    def _one_input(self) -> Task:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("set exactly one of prompt and messages")
        return self

    def conversation(self) -> list[dict[str, Any]]:
        return self.messages if self.messages is not None else [{"role": "user", "content": self.prompt}]

    def question(self) -> str:
        """The last user message, for the judge."""
        users = [m for m in self.conversation() if m.get("role") == "user"]
        return str(users[-1].get("content", "")) if users else ""


_TASK = TypeAdapter(Task)


def load_tasks(path: str | Path) -> list[Task]:
    """Read a JSONL dataset; blank lines and lines starting with # are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise EvalError(f"{path}: cannot read dataset: {exc}") from exc
    tasks: list[Task] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            task = _TASK.validate_python(json.loads(line))
        except ValueError as exc:  # JSONDecodeError and ValidationError are ValueErrors
            detail = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            where = (
                ".".join(str(p) for p in exc.errors()[0]["loc"]) if isinstance(exc, ValidationError) else ""
            )
            raise EvalError(
                f"{path}:{number}: invalid task{' at ' + where if where else ''}: {detail}"
            ) from exc
        if task.id in seen:
            raise EvalError(f"{path}:{number}: duplicate task id {task.id!r}")
        seen.add(task.id)
        tasks.append(task)
    if not tasks:
        raise EvalError(f"{path}: no tasks")
    return tasks
