# shellcheck shell=bash
# The real node of hack/cluster: containerd + runc (Debian's packages), CNI bridge + host-local
# (Debian's containernetworking-plugins), kubelet and kube-proxy (built by hack/toolchain from
# the cluster's own Kubernetes release). Sourced by hack/cluster after it has set CLUSTER_NAME,
# CLUSTER_DIR, KUBECONFIG_PATH and kctl; defines node_* functions only.
#
# What `node_up` adds to the machine, and `node_down` removes again (checked: node_down
# compares the machine with a snapshot taken before node_up and fails on any difference):
#   - processes: containerd, its runc shims, kubelet, kube-proxy, the API forwarder (pid files)
#   - one bridge (kmoe-<name>) with the pod subnet's gateway address, and the pods' veths
#   - pod network namespaces (containerd's, /run/netns/cni-*)
#   - kube-proxy's own nftables tables (ip/ip6 kube-proxy); no iptables rule, no other table
#   - cgroups under /kubemoe-<name> in each cgroup v1 hierarchy
#   - mounts under the node's state directories (container root filesystems, pod volumes)
#   - net.ipv4.conf.<bridge>.forwarding=1 (the bridge's own setting; it goes with the bridge)
#   - one nftables table of ours (inet kubemoe_<name>) that drops anything forwarded from the
#     bridge to another interface
#   - a route for the Service range to that bridge (so ClusterIP traffic from this machine stays
#     on it), which disappears with the bridge
# Nothing else: no host sysctl, no other route or interface. Pods get routes only to the pod
# subnet and the Service range.

