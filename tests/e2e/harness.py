"""Library half of the e2e harness: cluster handle, binaries and polling helpers.

Fixtures live in ``conftest.py`` (its docstring describes the harness); test modules import
helpers from here, e.g. ``from .harness import KubeCluster, wait_for``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
from kubernetes import client

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
HACK_DIR = REPO_ROOT / "hack"
CLUSTER_SCRIPT = HACK_DIR / "cluster"
TOOLCHAIN_SCRIPT = HACK_DIR / "toolchain"

# A warm start takes ~6-15 s; a first toolchain build (never in CI mode) ~6 minutes on 2 cores.
CLUSTER_UP_TIMEOUT_S = 3 * 3600
NAMESPACE_LABEL = "kubemoe.dev/e2e"


def toolchain_bin_dir() -> Path:
    """Directory holding kubectl, helm, kwokctl, kube-* and etcd at the pinned versions.

    ``$KUBEMOE_BIN_DIR`` wins when set; otherwise ``hack/toolchain bin-dir`` computes it from
    ``hack/versions.env``. The directory may not exist yet (toolchain not built).
    """
    env_dir = os.environ.get("KUBEMOE_BIN_DIR")
    if env_dir:
        return Path(env_dir)
    out = subprocess.run(
        [str(TOOLCHAIN_SCRIPT), "bin-dir"], check=True, capture_output=True, text=True
    ).stdout
    return Path(out.strip())


@dataclass
class KubeCluster:
    """A reachable cluster for e2e tests (the `kube_cluster` fixture; see conftest.py)."""

    kubeconfig: Path
    api_client: client.ApiClient
    bin_dir: Path | None
    started_here: bool
    env: dict[str, str] = field(default_factory=dict)

    def _tool(self, name: str) -> str:
        if self.bin_dir is not None and (self.bin_dir / name).exists():
            return str(self.bin_dir / name)
        found = shutil.which(name)
        if found is None:
            raise FileNotFoundError(f"{name} is neither in {self.bin_dir} nor on PATH")
        return found

    def run(
        self,
        tool: str,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``tool`` (e.g. ``kubectl``) against this cluster; output is captured as text."""
        proc = subprocess.run(
            [self._tool(tool), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{tool} {' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """``kubectl`` of the cluster's version with this cluster's kubeconfig."""
        return self.run("kubectl", *args, input=input, check=check, timeout=timeout)

    def helm(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """``helm`` from the toolchain with this cluster's kubeconfig."""
        return self.run("helm", *args, input=input, check=check, timeout=timeout)

    def wait_established(self, *crds: str, timeout_s: float = 60) -> None:
        """Wait until each CRD (``moemodels.kubemoe.io``) has ``Established=True``.

        Not ``kubectl wait --for=condition=Established``: on a CRD created a moment ago its
        ``status.conditions`` is still null, and kubectl then fails at once ("accessor error: <nil>
        is of the type <nil>") instead of waiting; CI hit exactly that.
        """
        query = '{.status.conditions[?(@.type=="Established")].status}'
        for crd in crds:
            wait_for(
                f"crd/{crd} Established",
                lambda crd=crd: (
                    self.kubectl("get", f"crd/{crd}", "-o", f"jsonpath={query}", check=False).stdout.strip()
                    == "True"
                ),
                timeout_s=timeout_s,
            )


def run_cluster_script(args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLUSTER_SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cluster_down() -> None:
    proc = run_cluster_script(["down"], timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"hack/cluster down failed:\n{proc.stdout}\n{proc.stderr}")


def wait_api_ready(api: client.ApiClient, timeout_s: float = 60) -> None:
    """The API answers and the default ServiceAccount exists (pods can be created)."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            client.VersionApi(api).get_code()
            client.CoreV1Api(api).read_namespaced_service_account("default", "default")
            return
        except Exception as exc:  # the API may still be starting: retry until the deadline
            last = exc
            time.sleep(1)
    raise TimeoutError(f"cluster API not ready after {timeout_s}s: {last}")


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout_s: float = 60,
    every_s: float = 0.5,
    explain: Callable[[], str] | None = None,
) -> T:
    """Poll ``probe`` until it returns something truthy and return that; fail the test with
    ``what`` in the message on timeout, and what ``explain`` then tells (state and logs a CI log needs)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            story = ""
            if explain is not None:
                try:
                    story = "\n" + explain()
                except Exception as exc:  # the explanation must not hide the timeout
                    story = f"\n(could not explain: {exc!r})"
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}{story}")
        time.sleep(every_s)


def pinned_versions() -> dict[str, str]:
    """The ``KEY=VALUE`` pins of ``hack/versions.env`` (KUBE_VERSION, HELM_VERSION, ...)."""
    pins: dict[str, str] = {}
    for raw in (HACK_DIR / "versions.env").read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            pins[key] = value
    return pins
