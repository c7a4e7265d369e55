# Local Kubernetes control plane (hack/toolchain, hack/cluster). Included by the top-level
# Makefile; every target is a thin wrapper so the scripts stay the single source of truth.
KUBEMOE_HACK := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))

.PHONY: toolchain cluster-up cluster-down cluster-status

## Build (or verify the cached) kube-apiserver/controller-manager/scheduler, kubectl, etcd, kwok, helm, lws-controller-manager
toolchain:
	$(KUBEMOE_HACK)/toolchain build

## Start the local cluster (no-op if it is already up); prints its kubeconfig path
cluster-up:
	$(KUBEMOE_HACK)/cluster up

## Stop the local cluster; leaves no process behind
cluster-down:
	$(KUBEMOE_HACK)/cluster down

## Show whether the local cluster is up, its version and fake nodes
cluster-status:
	$(KUBEMOE_HACK)/cluster status
