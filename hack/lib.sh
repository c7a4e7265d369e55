# shellcheck shell=bash
# Shared settings for hack/toolchain and hack/cluster. Source it; it defines no side effects
# beyond variables and functions.

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# shellcheck source=hack/versions.env
. "$HACK_DIR/versions.env"

# CI may run with a scrubbed environment; Go needs HOME (or GOCACHE/GOPATH) to find its caches.
if [ -z "${HOME:-}" ]; then
  HOME=$(getent passwd "$(id -u)" | cut -d: -f6)
  export HOME
fi

# Everything built lives outside the repo, keyed by version, so a fresh clone reuses it
# and a version bump never mixes binaries of two releases.
KUBEMOE_CACHE=${KUBEMOE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubemoe}
TOOLCHAIN_KEY="k8s-${KUBE_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}_lws-${LWS_VERSION}"
# The one directory tests and scripts put first on PATH (kubectl, helm, kwokctl, ...).
KUBEMOE_BIN_DIR=${KUBEMOE_BIN_DIR:-$KUBEMOE_CACHE/toolchain/$TOOLCHAIN_KEY/bin}

# Binaries the toolchain provides; all must exist for the toolchain to count as built.
TOOLCHAIN_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok kwokctl helm lws-controller-manager)

# Never let go switch toolchains behind our back (no network for that), and keep the module
# cache writable so `rm -rf` on it works.
export GOTOOLCHAIN=local
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-modcacherw"
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  PATH=/usr/local/go/bin:$PATH
fi

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# The real node's binaries (hack/node): built by `hack/toolchain build` with the rest, into the
# same bin dir, but not needed by the control plane, so a cluster without the node never waits
# for them.
NODE_BINARIES=(kubelet kube-proxy)

node_toolchain_complete() {
  local b
  for b in "${NODE_BINARIES[@]}"; do
    [ -x "$KUBEMOE_BIN_DIR/$b" ] || return 1
  done
}

toolchain_complete() {
  local b
  for b in "${TOOLCHAIN_BINARIES[@]}"; do
    [ -x "$KUBEMOE_BIN_DIR/$b" ] || return 1
  done
}

# Directory of a downloaded Go module (downloads it into the module cache if needed).
go_mod_dir() {
  go mod download -json "$1" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("Dir") or sys.exit(d.get("Error","no Dir")))'
}
