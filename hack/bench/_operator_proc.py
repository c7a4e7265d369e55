"""The operator under benchmark: one ``kubemoe run`` subprocess, its health and metrics endpoints, its CPU
and peak memory from /proc, and waits on them; the CRDs it needs and the cache the cluster uses."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from hack.bench._cluster import cpu_seconds, peak_rss_mib, wait_until

KUBEMOE = str(Path(sys.executable).parent / "kubemoe")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Operator:
    """One ``kubemoe run`` subprocess (in the benchmark's process group, so a stopped benchmark stops it)."""

    namespace: str
    resync_s: float
    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    def start(self) -> Operator:
        args = [KUBEMOE, "run", "--standalone", "-n", self.namespace, "--resync-seconds", str(self.resync_s)]
        args += ["--health-port", str(self.port)]
        log = self.log_path.open("ab")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except (urllib.error.URLError, OSError):
            return 0, ""

    def wait_ready(self, timeout_s: float = 120) -> float:
        def probe() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"operator exited:\n{tail}")
            return self.http("/readyz")[0] == 200

        wait_until("operator /readyz", probe, timeout_s, every_s=0.2)
        return time.monotonic() - self.started_at

    def _samples(self, name: str) -> list[Sample]:
        status, text = self.http("/metrics")
        if status != 200:
            raise RuntimeError(f"operator /metrics: {status}")
        return [s for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == name]

    def metric(self, name: str, **labels: str) -> float:
        return sum(
            s.value for s in self._samples(name) if all(s.labels.get(k) == v for k, v in labels.items())
        )

    def by_labels(self, name: str) -> dict[str, float]:
        """Every sample of ``name``, keyed by its labels (``verb=PATCH,kind=MoEModel``), for the record."""
        return {
            ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())): s.value for s in self._samples(name)
        }

    def reconciles(self) -> float:
        return self.metric("kubemoe_reconcile_total")

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> float:
        return peak_rss_mib(self.pid)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)

    def restart(self, log_path: Path) -> None:
        """Stop this process and start a new one with the same settings (a fresh port and log)."""
        self.stop()
        self.port, self.log_path = free_port(), log_path
        self.start()

    def wait_idle(self, min_reconciles: float, timeout_s: float) -> float:
        """Until it has reconciled at least ``min_reconciles`` times and its queue is empty; seconds since
        its start."""

        def probe() -> bool:
            with contextlib.suppress(RuntimeError):
                return self.reconciles() >= min_reconciles and self.metric("kubemoe_queue_depth") == 0
            return False

        wait_until("operator idle", probe, timeout_s, every_s=0.2)
        return time.monotonic() - self.started_at


def cache_root() -> Path:
    env = os.environ.get("KUBEMOE_CACHE")
    return Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kubemoe"


def install_crds(env: dict[str, str]) -> None:
    """Apply the repository's CRDs server-side and wait until both are Established."""
    root = Path(__file__).resolve().parents[2]
    apply = ["kubectl", "apply", "--server-side", "--force-conflicts", "--field-manager=kubemoe-bench"]
    subprocess.run([*apply, "-f", str(root / "crds")], env=env, check=True, capture_output=True)
    # Polled, not `kubectl wait --for=condition=Established`: that fails at once while a new CRD's
    # status.conditions is still null (tests/e2e/harness.py KubeCluster.wait_established).
    query = 'jsonpath={.status.conditions[?(@.type=="Established")].status}'
    deadline = time.monotonic() + 60
    for crd in ("moemodels.kubemoe.io", "moapipelines.kubemoe.io"):
        while True:
            got = subprocess.run(
                ["kubectl", "get", f"crd/{crd}", "-o", query],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            if got == "True":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"crd/{crd} not Established after 60s")
            time.sleep(0.5)
