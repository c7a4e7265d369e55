"""The one reconcile frame both kinds run: read -> validate -> plan and render -> apply -> prune -> observe
-> write status. What differs between MoEModel and MoAPipeline is plugged in as `KindHooks`; the rest is
here, once, so both kinds behave the same on every path:

- every exit writes the status (in the manner of KAITO's deferred status sync): an invalid spec, a plan
  that cannot be made, a child the API server rejects, an API server that does not answer, a bug;
- a failure sets every condition of the kind (none is left from an older generation), with
  `observedGeneration`, posts one Warning event when it is new, and says in `Degraded` which attempt this
  was and when the next one comes;
- the status is built through the kind's status model, and written only when it changed, so an unchanged
  resync writes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from pydantic import ValidationError

from kubemoe.api.common import Condition, StatusModel
from kubemoe.api.conditions import ConditionType, Reason
from kubemoe.controller import conditions as cond
from kubemoe.controller import metrics
from kubemoe.controller.conditions import AnyReason
from kubemoe.controller.events import announce_sync, post_event
from kubemoe.controller.kube import Kind, KubeClient, KubeError, Reader, kind_of, remember
from kubemoe.controller.observe import Problem
from kubemoe.controller.queue import backoff_seconds
from kubemoe.controller.sync import ChildRejected, SyncResult, apply_children, prune_children
from kubemoe.documents import format_validation_error
from kubemoe.render.meta import MANAGED_BY

log = logging.getLogger(__name__)

M = TypeVar("M")
S = TypeVar("S", bound=StatusModel)


class Stop(Exception):
    """This generation cannot go further; `reason` and `message` go to the conditions. `planned` is what
    Planned says (None: leave it as the plan step set it); `retry` puts the key on the backoff."""

    def __init__(self, reason: AnyReason, message: str, *, planned: bool | None = False, retry: bool = False):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.planned = planned
        self.retry = retry


class ReconcileFailed(Exception):
    """Raised after the status said so, to put the key on the backoff; `reason` labels the error metric."""

    def __init__(self, reason: AnyReason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass
class Observed:
    """What the kind's observe step found; the frame turns it into the conditions every kind shares."""

    outcome: str
    available: bool
    available_reason: AnyReason
    available_message: str
    rolled_out: bool
    progress_message: str
    ready: bool
    ready_reason: AnyReason
    ready_message: str
    problems: list[Problem] = field(default_factory=list)


#: The conditions the frame writes for every kind; a kind's `condition_types` adds its own to these.
FRAME_CONDITIONS: tuple[ConditionType, ...] = (
    ConditionType.PLANNED,
    ConditionType.PROGRESSING,
    ConditionType.AVAILABLE,
    ConditionType.READY,
    ConditionType.DEGRADED,
)


class KindHooks(Protocol[M, S]):
    kind: Kind
    owned_kinds: list[Kind]
    condition_types: tuple[ConditionType, ...]

    def status_type(self) -> type[S]: ...

    def selector(self, name: str) -> str:
        """Selector of the children and pods (without the managed-by label)."""
        ...

    def parse(self, obj: dict[str, Any]) -> M: ...

    def render(
        self, obj: dict[str, Any], model: M, status: S, generation: int | None
    ) -> list[dict[str, Any]]:
        """Plan and render; set what the plan adds to the status (Planned=True included), or raise Stop."""
        ...

    def observe(
        self, obj: dict[str, Any], model: M, synced: SyncResult, status: S, generation: int | None
    ) -> Observed: ...


@dataclass(frozen=True)
class FrameContext:
    kube: KubeClient
    #: Where children and pods are read from (the API client, or a watch-fed cache).
    reader: Reader


@dataclass
class _Run(Generic[M, S]):
    ctx: FrameContext
    hooks: KindHooks[M, S]
    obj: dict[str, Any]
    status: S
    generation: int | None

    @property
    def conditions(self) -> list[Condition]:
        conditions: list[Condition] = self.status.conditions  # type: ignore[attr-defined]
        return conditions

    def set(self, type_: ConditionType, value: bool | None, reason: AnyReason, message: str) -> None:
        if type_ in self.hooks.condition_types:
            cond.set_condition(
                self.conditions, type_, value, reason=reason, message=message, generation=self.generation
            )


def _typed_status(status_type: type[S], raw: Any) -> S:
    try:
        return status_type.model_validate(raw or {})
    except ValidationError:  # a status from an older, incompatible operator: start afresh
        return status_type()


def dump_status(status: StatusModel) -> dict[str, Any]:
    out: dict[str, Any] = status.model_dump(by_alias=True, mode="json", exclude_none=True)
    return out


