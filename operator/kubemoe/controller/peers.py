"""What a decentralised MoAPipeline's peers mean for its status: one entry per member in `status.peers`,
and the conditions the frame writes.

Two sources, for two different things:

- Readiness comes from the API server: each member's Deployment and pods (`observe_workload`), the same
  signal the client Service's endpoints follow. Ready = every peer ready (and every model); Available =
  at least one peer ready, since then the client Service `<name>-router` answers; a peer that is down is
  listed in `Degraded`.
- The stability figures (rho, lambda, alpha, the k in use) exist only in each peer's memory, and the issue
  wants them in the pipeline status, so the operator reads each *ready* peer's `GET /status` (no key
  needed, like /metrics) at its pod IP. Bounded: one timeout per call (`PeerStatusReader.timeout_seconds`,
  1 s by default), all peers at once, so one reconcile waits at most one timeout; a peer that does not
  answer keeps its readiness and gets no figures, and CapacityOK says which peers were not read. Pods
  that are not ready are never called. The figures are as of the last reconcile (events and the resync
  period); Prometheus scrapes the same numbers continuously from /metrics.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kubemoe.api.conditions import Reason
from kubemoe.api.moapipeline import MoAPipeline, PeerStatus
from kubemoe.controller.kube import KINDS, Reader
from kubemoe.controller.observe import Problem, WorkloadState, observe_workload
from kubemoe.controller.sync import SyncResult
from kubemoe.render.meta import MANAGED_BY, selector_string
from kubemoe.render.peers import COMPONENT_PEER, MEMBER_LABEL, PEER_PORT, members, peer_address, peer_name

#: Fetch one peer's /status JSON from a URL within a timeout; raises on any failure.
Fetch = Callable[[str, float], dict[str, Any]]


#: No proxies from the environment: the peers are pod IPs, reached directly or not at all.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_fetch(url: str, timeout: float) -> dict[str, Any]:
    with _OPENER.open(url, timeout=timeout) as resp:
        body = json.loads(resp.read(1 << 20))
    if not isinstance(body, dict):
        raise ValueError("/status is not a JSON object")
    return body


@dataclass(frozen=True)
class PeerStatusReader:
    """How the operator reads peers' /status; `timeout_seconds=0` turns it off (readiness only)."""

    timeout_seconds: float = 1.0
    fetch: Fetch = http_fetch

    def read_all(self, urls: dict[str, str]) -> dict[str, dict[str, Any] | str]:
        """member -> its /status body, or why it could not be read. All at once, each within the timeout."""
        if not urls or self.timeout_seconds <= 0:
            return dict.fromkeys(urls, "not read (off)")

        def one(url: str) -> dict[str, Any] | str:
            try:
                return self.fetch(url, self.timeout_seconds)
            except Exception as exc:  # any failure is one peer without figures, never a failed reconcile
                return f"{type(exc).__name__}: {exc}"[:200]

        with ThreadPoolExecutor(max_workers=min(16, len(urls))) as pool:
            results = dict(zip(urls, pool.map(one, urls.values()), strict=True))
        return results


def peer_selector(pipeline: str, member: str | None = None) -> str:
    base = selector_string("MoAPipeline", pipeline, COMPONENT_PEER)
    return base if member is None else f"{base},{MEMBER_LABEL}={member}"


def peer_addresses(reader: Reader, pipeline: MoAPipeline) -> dict[str, str]:
    """member -> `http://<clusterIP>:<port>` for each member Service that exists and has an address."""
    out: dict[str, str] = {}
    name, ns = pipeline.metadata.name, pipeline.metadata.namespace
    for member in members(pipeline):
        svc = reader.get(KINDS["Service"], ns, peer_name(name, member.name))
        ip = ((svc or {}).get("spec") or {}).get("clusterIP")
        if isinstance(ip, str) and ip and ip != "None":
            out[member.name] = peer_address(ip)
    return out


