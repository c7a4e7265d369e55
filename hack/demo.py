"""`make demo`: the operator on the local control plane, end to end.

Builds or reuses the toolchain and the local cluster, installs kubemoe with its Helm chart (the operator
pods run from the image `make image` builds, on the cluster's real node), applies the samples (and one
MoEModel that cannot fit), waits until they are Ready on the fake nodes while showing progress, then prints
`kubectl get moe -o wide` and each plan. `make demo-down` cleans up.

On a machine that cannot run containers (KUBEMOE_REAL_NODE=0, or the node did not come up) the operator
runs as a local `kubemoe run` process instead, and the demo says so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(
    os.environ.get(
        "KUBEMOE_CACHE", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kubemoe"
    )
)
STATE = CACHE / "demo"
PIDFILE = STATE / "operator.pid"
LOG = STATE / "operator.log"
KUBEMOE = str(Path(sys.executable).parent / "kubemoe")
SAMPLES = [
    "manifests/samples/mixtral-8x7b-p4de.yaml",
    "manifests/samples/mixtral-8x22b-p5-64k.yaml",
    "manifests/samples/mixtral-8x7b-trn2.yaml",
    "manifests/samples/deepseek-v3-multinode.yaml",
]
INFEASIBLE = "manifests/demo/mixtral-8x7b-tp2-on-p4d.yaml"
PIPELINE = "manifests/samples/moa-pipeline.yaml"
TIMEOUT_S = 180
CHART = "charts/kubemoe"
RELEASE_NAMESPACE = "kubemoe-system"


def step(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def sh(*args: str, check: bool = True, capture: bool = False, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(args, check=False, text=True, capture_output=capture, env=env)
    if check and proc.returncode != 0:
        sys.exit(f"demo: `{' '.join(args)}` failed ({proc.returncode})\n{proc.stderr if capture else ''}")
    return proc.stdout if capture else ""


def cluster_env() -> dict[str, str]:
    env = dict(os.environ)
    for line in sh(str(ROOT / "hack/cluster"), "env", capture=True).splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value.strip("'\"")
    return env


def operator_running() -> bool:
    try:
        os.kill(int(PIDFILE.read_text()), 0)
        return True
    except (OSError, ValueError):
        return False


def free_port(preferred: int = 18080) -> int:
    import socket

    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
                return int(sock.getsockname()[1])
            except OSError:
                continue
    raise SystemExit("demo: no free port for the operator's health endpoint")


def start_operator(env: dict[str, str]) -> None:
    if operator_running():
        print(f"operator already running (pid {PIDFILE.read_text().strip()}), log {LOG}")
        return
    STATE.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (STATE / "port").write_text(str(port))
    with LOG.open("ab") as log:
        proc = subprocess.Popen(
            [KUBEMOE, "run", "--standalone", "--resync-seconds", "15", "--health-port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    PIDFILE.write_text(str(proc.pid))
    print(f"operator started (pid {proc.pid}), log {LOG}")


def real_node(env: dict[str, str]) -> str | None:
    """The Ready real node's name, or None (then the operator runs as a local process)."""
    if os.environ.get("KUBEMOE_REAL_NODE") == "0":
        return None
    out = sh("kubectl", "get", "nodes", "-l", "kubemoe.io/node=real", "-o", "json", capture=True, env=env)
    for node in json.loads(out)["items"]:
        if conditions(node).get("Ready", {}).get("status") == "True":
            return str(node["metadata"]["name"])
    return None


def helm_install(env: dict[str, str]) -> None:
    """The chart, as a user installs it: a restricted namespace, two peered operator pods on the real node."""
    sh("kubectl", "create", "namespace", RELEASE_NAMESPACE, check=False, capture=True, env=env)
    sh("kubectl", "label", "--overwrite", "namespace", RELEASE_NAMESPACE,
       "pod-security.kubernetes.io/enforce=restricted", env=env)  # fmt: skip
    sh("helm", "upgrade", "--install", "kubemoe", CHART, "-n", RELEASE_NAMESPACE,
       "--set-string", "nodeSelector.kubemoe\\.io/node=real",
       "--set-json", 'tolerations=[{"key":"kubemoe.io/node","operator":"Equal","value":"real","effect":"NoSchedule"}]',
       "--wait", "--timeout", "240s", env=env)  # fmt: skip
    sh("kubectl", "get", "pods", "-n", RELEASE_NAMESPACE, "-o", "wide", env=env)


def conditions(obj: dict) -> dict[str, dict]:
    return {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}