def reconcile_object(
    ctx: FrameContext, hooks: KindHooks[M, S], namespace: str, name: str, *, attempt: int = 0
) -> str:
    """Reconcile one object; returns an outcome word. Raises ReconcileFailed (after writing the status)
    when the key should come back after a backoff; `attempt` is how many tries failed before this one."""
    # From the watch-fed cache when there is one (as fresh as the last watch event or our own last write;
    # a newer spec arriving meanwhile queues the key again), else from the API server.
    obj = ctx.reader.get(hooks.kind, namespace, name)
    if obj is None or obj["metadata"].get("deletionTimestamp"):
        metrics.set_managed((hooks.kind.kind, namespace, name), None)
        return "gone"  # owner references let the garbage collector remove the children
    status_type = hooks.status_type()
    before = dump_status(_typed_status(status_type, obj.get("status")))
    run = _Run(
        ctx, hooks, obj, _typed_status(status_type, obj.get("status")), obj["metadata"].get("generation")
    )
    failure: Stop | None = None
    cause: BaseException | None = None
    try:
        outcome = _body(run)
    except Stop as stop:
        failure = stop
    except ChildRejected as exc:
        if namespace_terminating(exc.error):
            # The namespace is being deleted, and this object with it: retrying cannot help, and a Warning
            # event cannot be posted either (it is new content too). The status says so, once.
            log.info(
                "%s %s/%s: its namespace is being deleted; nothing is re-created",
                hooks.kind.kind,
                namespace,
                name,
            )
            failure = Stop(
                Reason.NAMESPACE_TERMINATING, f"the namespace is being deleted: {exc}", planned=None
            )
        else:
            failure, cause = Stop(_rejection_reason(exc.error), str(exc), planned=None, retry=True), exc
    except KubeError as exc:
        failure, cause = Stop(_api_reason(exc), exc.message, planned=None, retry=True), exc
    except Exception as exc:  # a bug: say so in the status rather than only in our log
        log.exception("reconcile %s %s/%s failed", hooks.kind.kind, namespace, name)
        failure, cause = (
            Stop(Reason.RECONCILE_ERROR, f"{type(exc).__name__}: {exc}", planned=None, retry=True),
            exc,
        )
    if failure is not None:
        outcome = _record_failure(run, failure, attempt)
    run.status.observed_generation = run.generation  # type: ignore[attr-defined]
    try:
        _write_status(run, before)
    except KubeError as exc:
        if failure is None:
            raise
        log.warning("could not write the status of %s %s/%s: %s", hooks.kind.kind, namespace, name, exc)
    if failure is not None and failure.retry:
        raise ReconcileFailed(failure.reason, failure.message) from cause
    return outcome


def _body(run: _Run[M, S]) -> str:
    hooks, kube, reader = run.hooks, run.ctx.kube, run.ctx.reader
    meta = run.obj["metadata"]
    try:
        model = hooks.parse(run.obj)
    except ValidationError as exc:
        raise Stop(Reason.INVALID_SPEC, format_validation_error(exc, "spec")) from exc
    plan_before = getattr(run.status, "plan", None)
    objects = hooks.render(run.obj, model, run.status, run.generation)
    plan_after = getattr(run.status, "plan", None)
    missing = sorted({o["kind"] for o in objects if not kube.has_api(kind_of(o))})
    present = [o for o in objects if o["kind"] not in missing]
    synced = apply_children(kube, present, reader)
    synced.pruned = prune_children(
        kube,
        namespace=meta["namespace"],
        owner_uid=meta["uid"],
        selector=f"{hooks.selector(meta['name'])},app.kubernetes.io/managed-by={MANAGED_BY}",
        kinds=[k for k in hooks.owned_kinds if kube.has_api(k)],
        keep={(o["kind"], o["metadata"]["name"]) for o in present},
        reader=reader,
    )
    announce_sync(
        kube,
        run.obj,
        applied=synced.applied,
        pruned=synced.pruned,
        planned=plan_after.reason if plan_after is not None and plan_after != plan_before else None,
    )
    counts: dict[str, int] = {}
    for child_kind, _ in synced.live:
        counts[child_kind] = counts.get(child_kind, 0) + 1
    metrics.set_managed((hooks.kind.kind, meta["namespace"], meta["name"]), counts)
    seen = hooks.observe(run.obj, model, synced, run.status, run.generation)
    problems = list(seen.problems)
    if missing:
        problems.append(
            Problem(
                Reason.OPTIONAL_API_MISSING,
                f"skipped {', '.join(missing)}: {optional_apis(missing)} CRDs are not installed",
            )
        )
    run.set(ConditionType.AVAILABLE, seen.available, seen.available_reason, seen.available_message)
    run.set(
        ConditionType.PROGRESSING,
        not seen.rolled_out,
        Reason.ROLLING_OUT if not seen.rolled_out else Reason.ROLLOUT_COMPLETE,
        seen.progress_message,
    )
    if problems:  # every problem is listed; the reason is the most urgent one's
        run.set(ConditionType.DEGRADED, True, problems[0].reason, "; ".join(p.message for p in problems))
    else:
        run.set(ConditionType.DEGRADED, False, Reason.AS_EXPECTED, "")
    run.set(ConditionType.READY, seen.ready, seen.ready_reason, seen.ready_message)
    return seen.outcome


