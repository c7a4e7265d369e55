"""Session harness for end-to-end tests against a real Kubernetes control plane.

The cluster is real etcd + kube-apiserver + kube-controller-manager + kube-scheduler (built
by ``hack/toolchain``) with kwok providing fake nodes and pods, started by ``hack/cluster``.
See ``hack/cluster`` for what runs and ``hack/manifests/fleet-nodes.yaml`` for the fake fleet
(p4d/p4de/p5/p5en with ``nvidia.com/gpu: 8``, trn2 with Neuron devices, two CPU nodes).

Fixtures
--------
``kube_cluster`` (session)
    A :class:`KubeCluster`: ``kubeconfig`` path, a ready ``api_client``
    (``kubernetes.client.ApiClient``), ``bin_dir`` with the cluster-version ``kubectl`` and
    ``helm``, and ``kubectl()`` / ``helm()`` helpers that run them against this cluster.
``k8s_client`` (session)
    Shortcut for ``kube_cluster.api_client``.
``namespace`` (function)
    Creates a fresh namespace ``e2e-<uuid>`` for one test and deletes it afterwards.

Which cluster
-------------
* ``KUBECONFIG`` set: that cluster is used as is and never stopped.
* otherwise the ``hack/cluster`` cluster (name ``$KUBEMOE_CLUSTER_NAME``, default
  ``kubemoe``): if it is already up (``make cluster-up``) it is reused and left running, so
  repeated local runs are fast; if not, it is started and always stopped at session end,
  also when tests fail or setup fails halfway.
* A missing toolchain is built on first use (slow, cached afterwards), except with
  ``KUBEMOE_E2E=require`` (CI), where it is an error. ``KUBEMOE_E2E=skip`` skips e2e tests.

Binaries
--------
:func:`toolchain_bin_dir` returns the directory of the built binaries; during the session it
is also exported as ``$KUBEMOE_BIN_DIR`` and put first on ``$PATH`` (and ``$KUBECONFIG`` is
set), so plain ``subprocess.run(["kubectl", ...])`` or ``["helm", ...]`` in a test targets the
cluster with binaries of the cluster's version.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from .harness import (
    CLUSTER_UP_TIMEOUT_S,
    NAMESPACE_LABEL,
    KubeCluster,
    cluster_down,
    run_cluster_script,
    toolchain_bin_dir,
    wait_api_ready,
)


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[KubeCluster]:
    """The e2e cluster for the whole session (see the module docstring)."""
    mode = os.environ.get("KUBEMOE_E2E", "")
    if mode == "skip":
        pytest.skip("KUBEMOE_E2E=skip")

    bin_dir = toolchain_bin_dir()
    external = os.environ.get("KUBECONFIG")
    started_here = False
    if external:
        kubeconfig = Path(external.split(os.pathsep)[0])
    else:
        already_up = run_cluster_script(["status"], timeout=60).returncode == 0
        if not already_up:
            # Mark before `up`: a failure halfway (CRDs, nodes) still leaves processes.
            started_here = True
            proc = run_cluster_script(["up"], timeout=CLUSTER_UP_TIMEOUT_S)
            if proc.returncode != 0:
                logs = run_cluster_script(["logs"], timeout=60).stdout
                try:
                    cluster_down()
                finally:
                    pytest.fail(
                        f"hack/cluster up failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}\n"
                        f"{proc.stdout[-2000:]}\ncomponent logs:\n{logs[-6000:]}",
                        pytrace=False,
                    )
        kubeconfig = Path(run_cluster_script(["kubeconfig"], timeout=60).stdout.strip())

    # Expose the cluster and the binaries to everything the tests spawn.
    saved_env = {k: os.environ.get(k) for k in ("KUBECONFIG", "KUBEMOE_BIN_DIR", "PATH")}
    os.environ["KUBECONFIG"] = str(kubeconfig)
    has_bins = bin_dir.is_dir()
    if has_bins:
        os.environ["KUBEMOE_BIN_DIR"] = str(bin_dir)
        os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"

    api: client.ApiClient | None = None
    try:
        api = config.new_client_from_config(config_file=str(kubeconfig))
        wait_api_ready(api)
        yield KubeCluster(
            kubeconfig=kubeconfig,
            api_client=api,
            bin_dir=bin_dir if has_bins else None,
            started_here=started_here,
            env=dict(os.environ),
        )
    finally:
        if api is not None:
            api.close()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if started_here:
            cluster_down()


@pytest.fixture(scope="session")
def k8s_client(kube_cluster: KubeCluster) -> client.ApiClient:
    """A ready ``kubernetes.client.ApiClient`` for the e2e cluster."""
    return kube_cluster.api_client


@pytest.fixture
def namespace(kube_cluster: KubeCluster) -> Iterator[str]:
    """A fresh, uniquely named namespace for one test, deleted afterwards."""
    core = client.CoreV1Api(kube_cluster.api_client)
    name = f"e2e-{uuid.uuid4().hex[:12]}"
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={NAMESPACE_LABEL: "true"}))
    )
    # The ServiceAccount controller populates new namespaces asynchronously; pods need it.
    deadline = time.monotonic() + 30
    while True:
        try:
            core.read_namespaced_service_account("default", name)
            break
        except ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    try:
        yield name
    finally:
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise
