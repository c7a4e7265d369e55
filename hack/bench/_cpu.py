"""Where a rollout's CPU goes: seconds per process of the bench cluster (API server, etcd, controllers,
kwok), the operator and the benchmark itself. On a machine the rollout saturates (2 cores), wall time
follows the sum, so the operator run's total over the floor run's says how much of the ratio is work the
operator adds (its own, and what its requests and watches cost the API server) rather than waiting."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

from hack.bench._cluster import cpu_seconds

Sampler = Callable[[], dict[str, float]]


def cluster_pids(name: str) -> dict[str, int]:
    """The cluster's component processes by program name: those run from its folder or with its config."""
    marker = f"/clusters/{name}/"
    out: dict[str, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0] and marker in b" ".join(argv).decode(errors="replace"):
            out[Path(argv[0].decode(errors="replace")).name] = int(d.name)
    return out


def sampler(name: str, extra: Mapping[str, int] | None = None) -> Sampler:
    """CPU seconds so far of the cluster's components, of `extra` (label -> pid), and of this process."""
    pids = cluster_pids(name) | dict(extra or {})

    def sample() -> dict[str, float]:
        out = {"bench": time.process_time()}
        for label, pid in pids.items():
            try:
                out[label] = cpu_seconds(pid)
            except OSError:  # a process that ended meanwhile: its last seconds are not counted
                continue
        return out

    return sample


def spent(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before.get(k, 0.0), 3) for k in after if k in before}


def line(parts: Mapping[str, float]) -> str:
    ordered = sorted(parts.items(), key=lambda kv: -kv[1])
    return f"{sum(parts.values()):.1f} CPU s: " + ", ".join(f"{k} {v:.1f}" for k, v in ordered)
