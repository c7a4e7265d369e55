"""The benchmark runner: ``python -m hack.bench.run [--quick] [--results-dir DIR] [subject ...]``.

Every module of ``hack/bench`` that exposes ``run(ctx)`` (one positional parameter, see ``common.py``) is a
subject; helper modules (``common``, ``plotting``, a baseline server, ...) expose none and are skipped, so a
new subject plugs in by existing. Each subject runs in a child process of its own (``--child NAME``) with a
time budget: a hang or a crash of one never takes the others down, and is reported as a failed subject,
never dropped. A subject may declare ``BUDGET_S = (quick_seconds, full_seconds)``; the default is
:data:`DEFAULT_BUDGET_S`.

Output: each subject's table as it finishes, then one summary table (subject, figure, value, goal, result,
CI bound), the plots with their paths, and the same summary as ``summary.json`` in the results folder
(default ``$KUBEMOE_CACHE/bench-results/<UTC timestamp>``, outside the repository; ``latest`` points at the
newest).

Exit status: 1 when a subject failed to run, or, with ``--quick`` (CI), when a figure missed its generous
``bound``; a missed goal alone is reported, not fatal (goals are for people reading the table).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import math
import os
import pkgutil
import platform
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from hack.bench._figures import PARTIAL_FIGURES
from hack.bench.common import Context, Figure

PACKAGE = "hack.bench"
REPO_ROOT = Path(__file__).resolve().parents[2]
#: Modules of hack/bench that are never subjects, whatever they define.
NOT_SUBJECTS = frozenset({"run", "common"})
#: Cheap subjects first, so a slow one at the end cannot starve them of a CI run's attention.
PREFERRED_ORDER = ("planner", "router", "stability", "operator_scale")
#: (quick, full) seconds a subject may take unless it declares BUDGET_S.
DEFAULT_BUDGET_S = (60.0, 300.0)
#: After the budget: SIGTERM, then this long for the subject's own cleanup (operator, cluster), then SIGKILL.
TERM_GRACE_S = 60.0
FIGURES_FILE = "figures.json"


@dataclass
class Subject:
    name: str
    module: ModuleType | None = None
    import_error: str = ""

    def budget(self, quick: bool) -> float:
        declared = getattr(self.module, "BUDGET_S", None)
        quick_s, full_s = declared if declared is not None else DEFAULT_BUDGET_S
        return float(quick_s if quick else full_s)


@dataclass
class SubjectResult:
    name: str
    status: str  # ok | error | timeout
    seconds: float
    figures: list[Figure] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "seconds": round(self.seconds, 2),
            "error": self.error,
            "figures": [f.as_dict() for f in self.figures],
            "plots": self.plots,
        }


# ------------------------------------------------------------------------------------------- discovery


def _is_subject_entry(obj: object) -> bool:
    if not callable(obj):
        return False
    try:
        params = list(inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required_rest = [
        p for p in params if p not in positional and p.default is p.empty and p.kind == p.KEYWORD_ONLY
    ]
    return (
        len(positional) >= 1 and all(p.default is not p.empty for p in positional[1:]) and not required_rest
    )


def discover(package: str = PACKAGE) -> list[Subject]:
    """Every subject module of ``package``, in :data:`PREFERRED_ORDER` then alphabetical order.

    A module that fails to import is a subject too (with ``import_error``): it may well be one, and a
    benchmark that silently vanished from the table would hide exactly the regression it exists for."""
    pkg = importlib.import_module(package)
    subjects = []
    for info in pkgutil.iter_modules(list(pkg.__path__)):
        name = info.name
        if name in NOT_SUBJECTS or name.startswith("_") or info.ispkg:
            continue
        try:
            module = importlib.import_module(f"{package}.{name}")
        except Exception:
            subjects.append(Subject(name, import_error=traceback.format_exc(limit=5)))
            continue
        if _is_subject_entry(getattr(module, "run", None)):
            subjects.append(Subject(name, module))
    rank = {n: i for i, n in enumerate(PREFERRED_ORDER)}
    return sorted(subjects, key=lambda s: (rank.get(s.name, len(rank)), s.name))


def select(subjects: list[Subject], wanted: Sequence[str]) -> list[Subject]:
    if not wanted:
        return subjects
    known = {s.name: s for s in subjects}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise SystemExit(
            f"error: unknown subject(s) {', '.join(unknown)}; known: {', '.join(known) or 'none'}"
        )
    return [known[w] for w in wanted]


# ------------------------------------------------------------------------------------------ execution


def run_child(package: str, name: str, quick: bool, results_dir: Path) -> int:
    """Inside the child process: run one subject and write its figures (or its error) as JSON."""
    # SIGTERM (budget spent) must unwind through the subject's `finally` blocks: they stop what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out = results_dir / name
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(quick=quick, results_dir=out)
    try:
        module = importlib.import_module(f"{package}.{name}")
        figures = module.run(ctx)
        bad = [f for f in figures if not isinstance(f, Figure)]
        if bad:
            raise TypeError(f"run() must return Figures, got {type(bad[0]).__name__}")
        payload: dict[str, Any] = {"figures": [f.as_dict() for f in figures]}
        code = 0
    except BaseException as exc:  # also SystemExit from SIGTERM: say so in the summary
        payload = {"error": "".join(traceback.format_exception(exc, limit=8))}
        code = 1
    payload["plots"] = [str(p) for p in ctx.plots]
    (out / FIGURES_FILE).write_text(json.dumps(payload, indent=2, default=str))
    return code


def _stop_group(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM the child's process group (its own session: only what it started), then SIGKILL."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 15.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def read_child_output(path: Path) -> tuple[list[Figure], list[str], str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return [], [], f"no readable {path.name}: {exc}"
    figures = [Figure(**f) for f in data.get("figures", [])]
    return figures, list(data.get("plots", [])), str(data.get("error", ""))


def run_subject(
    subject: Subject,
    *,
    quick: bool,
    results_dir: Path,
    package: str = PACKAGE,
    budget_s: float | None = None,
    grace_s: float = TERM_GRACE_S,
) -> SubjectResult:
    started = time.monotonic()
    if subject.import_error:
        return SubjectResult(subject.name, "error", 0.0, error=f"import failed:\n{subject.import_error}")
    budget = subject.budget(quick) if budget_s is None else budget_s
    args = [sys.executable, "-m", f"{PACKAGE}.run", "--child", subject.name, "--package", package]
    args += ["--results-dir", str(results_dir)] + (["--quick"] if quick else [])
    figures_path = results_dir / subject.name / FIGURES_FILE
    figures_path.unlink(missing_ok=True)
    proc = subprocess.Popen(args, cwd=REPO_ROOT, start_new_session=True)
    status = "ok"
    try:
        proc.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        status = "timeout"
        _stop_group(proc, grace_s)
    except BaseException:  # Ctrl-C of the runner: stop the subject and what it started, then re-raise
        _stop_group(proc, grace_s)
        raise
    seconds = time.monotonic() - started
    figures, plots, error = read_child_output(figures_path)
    partial = figures_path.parent / f"{PARTIAL_FIGURES}.json"
    if not figures and partial.exists():  # stopped or crashed halfway: what it finished still counts
        figures = read_child_output(partial)[0]
    if status == "timeout":
        error = f"over its budget of {budget:.0f} s: stopped" + (f"\n{error}" if error else "")
    elif proc.returncode != 0 or error:
        status = "error"
        error = error or f"exited {proc.returncode}"
    return SubjectResult(subject.name, status, seconds, figures, plots, error)


# -------------------------------------------------------------------------------------------- summary


def failed_figure(result: SubjectResult) -> Figure:
    """The summary row of a subject that did not produce its figures: a failure, also of the CI bound."""
    first = result.error.strip().splitlines()[-1] if result.error.strip() else result.status
    return Figure(
        subject=result.name,
        figure=f"subject {result.status}: {first[:80]}",
        value=math.nan,
        goal="runs",
        passed=False,
        bound="runs",
        bound_passed=False,
    )


def summary_rows(results: Sequence[SubjectResult]) -> list[Figure]:
    rows: list[Figure] = []
    for r in results:
        rows += r.figures
        if r.status != "ok":
            rows.append(failed_figure(r))
    return rows


def exit_code(results: Sequence[SubjectResult], quick: bool) -> int:
    if any(r.status != "ok" for r in results):
        return 1
    if quick and any(f.bound_passed is False for r in results for f in r.figures):
        return 1
    return 0


def format_value(value: float, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value == 0 or 0.01 <= abs(value) < 1e6:
        text = f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    else:
        text = f"{value:.2e}"
    return f"{text} {unit}".strip()


def _verdict(ok: bool | None) -> str:
    return {True: "pass", False: "FAIL", None: "-"}[ok]


def table(rows: Sequence[Figure], *, with_subject: bool = True) -> str:
    header = (["subject"] if with_subject else []) + ["figure", "value", "goal", "result", "CI bound"]
    body = []
    for f in rows:
        bound = f"{f.bound} ({_verdict(f.bound_passed)})" if f.bound else "-"
        cells = [f.figure, format_value(f.value, f.unit), f.goal or "-", _verdict(f.passed), bound]
        body.append(([f.subject] if with_subject else []) + cells)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body, strict=False)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        mem_gib = round(int(first.split()[1]) / 2**20, 1)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "hostname": socket.gethostname(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": mem_gib,
        "loadavg_at_start": [round(x, 2) for x in load],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return out.stdout.strip()
    except OSError:
        return ""


def default_results_root() -> Path:
    cache = os.environ.get("KUBEMOE_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kubemoe"
    )
    return Path(cache) / "bench-results"


def resolve_results_dir(given: str | None, now: datetime) -> Path:
    """The run's folder; never inside the repository (results are not sources)."""
    if given:
        path = Path(given).expanduser().resolve()
    else:
        env = os.environ.get("KUBEMOE_BENCH_RESULTS")
        root = Path(env).expanduser() if env else default_results_root()
        path = (root / now.strftime("%Y%m%dT%H%M%SZ")).resolve()
    if path == REPO_ROOT or REPO_ROOT in path.parents:
        raise SystemExit(f"error: results folder {path} is inside the repository; pick one outside it")
    return path


