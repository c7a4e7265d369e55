"""Every condition type and reason the operator writes, in one place.

A reason is a stable CamelCase word that alerts, dashboards and `kubectl wait` can match on; it never
carries a variable part (that goes in the message). The planner's own reasons (`planner.PlanReason`) are
the other half of what `Planned=False` can say.
"""

from __future__ import annotations

from enum import StrEnum


class ConditionType(StrEnum):
    PLANNED = "Planned"
    PROGRESSING = "Progressing"
    AVAILABLE = "Available"
    READY = "Ready"
    DEGRADED = "Degraded"
    CAPACITY_OK = "CapacityOK"
    ROUTE_ACCEPTED = "RouteAccepted"  # only while spec.routing asks for an HTTPRoute


class Reason(StrEnum):
    # The spec and the plan.
    PLANNED = "Planned"
    INVALID_SPEC = "InvalidSpec"
    NOT_PLANNED = "NotPlanned"
    UNSUPPORTED_ENGINE_VERSION = "UnsupportedEngineVersion"
    LEADER_WORKER_SET_MISSING = "LeaderWorkerSetMissing"
    # Applying the children.
    APPLY_FAILED = "ApplyFailed"  # any other rejection by the API server
    APPLY_REJECTED = "ApplyRejected"  # 400/422: the child is invalid (schema, admission webhook)
    APPLY_FORBIDDEN = "ApplyForbidden"  # 403: RBAC, or a quota / policy admission denied it
    APPLY_CONFLICT = "ApplyConflict"  # 409
    API_UNAVAILABLE = "APIUnavailable"  # no answer, a timeout or a 5xx: the API server, not the object
    RECONCILE_ERROR = "ReconcileError"  # a bug on our side; the message has the exception
    NOT_OBSERVED = "NotObserved"  # the children were not looked at in this reconcile
    NAMESPACE_TERMINATING = "NamespaceTerminating"  # the namespace is being deleted: nothing new goes in
    # Rollout and readiness.
    ROLLING_OUT = "RollingOut"
    ROLLOUT_COMPLETE = "RolloutComplete"
    MINIMUM_REPLICAS_AVAILABLE = "MinimumReplicasAvailable"
    NO_REPLICA_READY = "NoReplicaReady"
    READY = "Ready"
    WAITING_FOR_PODS = "WaitingForPods"
    SCALED_TO_ZERO = "ScaledToZero"
    AS_EXPECTED = "AsExpected"
    OPTIONAL_API_MISSING = "OptionalAPIMissing"
    # Pod failures, as the classifier in `controller.observe` names them.
    UNSCHEDULABLE = "Unschedulable"
    IMAGE_PULL_FAILED = "ImagePullFailed"
    CRASH_LOOP = "CrashLoopBackOff"
    OOM_KILLED = "OOMKilled"
    CONTAINER_CONFIG_ERROR = "ContainerConfigError"
    POD_FAILED = "PodFailed"
    GROUP_FAILED = "GroupFailed"  # a LeaderWorkerSet group that cannot start as a whole
    # The HTTPRoute, as the Gateway controllers report it in its status.parents (controller.route).
    ROUTE_ACCEPTED = "RouteAccepted"  # every parent: Accepted=True and ResolvedRefs=True
    ROUTE_NOT_ACCEPTED = "RouteNotAccepted"  # a parent said Accepted=False; the message has its reason
    ROUTE_REFS_UNRESOLVED = "RouteRefsUnresolved"  # accepted, but ResolvedRefs=False (e.g. no such Service)
    ROUTE_STATUS_PENDING = "RouteStatusPending"  # no controller has written (this generation's) status yet
    # Pipelines.
    ROUTER_NOT_READY = "RouterNotReady"
    PEERS_NOT_READY = "PeersNotReady"  # decentralised: some member's peer is not ready
    MODEL_NOT_FOUND = "ModelNotFound"
    MODEL_NOT_READY = "ModelNotReady"
    STABLE = "Stable"
    OVER_CAPACITY = "OverCapacity"
    CAPACITY_UNKNOWN = "Unknown"