NODE_DIR=$CLUSTER_DIR/node
# Sockets and containerd's state need short paths and a tmpfs (cleared on reboot).
NODE_RUN=/run/kubemoe-$CLUSTER_NAME
NODE_NAME=$CLUSTER_NAME-node
NODE_PIDS=$CLUSTER_DIR/pids
NODE_LOGS=$CLUSTER_DIR/logs
NODE_SNAPSHOT=$KUBEMOE_CACHE/node-snapshots/$CLUSTER_NAME.before
# One pod subnet per cluster name, from a range this machine does not use (node_up checks).
_node_idx=$(($(printf '%s' "$CLUSTER_NAME" | cksum | cut -d' ' -f1) % 200 + 20))
NODE_POD_CIDR=10.213.$_node_idx.0/24
NODE_GATEWAY=10.213.$_node_idx.1
NODE_BRIDGE=kmoe-${CLUSTER_NAME:0:10}
NODE_NFT_TABLE=kubemoe_${CLUSTER_NAME//-/_}
# kube-apiserver's default Service range (kwokctl passes none); the first address is the
# `kubernetes` Service, which must be in the serving certificate's SANs.
NODE_SERVICE_CIDR=${KUBEMOE_SERVICE_CIDR:-10.0.0.0/24}
NODE_CGROUP_ROOT=/kubemoe-$CLUSTER_NAME
NODE_PAUSE_IMAGE=localhost/kubemoe/pause:1.0
NODE_COMPONENTS=(containerd kubelet kube-proxy apiserver-forward)

# The node is tainted kubemoe.io/node=real:NoSchedule: only pods that ask for it (the chart's operator
# pods in the tests and the demo, the router and stand-ins of tests/e2e/test_helm_install.py) run there;
# every other test's pods keep landing on the kwok fleet exactly as before the node existed.
node_enabled() { [ "${KUBEMOE_REAL_NODE:-1}" != 0 ]; }

node_service_ip() {
  python3 -c 'import ipaddress,sys; print(ipaddress.ip_network(sys.argv[1])[1])' "$NODE_SERVICE_CIDR"
}

# Extra kwokctl configuration for a cluster with the real node: the API server advertises the
# bridge gateway (the `kubernetes` Service endpoint pods can reach, through node_forward), its
# certificate is valid for that address and for the `kubernetes` Service IP, and it reaches
# kubelets by InternalIP (there is no DNS name for the node). kwok's controller, which kwokctl
# starts with --manage-all-nodes, would otherwise take over the real node too and fake its pods
# (seen: pods Running with kwok's made-up IPs and no container): it manages every node but ours.
node_kwokctl_config() {
  cat <<EOF
kind: KwokctlConfiguration
apiVersion: config.kwok.x-k8s.io/v1alpha1
options:
  kubeApiserverCertSANs: ["$NODE_GATEWAY", "$(node_service_ip)", "kubernetes.default.svc"]
componentsPatches:
- name: kube-apiserver
  extraArgs:
  - key: advertise-address
    value: "$NODE_GATEWAY"
  - key: kubelet-preferred-address-types
    value: InternalIP
- name: kwok-controller
  extraArgs:
  - key: manage-all-nodes
    value: "false"
  - key: manage-nodes-with-label-selector
    value: "kubemoe.io/node!=real"
EOF
}

# What the node may change on this machine, as text: compared before `up` and after `down`.
node_host_snapshot() {
  (
    # A missing directory or tool is part of the picture, not an error.
    set +e +o pipefail
    echo "# links"; ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort
    echo "# addresses"; ip -o addr show | awk '{print $2, $4}' | sort
    echo "# routes"; ip route show | sort
    echo "# netns"; ls /run/netns 2>/dev/null | sort
    echo "# nft tables"; nft list tables 2>/dev/null | sort
    echo "# iptables"; iptables-save 2>/dev/null | grep -vE '^#|^:' | sort
    echo "# cgroups"; ls -d /sys/fs/cgroup/*"$NODE_CGROUP_ROOT" 2>/dev/null | sort
    echo "# mounts"; awk '{print $2}' /proc/mounts | grep -E "^($NODE_DIR|$NODE_RUN|/run/netns)" | sort
    echo "# forwarding"; cat /proc/sys/net/ipv4/ip_forward
    # containerd 1.6's shims put their sockets and fifos under /run/containerd whatever its config says.
    echo "# /run/containerd"; ls /run/containerd 2>/dev/null
    true
  )
}

# What changed on the machine between the snapshot taken before `up` and now, that this node answers
# for: printed as `< [section] line` (gone) and `> [section] line` (new). Links and network namespaces
# that came or went meanwhile and are not the node's (its bridge, veths, cni-* namespaces) belong to
# someone else on this shared machine (another test's netns and veth pair), and so do their addresses,
# routes and mounts: they are left out. Everything else counts, whoever did it.
node_snapshot_diff() {
  node_host_snapshot | python3 -c '
import re, sys

def sections(text):
    out, name = {}, ""
    for line in text.splitlines():
        if line.startswith("# "):
            name = line[2:]
            out.setdefault(name, set())
        elif line:
            out.setdefault(name, set()).add(line)
    return out

before, after = sections(open(sys.argv[1]).read()), sections(sys.stdin.read())
ours = re.compile("^(" + re.escape(sys.argv[2]) + "|veth|cni-)")
foreign = {n for s in ("links", "netns") for n in before.get(s, set()) ^ after.get(s, set()) if not ours.match(n)}
def theirs(line):
    return any(re.search(r"(^|[\s/])" + re.escape(n) + r"(\s|$)", line) for n in foreign)
for s in sorted(before.keys() | after.keys()):
    gone, new = before.get(s, set()) - after.get(s, set()), after.get(s, set()) - before.get(s, set())
    for mark, lines in (("<", gone), (">", new)):
        for line in sorted(lines):
            if not theirs(line):
                print(f"{mark} [{s}] {line}")
if foreign:
    print("(others meanwhile, not counted: " + ", ".join(sorted(foreign)) + ")", file=sys.stderr)
' "$NODE_SNAPSHOT" "$NODE_BRIDGE"
}

node_pid() {
  local pid
  pid=$(cat "$NODE_PIDS/node-$1.pid" 2>/dev/null) || return 1
  # Still ours (hack/cluster's own_pid): a dead component's PID may have been reused by a stranger. The API
  # forwarder's command line names no cluster file, only its gateway address.
  [ "$(pid_state "$pid")" = running ] &&
    { own_pid "$pid" || tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "forward.py $NODE_GATEWAY "; } &&
    echo "$pid"
}

# Start a node component in its own session, stdio on its log, pid in pids/ (like the others).
node_spawn() {
  local name=$1
  shift
  setsid "$@" </dev/null >>"$NODE_LOGS/node-$name.log" 2>&1 &
  echo $! >"$NODE_PIDS/node-$name.pid"
}

node_preflight() {
  local b
  for b in containerd containerd-shim-runc-v2 runc ctr nft ip; do
    command -v "$b" >/dev/null || die "real node: $b not found (apt-get install containerd runc nftables iproute2)"
  done
  for b in bridge host-local loopback portmap; do
    [ -x "/usr/lib/cni/$b" ] || die "real node: /usr/lib/cni/$b not found (apt-get install containernetworking-plugins)"
  done
  node_toolchain_complete || die "real node: kubelet/kube-proxy missing in $KUBEMOE_BIN_DIR (hack/toolchain build)"
  [ "$(id -u)" = 0 ] || die "real node: needs root (containers, bridge, nftables)"
  [ -d /sys/fs/cgroup/memory ] || [ -f /sys/fs/cgroup/cgroup.controllers ] || die "real node: no cgroup hierarchy"
  if ip route show | grep -q "^10\.213\.$_node_idx\."; then
    die "real node: $NODE_POD_CIDR is already routed on this machine (another cluster's node?)"
  fi
  # kube-proxy's nftables table is named kube-proxy on every machine: one real node per machine.
  if nft list tables 2>/dev/null | grep -q 'kube-proxy'; then
    die "real node: nftables table kube-proxy exists (another real node runs here; hack/cluster down it first)"
  fi
}

node_images() {
  local dir=$KUBEMOE_CACHE/image/archive
  "$HACK_DIR/image" all >&2
  "$HACK_DIR/image" archive "$dir" >&2
  ctr --address "$NODE_RUN/containerd.sock" -n k8s.io images import --no-unpack=false "$dir/pause.tar" >/dev/null
  ctr --address "$NODE_RUN/containerd.sock" -n k8s.io images import "$dir/kubemoe.tar" >/dev/null
  log "real node: images imported: $("$HACK_DIR/image" name), $NODE_PAUSE_IMAGE"
}

node_write_configs() {
  mkdir -p "$NODE_DIR"/{containerd,cni/net.d,cni/ipam,kubelet,kube-proxy} "$NODE_RUN"
  cat >"$NODE_DIR/containerd/config.toml" <<EOF
# Written by hack/cluster (hack/node/node.sh): containerd for the real node only.
version = 2
root = "$NODE_DIR/containerd/root"
state = "$NODE_RUN/containerd"
# Plugins that would touch /opt or need kernel features not used here.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$NODE_RUN/containerd.sock"
[ttrpc]
  address = "$NODE_RUN/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$NODE_PAUSE_IMAGE"
  enable_unprivileged_ports = false
  # This machine's root may not lower oom_score_adj (the kubelet asks -998 for sandboxes; runc then
  # fails "failed to update /proc/self/oom_score_adj: Permission denied", seen as "can't get final
  # child's PID from pipe: EOF"): containerd caps every request at its own score instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # cgroupfs, like the kubelet (cgroup v1 here, and no systemd).
        SystemdCgroup = false
        BinaryName = "$(command -v runc)"
        # runc's state under our run dir, not the machine's /run/containerd.
        Root = "$NODE_RUN/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE_DIR/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ""
EOF
  # Pods get routes to the pod subnet and the Service range only (no default route), no masquerade:
  # nothing from a pod has a way off this machine. isGateway stays false: with true the bridge plugin
  # turns on the machine's net.ipv4.ip_forward (seen: `down`'s snapshot check caught 0 -> 1); the
  # gateway address is on the bridge already (node_network_up) and the routes name it.
  cat >"$NODE_DIR/cni/net.d/10-kubemoe.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "kubemoe-$CLUSTER_NAME",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$NODE_DIR/cni/ipam",
        "ranges": [[{"subnet": "$NODE_POD_CIDR", "gateway": "$NODE_GATEWAY"}]],
        "routes": [{"dst": "$NODE_POD_CIDR"}, {"dst": "$NODE_SERVICE_CIDR"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  : >"$NODE_DIR/kubelet/resolv.conf"
  local kport hport pport mport
  kport=$(free_port); hport=$(free_port); pport=$(free_port); mport=$(free_port)
  printf 'KUBELET_PORT=%s\nKUBELET_HEALTHZ_PORT=%s\nPROXY_HEALTHZ_PORT=%s\nPROXY_METRICS_PORT=%s\n' \
    "$kport" "$hport" "$pport" "$mport" >"$NODE_DIR/ports.env"
  cat >"$NODE_DIR/kubelet/config.yaml" <<EOF
# Written by hack/cluster (hack/node/node.sh).
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine has cgroup v1 only (an empty v2 mount at /sys/fs/cgroup/unified). Kubelet 1.35+
# refuses v1 unless told otherwise; cgroupfs because no systemd runs here (see hack/README.md).
failCgroupV1: false
cgroupDriver: cgroupfs
# Every pod cgroup below one root of our own, removed again by \`down\`.
cgroupRoot: $NODE_CGROUP_ROOT
cgroupsPerQOS: true
containerRuntimeEndpoint: unix://$NODE_RUN/containerd.sock
# Served on the bridge gateway (the node's InternalIP, where the API server reaches it for
# logs and exec), which exists only on this machine. No client certificate is configured on the
# kwokctl API server's side, so the kubelet API is open to whoever reaches that address: this
# machine only.
address: $NODE_GATEWAY
port: $kport
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $hport
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
failSwapOn: false
podCIDR: $NODE_POD_CIDR
maxPods: 40
resolvConf: $NODE_DIR/kubelet/resolv.conf
clusterDomain: cluster.local
# A shared development machine: evict only when it is really out of space, and never garbage
# collect the imported images (no registry to pull them again from).
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
makeIPTablesUtilChains: false
localStorageCapacityIsolation: true
EOF
  cat >"$NODE_DIR/kube-proxy/config.yaml" <<EOF
# Written by hack/cluster (hack/node/node.sh).
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
# nftables: every rule in kube-proxy's own tables, which \`down\` deletes whole.
mode: nftables
clientConnection:
  kubeconfig: $KUBECONFIG_PATH
hostnameOverride: $NODE_NAME
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:$pport
metricsBindAddress: 127.0.0.1:$mport
clusterCIDR: $NODE_POD_CIDR
nodePortAddresses: ["$NODE_GATEWAY/32"]
# Leave the machine's conntrack sysctls as they are.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
}

# The bridge (created here, before the CNI plugin would, so the forwarder can listen on its
# gateway address before any pod exists) and our nftables guard table.
node_network_up() {
  ip link add "$NODE_BRIDGE" type bridge
  ip addr add "$NODE_GATEWAY/24" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  # Traffic from this machine to a ClusterIP goes to the bridge (kube-proxy's DNAT then picks a
  # pod), never out of the default route: the Service range is routed here, on our device, so the
  # route goes away with it.
  ip route add "$NODE_SERVICE_CIDR" dev "$NODE_BRIDGE" src "$NODE_GATEWAY"
  # Forwarding between pods (a Service's DNAT turns pod->ClusterIP into pod->pod through the
  # gateway) is enabled on this bridge only; the machine's ip_forward stays as it is.
  sysctl -qw "net.ipv4.conf.$NODE_BRIDGE.forwarding=1"
  nft -f - <<EOF
table inet $NODE_NFT_TABLE {
  chain forward {
    type filter hook forward priority -10; policy accept;
    # Pod traffic may be forwarded only back into the pod bridge; never towards another interface.
    iifname "$NODE_BRIDGE" oifname != "$NODE_BRIDGE" counter drop
  }
}
EOF
}

# The kubelet's cgroupRoot must exist in every cgroup v1 hierarchy it uses (it creates the pod
# cgroups below it, not the root itself).
node_cgroups_up() {
  local mnt
  for mnt in $(awk '$3 == "cgroup" {print $2}' /proc/mounts); do
    mkdir -p "$mnt$NODE_CGROUP_ROOT"
  done
}

node_forward_start() {
  local port
  port=$(python3 -c 'import sys,yaml,urllib.parse; c=yaml.safe_load(open(sys.argv[1])); print(urllib.parse.urlparse(c["clusters"][0]["cluster"]["server"]).port)' "$KUBECONFIG_PATH")
  node_spawn apiserver-forward python3 "$HACK_DIR/node/forward.py" "$NODE_GATEWAY" "$port" 127.0.0.1 "$port"
}

node_wait() {
  local what=$1 tries=$2
  shift 2
  local i
  for i in $(seq "$tries"); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  return 1
}

node_up() {
  node_enabled || return 0
  local t0=$SECONDS
  node_preflight
  mkdir -p "$NODE_PIDS" "$NODE_LOGS" "$(dirname "$NODE_SNAPSHOT")"
  node_host_snapshot >"$NODE_SNAPSHOT"
  node_write_configs
  node_network_up
  node_cgroups_up
  node_forward_start
  node_spawn containerd containerd --config "$NODE_DIR/containerd/config.toml"
  node_wait containerd 60 ctr --address "$NODE_RUN/containerd.sock" version ||
    { tail -n 30 "$NODE_LOGS/node-containerd.log" >&2; die "real node: containerd did not start"; }
  node_images
  # shellcheck source=/dev/null
  . "$NODE_DIR/ports.env"
  node_spawn kubelet "$KUBEMOE_BIN_DIR/kubelet" --config "$NODE_DIR/kubelet/config.yaml" \
    --kubeconfig "$KUBECONFIG_PATH" --root-dir "$NODE_DIR/kubelet/root" \
    --cert-dir "$NODE_DIR/kubelet/pki" --hostname-override "$NODE_NAME" --node-ip "$NODE_GATEWAY" \
    --node-labels "kubemoe.io/node=real" --register-with-taints "kubemoe.io/node=real:NoSchedule" --v=1
  node_spawn kube-proxy "$KUBEMOE_BIN_DIR/kube-proxy" --config "$NODE_DIR/kube-proxy/config.yaml"
  if ! node_wait kubelet 240 kctl wait --for=condition=Ready --timeout=1s "node/$NODE_NAME"; then
    tail -n 40 "$NODE_LOGS/node-kubelet.log" >&2
    die "real node: $NODE_NAME not Ready after 120s"
  fi
  node_wait kube-proxy 120 curl -fsS --max-time 2 "http://127.0.0.1:$PROXY_HEALTHZ_PORT/healthz" ||
    { tail -n 30 "$NODE_LOGS/node-kube-proxy.log" >&2; die "real node: kube-proxy not healthy"; }
  log "real node $NODE_NAME Ready in $((SECONDS - t0))s: pods on $NODE_POD_CIDR (bridge $NODE_BRIDGE), Services $NODE_SERVICE_CIDR"
}

node_healthy() {
  node_enabled || return 0
  local c
  for c in "${NODE_COMPONENTS[@]}"; do node_pid "$c" >/dev/null || return 1; done
  kctl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -q True
}

node_status() {
  node_enabled || { echo "real node: disabled (KUBEMOE_REAL_NODE=0)"; return 0; }
  local c
  for c in "${NODE_COMPONENTS[@]}"; do
    printf '  node %-18s %s\n' "$c" "$(node_pid "$c" >/dev/null && echo "running (pid $(node_pid "$c"))" || echo DOWN)"
  done
  kctl get node "$NODE_NAME" -o wide 2>/dev/null | sed 's/^/  /' || true
}

node_logs() {
  local c
  for c in "${NODE_COMPONENTS[@]}"; do
    [ -f "$NODE_LOGS/node-$c.log" ] || continue
    echo "===== node-$c (tail)"
    tail -n 60 "$NODE_LOGS/node-$c.log"
  done
}

node_kill() {
  local name=$1 pid i
  pid=$(node_pid "$name") || { rm -f "$NODE_PIDS/node-$name.pid"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 40); do
    [ "$(pid_state "$pid")" = running ] || break
    sleep 0.25
  done
  [ "$(pid_state "$pid")" = running ] && kill -KILL "$pid" 2>/dev/null
  for i in $(seq 20); do
    [ "$(pid_state "$pid")" = running ] || { rm -f "$NODE_PIDS/node-$name.pid"; return 0; }
    sleep 0.25
  done
  die "real node: $name (pid $pid) did not exit"
}

# runc shims of our containerd: their command line names our containerd socket.
node_shim_pids() {
  local p
  for p in $(pgrep -f containerd-shim-runc-v2 2>/dev/null); do
    tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF -- "$NODE_RUN/containerd.sock" && echo "$p"
  done
  return 0
}

node_down() {
  local ctr=(ctr --address "$NODE_RUN/containerd.sock" -n k8s.io) p id
  [ -d "$NODE_DIR" ] || [ -d "$NODE_RUN" ] || ip link show "$NODE_BRIDGE" >/dev/null 2>&1 || return 0
  # 1. While the API server and kubelet still run: let the kubelet stop every pod, which also
  #    runs the CNI DEL of each sandbox (veth, netns, IP address) properly.
  if node_pid kubelet >/dev/null && kctl get node "$NODE_NAME" >/dev/null 2>&1; then
    kctl cordon "$NODE_NAME" >/dev/null 2>&1 || true
    kctl delete pods -A --field-selector "spec.nodeName=$NODE_NAME" --grace-period=0 --force \
      --wait=false >/dev/null 2>&1 || true
    node_wait pods-gone 60 sh -c "[ -z \"\$(${ctr[*]} tasks ls -q 2>/dev/null)\" ]" || true
  fi
  node_kill kubelet
  node_kill kube-proxy
  # 2. Whatever is left in containerd: kill the tasks, remove the containers.
  if node_pid containerd >/dev/null; then
    for id in $("${ctr[@]}" tasks ls -q 2>/dev/null); do "${ctr[@]}" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
    sleep 1
    for id in $("${ctr[@]}" tasks ls -q 2>/dev/null); do "${ctr[@]}" tasks delete -f "$id" >/dev/null 2>&1 || true; done
    for id in $("${ctr[@]}" containers ls -q 2>/dev/null); do "${ctr[@]}" containers delete "$id" >/dev/null 2>&1 || true; done
  fi
  node_kill containerd
  for p in $(node_shim_pids); do kill -KILL "$p" 2>/dev/null || true; done
  node_kill apiserver-forward
  # 3. kube-proxy's tables (its own cleanup mode), our guard table, the bridge.
  "$KUBEMOE_BIN_DIR/kube-proxy" --cleanup --v=0 >/dev/null 2>&1 || true
  nft delete table ip kube-proxy 2>/dev/null || true
  nft delete table ip6 kube-proxy 2>/dev/null || true
  nft delete table inet "$NODE_NFT_TABLE" 2>/dev/null || true
  # 4. Pod network namespaces our containerd made and did not remove (it was killed mid-way).
  for p in /run/netns/cni-*; do
    [ -e "$p" ] || continue
    grep -qxF "$(basename "$p")" <(sed -n '/^# netns/,/^# /p' "$NODE_SNAPSHOT" 2>/dev/null) && continue
    ip netns delete "$(basename "$p")" 2>/dev/null || true
  done
  ip link delete "$NODE_BRIDGE" 2>/dev/null || true
  # 5. Mounts under our directories (deepest first), then our cgroups (deepest first).
  { awk '{print $2}' /proc/mounts | grep -E "^($NODE_DIR|$NODE_RUN)(/|$)" || true; } | sort -r |
    while read -r p; do umount -l "$p" 2>/dev/null || true; done
  for p in /sys/fs/cgroup/*"$NODE_CGROUP_ROOT"; do
    [ -d "$p" ] || continue
    find "$p" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  rm -rf "$NODE_RUN" "$NODE_DIR"
  # The shims' /run/containerd (sockets, fifos), when it was not there before and no other
  # containerd runs: it is then ours alone.
  if [ -f "$NODE_SNAPSHOT" ] && ! sed -n '/^# \/run\/containerd/,$p' "$NODE_SNAPSHOT" | grep -qv '^#' &&
    ! ps -C containerd -o stat= 2>/dev/null | grep -qv '^Z'; then
    # (a killed containerd can linger as a zombie until init reaps it: that one does not count)
    rm -rf /run/containerd
  fi
  # 6. The machine must be as node_up found it.
  if [ -f "$NODE_SNAPSHOT" ]; then
    local diff
    diff=$(node_snapshot_diff) || die "real node: could not compare the machine with $NODE_SNAPSHOT"
    if [ -n "$diff" ]; then
      die "real node: down left the machine changed (< before up, > now):"$'\n'"$diff"
    fi
    rm -f "$NODE_SNAPSHOT"
    log "real node removed; the machine is as before (links, addresses, routes, netns, nftables, iptables, cgroups, mounts)"
  fi
}