def wait_ready(env: dict[str, str]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        items = json.loads(sh("kubectl", "get", "moe", "-n", "default", "-o", "json", capture=True, env=env))[
            "items"
        ]
        lines, pending = [], 0
        for obj in items:
            conds = conditions(obj)
            ready, planned = conds.get("Ready", {}), conds.get("Planned", {})
            if planned.get("status") == "False":
                state = f"not planned: {planned.get('reason')}"
            elif ready.get("status") == "True":
                state = "Ready"
            else:
                pending += 1
                state = f"waiting: {ready.get('reason', 'reconciling')}"
            lines.append(f"  {obj['metadata']['name']:<22} {state}")
        print(
            f"[{time.strftime('%H:%M:%S')}] {len(items) - pending}/{len(items)} settled\n" + "\n".join(lines),
            flush=True,
        )
        if items and pending == 0:
            return
        if time.monotonic() > deadline:
            print(f"demo: not everything is Ready after {TIMEOUT_S}s; see {LOG}")
            return
        time.sleep(5)


def up() -> None:
    os.chdir(ROOT)
    step("control-plane toolchain (built once, then cached)")
    sh(str(ROOT / "hack/toolchain"), "build")
    step("local cluster (kube-apiserver, etcd, controller-manager, scheduler, kwok fake nodes)")
    sh(str(ROOT / "hack/cluster"), "up")
    env = cluster_env()
    sh("kubectl", "get", "nodes", "-L", "node.kubernetes.io/instance-type", env=env)
    node = real_node(env)
    if node is not None:
        step(
            f"the operator image (make image: buildah, no Docker daemon), imported into the real node {node}"
        )
        sh("make", "image")
        step("kubemoe with its Helm chart: CRDs, RBAC, two peered operator pods on the real node")
        helm_install(env)
    else:
        step(
            "NO REAL NODE (KUBEMOE_REAL_NODE=0 or it is not Ready): the operator runs as a local process instead"
        )
        sh("kubectl", "apply", "--server-side", "-f", "crds/", env=env)
        # Polled, not `kubectl wait --for=condition=Established`: that fails at once while a new
        # CRD's status.conditions is still null.
        query = 'jsonpath={.status.conditions[?(@.type=="Established")].status}'
        deadline = time.monotonic() + 60
        while (
            sh(
                "kubectl", "get", "crd/moemodels.kubemoe.io", "-o", query, check=False, capture=True, env=env
            ).strip()
            != "True"
        ):
            if time.monotonic() > deadline:
                sys.exit("crd/moemodels.kubemoe.io not Established after 60s")
            time.sleep(0.5)
        start_operator(env)
    step(
        "samples: Mixtral-8x7B on p4de, Mixtral-8x22B at 64k on p5, Mixtral on trn2, DeepSeek-V3 on two p5 nodes,"
        " and the guide's Mixtral TP 2 on p4d, which cannot fit"
    )
    secret = sh(
        "kubectl",
        "create",
        "secret",
        "generic",
        "hf-token",
        "--from-literal=token=not-a-real-token",
        "--dry-run=client",
        "-o",
        "yaml",
        capture=True,
        env=env,
    )
    subprocess.run(
        ["kubectl", "apply", "-f", "-"], input=secret, text=True, env=env, check=True, capture_output=True
    )
    for path in [*SAMPLES, INFEASIBLE, PIPELINE]:
        sh("kubectl", "apply", "-f", path, env=env)
    step(f"waiting for the models (up to {TIMEOUT_S}s)")
    wait_ready(env)
    step("kubectl get moe -o wide")
    sh("kubectl", "get", "moe", "-n", "default", "-o", "wide", env=env)
    step("kubectl get moa -o wide (the MoA pipeline: its router, and the models it uses)")
    sh("kubectl", "get", "moa", "-n", "default", "-o", "wide", env=env)
    step("pods on the fake nodes")
    sh("kubectl", "get", "pods", "-n", "default", "-o", "wide", env=env)
    for path in SAMPLES:
        step(f"kubemoe plan -f {path}")
        sh(KUBEMOE, "plan", "-f", path)
    step("why mixtral-tp2-p4d was not deployed")
    obj = json.loads(
        sh("kubectl", "get", "moe", "mixtral-tp2-p4d", "-n", "default", "-o", "json", capture=True, env=env)
    )
    planned = conditions(obj).get("Planned", {})
    print(f"Planned={planned.get('status')} reason={planned.get('reason')}\n{planned.get('message')}")
    step("the MoA router on this machine against STUB backends (no GPU here): one chat completion, traced")
    sh(sys.executable, str(ROOT / "hack" / "demo_router.py"))
    step("done")
    print(
        'Explore: eval "$(hack/cluster env)"; kubectl get moe -o wide; kubectl describe moe deepseek-v3\n'
        + (
            f"Operator metrics: curl localhost:{(STATE / 'port').read_text()}/metrics\n"
            if operator_running()
            else f"Operator logs: kubectl logs -n {RELEASE_NAMESPACE} deploy/kubemoe-operator\n"
        )
        + "Clean up: make demo-down   (stops the operator and the local cluster)"
    )


def down() -> None:
    os.chdir(ROOT)
    if operator_running():
        os.killpg(int(PIDFILE.read_text()), signal.SIGTERM)
        print("operator stopped")
    PIDFILE.unlink(missing_ok=True)
    sh(str(ROOT / "hack/cluster"), "down")


if __name__ == "__main__":
    down() if sys.argv[1:] == ["down"] else up()
