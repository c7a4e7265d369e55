#!/usr/bin/env bash
# Debian packages the real node and the image need: containerd, runc, the CNI plugins, nftables, and the
# daemonless image tools (buildah, mmdebstrap). Installed once per machine with apt (nothing in the repo);
# a no-op when they are there. Used by `make test`, `make demo`, `make image` and .ci/run, so the README's
# commands work on a fresh machine. KUBEMOE_REAL_NODE=0 (a machine that cannot run containers) skips it.
set -euo pipefail
[ "${KUBEMOE_REAL_NODE:-1}" = 0 ] && exit 0
PKGS=(containerd runc containernetworking-plugins nftables iproute2 buildah mmdebstrap)
missing=()
for pkg in "${PKGS[@]}"; do
  dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ "${#missing[@]}" -eq 0 ] && exit 0
echo "installing ${missing[*]} (apt)" >&2
if [ "$(id -u)" != 0 ]; then
  echo "error: missing Debian packages ${missing[*]}: run as root or apt-get install them" >&2
  exit 1
fi
apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  "${missing[@]}" >/dev/null
