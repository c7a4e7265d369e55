"""Building blocks shared by both custom resources: the base model, conditions, references, routing.

Every user-facing model forbids unknown fields (`extra='forbid'`): a typo such as `maxModelLenn` is an
error, never silently dropped. Field names are snake_case in Python and camelCase in YAML.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, WithJsonSchema, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from kubemoe.api import rules as r
from kubemoe.api.conditions import ConditionType
from kubemoe.api.rules import Checked, Rule

GROUP = "kubemoe.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

#: Kubernetes names (RFC 1123 label): what a Service, Deployment or Secret may be called.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: Subdomain names (RFC 1123): Secrets, ConfigMaps, most objects.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

# A Kubernetes quantity written either as a number (`cpu: 4`) or a string (`memory: 64Gi`). Its grammar is
# checked by the map that holds it (`rules.QUANTITIES`), so the message names the rule, not a regex.
Quantity = Annotated[
    int | Annotated[str, Field(max_length=64)],
    WithJsonSchema(
        {"x-kubernetes-int-or-string": True, "maxLength": 64, "description": "A Kubernetes quantity."}
    ),
]


class KubeModel(BaseModel):
    """Base for every user-written spec: camelCase in YAML, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=False,
        # JSON types as the API server checks them: "3" is not an integer, 1 is not a boolean.
        strict=True,
    )

    #: CEL rules copied into the CRD as `x-kubernetes-validations`; each has a Python twin in a validator,
    #: so `kubemoe render` (no cluster) and `kubectl apply` reject the same objects with the same message.
    cel_rules: ClassVar[list[dict[str, str]]] = []
    #: Rules written once (`kubemoe.api.rules`): emitted as CEL and checked by `_check_rules` in Python.
    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> KubeModel:
        broken = r.first_broken(type(self).rules, self)
        if broken is not None:
            raise ValueError(broken.message)
        return self

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler.resolve_ref_schema(handler(core_schema))
        validations = [dict(rule) for rule in cls.cel_rules] + [rule.schema() for rule in cls.rules]
        if validations:
            schema["x-kubernetes-validations"] = validations
        # A sub-object that is built by default (engine, serving, ...) gets `default: {}` in the CRD, so the API
        # server applies its nested defaults even when the user leaves the whole block out.
        for name, field in cls.model_fields.items():
            factory = field.default_factory
            if isinstance(factory, type) and issubclass(factory, KubeModel):
                schema["properties"][field.alias or name]["default"] = {}
        return schema

    def to_yaml_dict(self) -> dict[str, Any]:
        """The object as it is written in YAML: camelCase, unset fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class StatusModel(BaseModel):
    """Base for status objects, which the operator writes: camelCase, tolerant of fields it does not know."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    cel_rules: ClassVar[list[dict[str, str]]] = []


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(StatusModel):
    """One observation of the object's state, in the shape of metav1.Condition."""

    type: ConditionType = Field(
        description="Condition type: Planned, Progressing, Available, Ready, Degraded, CapacityOK, RouteAccepted."
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    # A str, not an enum: the planner's PlanReason values are reasons too (both are listed in
    # api.conditions and planner.types), and a reason added later must not fail an older reader.
    reason: str = Field(description="A stable CamelCase word saying why, e.g. InsufficientMemory.")
    message: str = Field(default="", description="What happened and what to change, for people.")
    last_transition_time: datetime | None = Field(
        default=None, description="When status last changed (not when the condition was last checked)."
    )
    observed_generation: int | None = Field(
        default=None, description="The metadata.generation this condition was computed from."
    )


class SecretKeyRef(KubeModel):
    """A key in a Secret in the same namespace. The value is mounted or passed by reference, never inlined."""

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253, description="Name of the Secret.")
    key: str = Field(default="token", min_length=1, max_length=253, description="Key within the Secret.")


class ParentRef(KubeModel):
    """A Gateway (Gateway API) that the HTTPRoute attaches to."""

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253, description="Name of the Gateway.")
    namespace: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        max_length=63,
        description="Namespace of the Gateway; defaults to the CR's.",
    )
    section_name: str | None = Field(
        default=None, pattern=DNS_LABEL, max_length=253, description="A listener of the Gateway to attach to."
    )


class Routing(KubeModel):
    """Expose the endpoint through a Gateway API HTTPRoute. Leave out to get only an in-cluster Service."""

    parent_refs: list[ParentRef] = Field(
        min_length=1, max_length=16, description="Gateways to attach the HTTPRoute to."
    )
    hostnames: Annotated[list[Annotated[str, Field(min_length=1, max_length=253)]], Checked(r.HOSTNAMES)] = (
        Field(
            default_factory=list,
            max_length=16,
            description="Host names the route answers for (any when empty): RFC 1123, optionally `*.` first.",
        )
    )
    path_prefix: str | None = Field(
        default=None,
        pattern=r"^/[A-Za-z0-9._~/-]*$",
        max_length=1024,
        description="Path prefix on the Gateway, rewritten to /v1 for the server. Defaults to /v1/<name>.",
    )


#: An int64 field: bounded in Python, `format: int64` for the API server (which refuses numeric bounds this
#: large, and overflows beyond them itself).
Int64 = Annotated[
    int, Field(ge=-(2**63), le=2**63 - 1), WithJsonSchema({"type": "integer", "format": "int64"})
]


class Toleration(KubeModel):
    """A pod toleration, as in core/v1."""

    key: Annotated[str, Field(max_length=317), Checked(r.TOLERATION_KEY)] | None = Field(
        default=None, description="Taint key to tolerate; empty with Exists: every taint."
    )
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal.")
    value: Annotated[str, Field(max_length=63), Checked(r.TOLERATION_VALUE)] | None = Field(
        default=None, description="Taint value when operator is Equal."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; all effects when empty."
    )
    toleration_seconds: Int64 | None = Field(
        default=None, description="How long a NoExecute taint is tolerated."
    )

    rules: ClassVar[tuple[Rule, ...]] = (
        r.EXISTS_HAS_NO_VALUE,
        r.EMPTY_KEY_NEEDS_EXISTS,
        r.SECONDS_NEED_NO_EXECUTE,
    )


ResourceList = Annotated[dict[str, Quantity], Checked(r.RESOURCE_NAMES, r.QUANTITIES)]

#: Node labels a pod must match, checked as label keys and values.
# Values carry maxLength so the API server can bound the cost of the CEL rule over them.
NodeSelector = Annotated[
    dict[str, Annotated[str, Field(max_length=63)]], Checked(r.LABEL_KEYS, r.LABEL_VALUES)
]


class ResourceOverrides(KubeModel):
    """CPU, memory and other non-accelerator resources of the serving container. Accelerators come from the plan."""

    requests: ResourceList = Field(
        default_factory=dict, max_length=32, description="Resource requests, e.g. cpu, memory."
    )
    limits: ResourceList = Field(
        default_factory=dict,
        max_length=32,
        description="Resource limits, e.g. memory (at least the request).",
    )

    rules: ClassVar[tuple[Rule, ...]] = (r.LIMITS_COVER_REQUESTS,)