def write_summary(
    results_dir: Path, results: Sequence[SubjectResult], *, quick: bool, started: datetime, code: int
) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    data = {
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "commit": git_commit(),
        "machine": machine(),
        "exit_code": code,
        "subjects": [r.as_dict() for r in results],
        "summary": [f.as_dict() for f in summary_rows(results)],
    }
    path = results_dir / "summary.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    latest = results_dir.parent / "latest"
    with contextlib.suppress(OSError):
        if latest.is_symlink() or not latest.exists():
            latest.unlink(missing_ok=True)
            latest.symlink_to(results_dir.name)
    return path


# ----------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hack.bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("subjects", nargs="*", help="run only these subjects (default: all)")
    parser.add_argument("--quick", action="store_true", help="CI smoke size; fail on a missed CI bound")
    parser.add_argument("--results-dir", help="this run's results folder (default: under the cache)")
    parser.add_argument("--list", action="store_true", help="list the subjects and their budgets, run none")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--package", default=PACKAGE, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        return run_child(args.package, args.child, args.quick, Path(args.results_dir))

    subjects = select(discover(args.package), args.subjects)
    if args.list:
        for s in subjects:
            note = f" (import failed: {s.import_error.strip().splitlines()[-1]})" if s.import_error else ""
            print(f"{s.name:<12} budget {s.budget(True):.0f} s quick, {s.budget(False):.0f} s full{note}")
        return 0
    started = datetime.now(UTC)
    results_dir = resolve_results_dir(args.results_dir, started)
    mode = "quick" if args.quick else "full"
    print(f"# kubemoe benchmarks ({mode}): {', '.join(s.name for s in subjects)}; results in {results_dir}")
    results = []
    for subject in subjects:
        print(f"\n## {subject.name} (budget {subject.budget(args.quick):.0f} s)", flush=True)
        result = run_subject(subject, quick=args.quick, results_dir=results_dir, package=args.package)
        results.append(result)
        print(f"\n## {subject.name}: {result.status} in {result.seconds:.0f} s")
        if result.figures:
            print(table(result.figures, with_subject=False))
        if result.error:
            print(result.error.rstrip())
    code = exit_code(results, args.quick)
    path = write_summary(results_dir, results, quick=args.quick, started=started, code=code)
    print(f"\n# summary ({mode}, {started:%Y-%m-%d %H:%M} UTC, {machine()['cpus']} CPUs)")
    print(table(summary_rows(results)))
    plots = [p for r in results for p in r.plots]
    if plots:
        print("\n# plots")
        print("\n".join(f"  {p}" for p in plots))
    print(f"\n# summary JSON: {path}")
    if code:
        print(
            "# FAILED: "
            + ("a subject did not run" if any(r.status != "ok" for r in results) else "a CI bound")
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
