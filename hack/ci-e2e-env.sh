#!/usr/bin/env bash
# CI entry point for the e2e harness. Builds the control-plane toolchain or reuses the cached
# one, removes a cluster left over by a killed earlier run, and prints `export` lines for the
# test run. Progress goes to stderr; stdout carries only the exports, so .ci/run does:
#
#   eval "$(hack/ci-e2e-env.sh)"
#   trap 'hack/cluster down || true' EXIT
#   python -m pytest ...          # the e2e session fixture starts and stops the cluster
set -euo pipefail

# shellcheck source=hack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

t0=$SECONDS
if toolchain_complete; then
  log "toolchain cached in $KUBEMOE_BIN_DIR"
else
  log "toolchain not cached: cold build (about 8 minutes on 2 cores)"
fi
"$HACK_DIR/toolchain" build >&2
log "toolchain ready after $((SECONDS - t0))s"

# A run killed before its teardown leaves processes and a half-dead cluster; start clean.
"$HACK_DIR/cluster" down >&2

# KUBEMOE_E2E=require: a missing toolchain or cluster fails the tests instead of being built
# or skipped. KUBECONFIG is unset so the session fixture starts (and stops) its own cluster.
printf 'export KUBEMOE_E2E=require\n'
printf 'export KUBEMOE_BIN_DIR=%q\n' "$KUBEMOE_BIN_DIR"
printf 'unset KUBECONFIG\n'