def _ready_pod_ip(reader: Reader, namespace: str, selector: str) -> str | None:
    pods = reader.list(KINDS["Pod"], namespace, f"{selector},app.kubernetes.io/managed-by={MANAGED_BY}")
    for pod in sorted(pods, key=lambda p: str(p["metadata"]["name"])):
        st = pod.get("status") or {}
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or []
        )
        if ready and not pod["metadata"].get("deletionTimestamp") and st.get("podIP"):
            return str(st["podIP"])
    return None


def _round(body: dict[str, Any]) -> dict[str, Any]:
    """Three significant digits: the figures move all the time, and a status write per reconcile for a
    change in the fifth digit is noise."""
    return {k: float(f"{v:.3g}") if isinstance(v, float) else v for k, v in body.items()}


@dataclass
class PeersSeen:
    peers: list[PeerStatus] = field(default_factory=list)
    states: dict[str, WorkloadState] = field(default_factory=dict)
    unread: dict[str, str] = field(default_factory=dict)  # ready peers whose /status was not read, and why

    @property
    def ready(self) -> list[str]:
        return [p.member for p in self.peers if p.ready]

    @property
    def unready(self) -> list[str]:
        return [p.member for p in self.peers if not p.ready]

    @property
    def problems(self) -> list[Problem]:
        out = [p for s in self.states.values() for p in s.problems]
        if self.unready:
            out.append(Problem(Reason.PEERS_NOT_READY, f"peer(s) not ready: {', '.join(self.unready)}"))
        return out

    def capacity(self, max_utilization: float) -> tuple[bool | None, Reason, str]:
        """CapacityOK from the peers' rho: False once any peer is at its limit, True when every ready peer
        reported below it, else unknown (which peers were not read, and why)."""
        over = [p for p in self.peers if p.utilization is not None and p.utilization >= max_utilization]
        if over:
            listed = ", ".join(f"{p.member} rho={p.utilization:.2f}" for p in over)
            return False, Reason.OVER_CAPACITY, f"at or above maxUtilization {max_utilization:g}: {listed}"
        if not self.ready or self.unread:
            why = "; ".join(f"{m}: {r}" for m, r in self.unread.items()) or "no peer is ready"
            return None, Reason.CAPACITY_UNKNOWN, f"rho not reported by every ready peer ({why})"
        top = max((p.utilization or 0.0) for p in self.peers if p.ready)
        return True, Reason.STABLE, f"highest rho {top:.2f} < maxUtilization {max_utilization:g}"


def observe_peers(
    reader: Reader,
    pipeline: MoAPipeline,
    synced: SyncResult,
    status_reader: PeerStatusReader,
    addresses: dict[str, str],
) -> PeersSeen:
    """Each member's Deployment and pods, and each ready peer's /status; in spec order."""
    name, ns = pipeline.metadata.name, pipeline.metadata.namespace
    seen = PeersSeen()
    urls: dict[str, str] = {}
    for member in members(pipeline):
        live = synced.live[("Deployment", peer_name(name, member.name))]
        selector = peer_selector(name, member.name)
        seen.states[member.name] = state = observe_workload(reader, live, namespace=ns, selector=selector)
        ip = _ready_pod_ip(reader, ns, selector) if state.ready_replicas > 0 else None
        if ip is not None:
            host = f"[{ip}]" if ":" in ip else ip
            urls[member.name] = f"http://{host}:{PEER_PORT}/status"
    bodies = status_reader.read_all(urls)
    for member in members(pipeline):
        body = bodies.get(member.name)
        # A peer is up when one of its pods is ready (rolling out or not: Progressing says that).
        ready = seen.states[member.name].ready_replicas > 0
        if isinstance(body, str):
            seen.unread[member.name] = body
        figures = _round(body) if isinstance(body, dict) else {}
        seen.peers.append(
            PeerStatus.from_peer(member.name, figures, ready=ready, address=addresses.get(member.name))
        )
    return seen
