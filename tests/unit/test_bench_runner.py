"""The benchmark runner's own logic (hack/bench/run.py): discovery, the summary, the exit status.

Subjects here are tiny modules in a throw-away package on PYTHONPATH, run through the real runner in real
child processes: one passes, one misses its CI bound, one raises, one hangs past its budget, one does not
import, and a helper module without ``run`` must not appear at all.
"""

from __future__ import annotations

import json
import math
import sys
import textwrap
from pathlib import Path

import pytest

from hack.bench import run as runner
from hack.bench._figures import figure
from hack.bench.common import Figure

SUBJECTS = {
    "good": """
        from hack.bench._figures import figure
        def run(ctx):
            ctx.save_json("raw", {"n": 1})
            return [figure("good", "ratio", 1.05, goal=("<=", 1.15), bound=("<=", 2.0))]
    """,
    "slowpoke": """
        from hack.bench._figures import figure
        def run(ctx):
            # misses its goal and its CI bound
            return [figure("slowpoke", "ratio", 2.5, goal=("<=", 1.15), bound=("<=", 2.0))]
    """,
    "broken": """
        def run(ctx):
            raise RuntimeError("the cluster is on fire")
    """,
    "hangs": """
        import time
        BUDGET_S = (1.5, 1.5)
        def run(ctx):
            time.sleep(60)
            return []
    """,
    "halfway": """
        import time
        from hack.bench._figures import figure, save_partial
        BUDGET_S = (1.5, 1.5)
        def run(ctx):
            save_partial(ctx, [figure("halfway", "first phase", 3.0)])
            time.sleep(60)
            return []
    """,
    "noimport": """
        import no_such_module_anywhere
        def run(ctx):
            return []
    """,
    "helper": """
        def serve(host, port):
            return None
    """,
    "twoargs": """
        def run(host, port):  # a helper's run, not a subject's
            return None
    """,
    "_private": """
        def run(ctx):
            return []
    """,
}


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A package ``fakebench`` holding SUBJECTS, importable here and in the runner's child processes."""
    root = tmp_path / "pkgs"
    pkg = root / "fakebench"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for name, body in SUBJECTS.items():
        (pkg / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", f"{root}:{runner.REPO_ROOT}")
    for mod in [m for m in sys.modules if m.startswith("fakebench")]:
        monkeypatch.delitem(sys.modules, mod)
    return "fakebench"


def test_discovery_finds_subjects_and_import_failures_skips_helpers(package: str) -> None:
    found = {s.name: s for s in runner.discover(package)}
    assert set(found) == {"good", "slowpoke", "broken", "hangs", "halfway", "noimport"}
    assert "no_such_module_anywhere" in found["noimport"].import_error
    assert found["hangs"].budget(quick=True) == 1.5
    assert found["good"].budget(quick=True) == runner.DEFAULT_BUDGET_S[0]
    assert found["good"].budget(quick=False) == runner.DEFAULT_BUDGET_S[1]


def test_discovery_of_the_real_package_lists_the_operator_subject() -> None:
    names = [s.name for s in runner.discover()]
    assert "operator_scale" in names
    assert not {"run", "common", "plotting", "_cluster", "_opbench", "_figures"} & set(names)


def test_discovery_orders_preferred_subjects_first(package: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "PREFERRED_ORDER", ("slowpoke", "good"))
    assert [s.name for s in runner.discover(package)][:2] == ["slowpoke", "good"]


def test_select_rejects_an_unknown_subject(package: str) -> None:
    with pytest.raises(SystemExit, match="unknown subject"):
        runner.select(runner.discover(package), ["good", "nope"])


def _main(package: str, tmp_path: Path, *args: str) -> tuple[int, dict[str, object]]:
    out = tmp_path / "results"
    code = runner.main(["--package", package, "--results-dir", str(out), *args])
    return code, json.loads((out / "summary.json").read_text())


def test_quick_run_passes_when_every_bound_holds(
    package: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, summary = _main(package, tmp_path, "--quick", "good")
    assert code == 0
    assert summary["quick"] is True
    assert summary["summary"] == [
        figure("good", "ratio", 1.05, goal=("<=", 1.15), bound=("<=", 2.0)).as_dict()
    ]
    assert (tmp_path / "results" / "good" / "raw.json").exists()
    printed = capsys.readouterr().out
    assert "# summary" in printed
    assert "good" in printed
    assert "pass" in printed


def test_missed_bound_fails_the_quick_run_only(package: str, tmp_path: Path) -> None:
    code, summary = _main(package, tmp_path / "q", "--quick", "good", "slowpoke")
    assert code == 1
    rows = {r["subject"]: r for r in summary["summary"]}
    assert rows["good"]["bound_passed"] is True
    assert rows["slowpoke"]["bound_passed"] is False
    assert rows["slowpoke"]["passed"] is False
    # A full run reports the missed goal but does not fail on it.
    code_full, _ = _main(package, tmp_path / "f", "slowpoke")
    assert code_full == 0


def test_failing_subjects_are_reported_not_dropped(
    package: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, summary = _main(package, tmp_path, "good", "broken", "hangs", "noimport")
    assert code == 1  # even without --quick: a subject that did not run is a failure
    status = {s["name"]: s["status"] for s in summary["subjects"]}
    assert status == {"good": "ok", "broken": "error", "hangs": "timeout", "noimport": "error"}
    by_subject = {r["subject"]: r for r in summary["summary"]}
    for name in ("broken", "hangs", "noimport"):
        row = by_subject[name]
        assert row["passed"] is False
        assert row["bound_passed"] is False
        assert row["value"] is None or math.isnan(row["value"])
    assert "the cluster is on fire" in by_subject["broken"]["figure"]
    assert "budget" in next(s for s in summary["subjects"] if s["name"] == "hangs")["error"]
    assert "FAILED" in capsys.readouterr().out


def test_results_folder_inside_the_repository_is_refused() -> None:
    with pytest.raises(SystemExit, match="inside the repository"):
        runner.resolve_results_dir(str(runner.REPO_ROOT / "results"), runner.datetime.now(runner.UTC))


def test_default_results_folder_is_under_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KUBEMOE_BENCH_RESULTS", raising=False)
    monkeypatch.setenv("KUBEMOE_CACHE", str(tmp_path / "cache"))
    now = runner.datetime(2026, 12, 1, 23, 59, 1, tzinfo=runner.UTC)
    assert runner.resolve_results_dir(None, now) == (
        tmp_path / "cache" / "bench-results" / "20261201T235901Z"
    )


@pytest.mark.parametrize(
    ("value", "goal", "passed"),
    [
        (1.1, ("<=", 1.15), True),
        (1.2, ("<=", 1.15), False),
        (0.0, ("==", 0), True),
        (math.nan, ("<=", 1), False),
    ],
)
def test_figure_verdicts_are_computed(value: float, goal: tuple[str, float], passed: bool) -> None:
    f = figure("s", "f", value, goal=goal, bound=goal)
    assert f.passed is passed
    assert f.bound_passed is passed
    assert f.goal == f"{goal[0]} {goal[1]:g}"
    assert figure("s", "f", value).passed is None


def test_table_formats_every_row() -> None:
    rows = [
        Figure("op", "ratio", 1.0734, goal="<= 1.15", passed=True, bound="<= 2", bound_passed=True),
        Figure("op", "writes", 0.0, goal="== 0", passed=True),
        Figure("op", "rss", 123456.0, unit="MiB"),
        Figure("op", "gone", math.nan, passed=False),
    ]
    text = runner.table(rows)
    lines = text.splitlines()
    assert lines[0].split() == ["subject", "figure", "value", "goal", "result", "CI", "bound"]
    assert "1.07" in lines[2]
    assert "pass" in lines[2]
    assert "<= 2 (pass)" in lines[2]
    assert "123456 MiB" in lines[4]
    assert "FAIL" in lines[5]
    assert " - " in lines[5]


METRICS_PAGE = """\
# HELP apiserver_request_total [STABLE] Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",dry_run="",group="apps",resource="deployments",scope="resource",subresource="",verb="APPLY",version="v1"} 7
apiserver_request_total{code="201",component="apiserver",dry_run="",group="apps",resource="deployments",scope="resource",subresource="",verb="APPLY",version="v1"} 3
apiserver_request_total{code="200",component="apiserver",dry_run="",group="kubemoe.io",resource="moemodels",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 4
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="namespace",subresource="",verb="LIST",version="v1"} 2.0
apiserver_request_total{code="200",component="apiserver",dry_run="All",group="apps",resource="deployments",scope="resource",subresource="",verb="APPLY",version="v1"} 6
apiserver_request_total_other{verb="GET"} 99
apiserver_request_duration_seconds_bucket{verb="GET",le="0.1"} 5
"""


def test_api_server_request_counts_are_summed_by_verb_resource_subresource() -> None:
    from hack.bench._cluster import READ_VERBS, WRITE_VERBS, count, delta, parse_request_counts

    counts = parse_request_counts(METRICS_PAGE)
    assert counts == {
        ("APPLY", "deployments", ""): 10.0,
        ("PATCH", "moemodels", "status"): 4.0,
        ("LIST", "pods", ""): 2.0,
        ("APPLY(dry-run)", "deployments", ""): 6.0,
    }
    # A server-side dry run writes nothing: never among the writes, still countable on its own.
    assert count(counts, WRITE_VERBS) == 14.0
    assert count(counts, ["APPLY(dry-run)"]) == 6.0
    assert count(counts, WRITE_VERBS, {"moemodels"}, "status") == 4.0
    assert count(counts, READ_VERBS) == 2.0
    later = {**counts, ("LIST", "pods", ""): 5.0}
    assert delta(later, counts) == {("LIST", "pods", ""): 3.0}


def test_a_stopped_subject_keeps_what_it_finished(package: str, tmp_path: Path) -> None:
    code, summary = _main(package, tmp_path, "halfway")
    assert code == 1
    rows = [(r["figure"], r["passed"]) for r in summary["summary"]]
    assert rows[0] == ("first phase", None)
    assert rows[1][0].startswith("subject timeout")
    assert rows[1][1] is False
