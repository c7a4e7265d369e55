"""Where each operator-benchmark run happens: a cluster with nothing of an earlier run in it.

Every run (a floor or an operator rollout) gets a new cluster when the benchmark owns it: ``hack/cluster
down`` and ``up`` take about 15 s, while deleting a namespace of N models' objects takes about as long as
applying them did (31.5 s at N = 300; two minutes at N = 1000). Keeping an earlier run's objects instead
loads the next run with them: at N = 1000 the floor's 1000 Services, Deployments and pods left in place made
the operator's run cost 2.6x the kube-proxy and 1.3x the controller-manager CPU of the floor's, and its
ratio 1.79 against 1.53 with a clean slate. A cluster the benchmark did not start (or one kept with
``KUBEMOE_BENCH_KEEP_CLUSTER=1``) is never taken down: there the earlier run's namespaces are deleted, as
they are in a quick run (20 models: deleted in 2 s; a new cluster would cost CI's 3-minute budget 15 s).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from hack.bench._cluster import (
    Api,
    Cluster,
    create_namespace,
    delete_fleet,
    delete_namespace,
    ensure_fleet,
    start_cluster,
)
from hack.bench._operator_proc import cache_root, install_crds


class Sites:
    """Hands out a clean namespace on a clean cluster for each run, and tears the last one down."""

    def __init__(
        self, name: str, fleet_for: Callable[[int], Mapping[str, int]], *, fresh_each_run: bool = True
    ) -> None:
        self.name = name
        self.fleet_for = fleet_for
        self.fresh_each_run = fresh_each_run
        self.cluster: Cluster | None = None
        self.api: Api | None = None
        self.namespaces: list[str] = []
        self.setup_s = 0.0  # seconds spent making clean sites, for the record

    def clean(self, namespace: str, models: int) -> tuple[Api, dict[str, str]]:
        """A cluster holding nothing of an earlier run, with a fleet for ``models`` models and the empty
        ``namespace``; returns its API client and the environment (``KUBECONFIG``, ``PATH``) to reach it."""
        t0 = time.monotonic()
        if self.cluster is not None and self.cluster.will_go_down and self.fresh_each_run:
            self.cluster.down()
            self.cluster, self.api, self.namespaces = None, None, []
        if self.cluster is None:
            self.cluster = start_cluster(self.name, cache_root())
            self.api = Api(self.cluster.kubeconfig)
            install_crds(self.cluster.env)
        assert self.api is not None
        for ns in self.namespaces:  # a cluster that stays up: the earlier run's objects go
            delete_namespace(self.api, ns)
        self.namespaces = [namespace]
        ensure_fleet(self.api, self.fleet_for(models))
        create_namespace(self.api, namespace)
        self.setup_s += time.monotonic() - t0
        return self.api, self.cluster.env

    def close(self) -> None:
        """Take the benchmark's own cluster down; on a kept one, delete what the last run left."""
        if self.cluster is None:
            return
        if not self.cluster.will_go_down and self.api is not None:
            for ns in self.namespaces:
                try:
                    delete_namespace(self.api, ns, timeout_s=300)
                except Exception as exc:  # cleanup: report, go on
                    print(f"operator: cleanup of {ns}: {exc}")
            if not self.cluster.started_here:
                delete_fleet(self.api)
        self.cluster.down()