#: Kinds whose CRDs may be missing, and the project that provides them (for the condition message).
OPTIONAL_APIS = {
    "LeaderWorkerSet": "LeaderWorkerSet (sigs.k8s.io/lws)",
    "HTTPRoute": "Gateway API",
    "PrometheusRule": "prometheus-operator",
    "ServiceMonitor": "prometheus-operator",
}


def optional_apis(missing: list[str]) -> str:
    return "the " + ", ".join(sorted({OPTIONAL_APIS.get(k, k) for k in missing}))


def namespace_terminating(error: KubeError) -> bool:
    """A 403 from the NamespaceLifecycle admission plugin: no new object may be created in a namespace that is
    being deleted (updates and status writes still go through)."""
    return error.status == 403 and "because it is being terminated" in error.message


def _rejection_reason(error: KubeError) -> Reason:
    if error.status in (400, 422):
        return Reason.APPLY_REJECTED
    if error.status == 403:
        return Reason.APPLY_FORBIDDEN
    if error.status == 409:
        return Reason.APPLY_CONFLICT
    return _api_reason(error)


def _api_reason(error: KubeError) -> Reason:
    if error.status == 0 or error.status >= 500 or error.status == 429:
        return Reason.API_UNAVAILABLE
    return Reason.APPLY_FAILED


def _record_failure(run: _Run[M, S], failure: Stop, attempt: int) -> str:
    """Set every condition of the kind for this generation, and post a Warning event when the failure is
    new (not on each retry of the same one)."""
    before = cond.condition(run.conditions, ConditionType.READY)
    message = failure.message
    was_planned = cond.is_true(run.conditions, ConditionType.PLANNED)
    if failure.planned is False:
        run.set(ConditionType.PLANNED, False, failure.reason, message)
    ready_reason: AnyReason = Reason.NOT_PLANNED if failure.planned is False else failure.reason
    kept = (
        " Existing children, if any, are left as they were."
        if was_planned and failure.planned is False
        else ""
    )
    ready_message = f"{failure.reason}: {message}{kept}" if failure.planned is False else message
    new = before is None or before.reason != ready_reason or before.message != ready_message
    run.set(ConditionType.READY, False, ready_reason, ready_message)
    run.set(ConditionType.PROGRESSING, False, failure.reason, message)
    run.set(ConditionType.AVAILABLE, None, Reason.NOT_OBSERVED, f"children not observed: {failure.reason}")
    run.set(ConditionType.CAPACITY_OK, None, Reason.NOT_OBSERVED, f"not computed: {failure.reason}")
    run.set(ConditionType.ROUTE_ACCEPTED, None, Reason.NOT_OBSERVED, f"route not observed: {failure.reason}")
    if hasattr(run.status, "gateway_endpoint"):  # said only while the route is seen accepted
        run.status.gateway_endpoint = None
    retry = (
        f" (attempt {attempt + 1}; next retry in "
        f"{backoff_seconds(attempt + 1, transient=failure.reason == Reason.API_UNAVAILABLE):.0f}s)"
        if failure.retry
        else " (retried when the object changes)"
    )
    run.set(ConditionType.DEGRADED, True, failure.reason, message + retry)
    if new and failure.reason != Reason.NAMESPACE_TERMINATING:
        post_event(run.ctx.kube, run.obj, reason=failure.reason.value, message=message, warning=True)
    metrics.RECONCILE_ERRORS.labels(kind=run.hooks.kind.kind, reason=failure.reason.value).inc()
    return "failed" if failure.retry else "not-planned"


def _write_status(run: _Run[M, S], before: dict[str, Any]) -> None:
    after = dump_status(run.status)
    if after == before:
        return
    # A merge patch: a field we no longer report is set to null, so it is removed rather than left stale.
    patch: dict[str, Any] = {k: None for k in before if k not in after}
    patch.update(after)
    meta = run.obj["metadata"]
    stored = run.ctx.kube.patch_status(run.hooks.kind, meta["namespace"], meta["name"], patch)
    remember(run.ctx.reader, run.hooks.kind.kind, stored)  # the next reconcile compares against this
    metrics.WRITES.labels(verb="status", kind=run.hooks.kind.kind).inc()
