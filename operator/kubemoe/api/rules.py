"""Validation rules written once and enforced twice: as CEL in the CRD (the API server, at `kubectl apply`)
and as Python in the pydantic models (`kubemoe render`, the operator), with one message for both.

A `Rule` holds the CEL expression, the message and the Python predicate side by side. Regular expressions are
shared as constants and written into CEL as raw strings, so both sides match with the same pattern (RE2 and
Python's `re` agree on the subset used here: classes, groups, alternation, bounded repetition). A field gets
its rules with `Annotated[T, Checked(rule, ...)]`; a model lists its own in `KubeModel.rules`. The shared
table `tests/cases/hostile_inputs.yaml` runs every rule's cases through both twins: in Python (unit tests)
and on the real API server (e2e), and a unit test fails if any CEL rule of the CRDs has no case there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

#: A non-negative Kubernetes quantity (apimachinery's `resource.Quantity` grammar, without the minus sign:
#: pods refuse negative requests and limits).
QUANTITY = (
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
#: A label key or resource name (a "qualified name"): an optional DNS-subdomain prefix and `/`, then a name
#: of at most 63 characters that starts and ends alphanumeric. The prefix length (<= 253) is checked apart.
QUALIFIED_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
#: A label value: empty, or at most 63 characters that start and end alphanumeric.
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
#: A Gateway API hostname (the HTTPRoute schema's own pattern): RFC 1123, optionally a leading `*.` label.
HOSTNAME = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: A kubemoe object name: a DNS-1035 label (it becomes a Service name, which must start with a letter).
CR_NAME = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
#: Child names append suffixes (LWS pods are `<name>-<group>-<worker>`), so object names leave room for them.
CR_NAME_MAX = 52
#: Engine releases whose command-line flags kubemoe renders: vLLM 0.10 and later in the 0.x line (the Neuron
#: plugin's releases, 0.16 and 0.24, are in it too). A 1.x engine may rename flags; nobody has checked it.
KNOWN_ENGINE_VERSION = r"^0\.[1-9][0-9]+([.+-]|$)"


def cel_regex(pattern: str) -> str:
    """`pattern` as a CEL raw string literal (no escaping needed: the patterns hold no single quote)."""
    assert "'" not in pattern, pattern
    return f"r'{pattern}'"


def matches(pattern: str, value: str) -> bool:
    """Python's twin of CEL's `value.matches(pattern)` (an unanchored search; the patterns anchor themselves)."""
    return re.search(pattern, value) is not None


def is_qualified_name(value: str) -> bool:
    return matches(QUALIFIED_NAME, value) and ("/" not in value or value.index("/") <= 253)


def cel_qualified_name(var: str) -> str:
    return (
        f"({var}.matches({cel_regex(QUALIFIED_NAME)}) && (!{var}.contains('/') || {var}.indexOf('/') <= 253))"
    )


_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


def quantity_text(value: int | str) -> str:
    """Python's twin of CEL's `string(value)` for an int-or-string quantity."""
    return str(value)


def is_quantity(value: int | str) -> bool:
    return matches(QUANTITY, quantity_text(value))


def parse_quantity(value: int | str) -> Decimal:
    """The value of a quantity matching `QUANTITY` (Python's twin of CEL's `quantity(...)` for comparisons)."""
    text = quantity_text(value).lstrip("+")
    try:
        for suffix, factor in _BINARY.items():
            if text.endswith(suffix):
                return Decimal(text[: -len(suffix)]) * factor
        if text[-1:] in _DECIMAL and text[-1:] != "":
            return Decimal(text[:-1]).scaleb(_DECIMAL[text[-1]])
        return Decimal(text)  # plain number or exponent form (1e3); E alone is exa, caught above
    except InvalidOperation as exc:
        raise ValueError(f"{value!r} is not a quantity") from exc


@dataclass(frozen=True)
class Rule:
    """One check with its two twins. `holds` gets the validated value (a model instance for model rules)."""

    cel: str
    message: str
    holds: Callable[[Any], bool]

    def schema(self) -> dict[str, str]:
        return {"rule": self.cel, "message": self.message}


def first_broken(rules: tuple[Rule, ...] | list[Rule], value: Any) -> Rule | None:
    return next((r for r in rules if not r.holds(value)), None)


class Checked:
    """`Annotated[T, Checked(rule, ...)]`: validate T, then the rules (Python); emit them as CEL (CRD)."""

    def __init__(self, *rules: Rule) -> None:
        self.rules = rules

    def _check(self, value: Any) -> Any:
        broken = first_broken(self.rules, value)
        if broken is not None:
            raise ValueError(broken.message)
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        out = handler(schema)
        out.setdefault("x-kubernetes-validations", []).extend(r.schema() for r in self.rules)
        return out


# ----------------------------------------------------------------------------------- the rules themselves


def _all_values(check: Callable[[Any], bool]) -> Callable[[Mapping[str, Any]], bool]:
    return lambda m: all(check(v) for v in m.values())


def _all_keys(check: Callable[[str], bool]) -> Callable[[Mapping[str, Any]], bool]:
    return lambda m: all(check(k) for k in m)


CR_NAME_RULE = Rule(
    cel=f"self.metadata.name.matches({cel_regex(CR_NAME)}) && size(self.metadata.name) <= {CR_NAME_MAX}",
    message=f"metadata.name must start with a letter, use only a-z, 0-9 and '-', and be at most {CR_NAME_MAX} "
    "characters",
    holds=lambda name: matches(CR_NAME, name) and len(name) <= CR_NAME_MAX,
)

RESOURCE_NAMES = Rule(
    cel=f"self.all(k, {cel_qualified_name('k')})",
    message="resource names must be qualified names such as cpu, memory or example.com/device",
    holds=_all_keys(is_qualified_name),
)
QUANTITIES = Rule(
    cel=f"self.all(k, string(self[k]).matches({cel_regex(QUANTITY)}))",
    message="resource quantities must be non-negative Kubernetes quantities such as 500m, 4 or 64Gi",
    holds=_all_values(is_quantity),
)


def _limits_cover_requests(res: Any) -> bool:
    return all(
        parse_quantity(res.limits[k]) >= parse_quantity(v)
        for k, v in res.requests.items()
        if k in res.limits and is_quantity(v) and is_quantity(res.limits[k])
    )


_Q = cel_regex(QUANTITY)
LIMITS_COVER_REQUESTS = Rule(
    cel="!has(self.requests) || !has(self.limits) || self.requests.all(k, !(k in self.limits) || "
    f"!string(self.requests[k]).matches({_Q}) || !string(self.limits[k]).matches({_Q}) || "
    "quantity(string(self.limits[k])).compareTo(quantity(string(self.requests[k]))) >= 0)",
    message="each resources.limits value must be at least the resources.requests value of the same resource",
    holds=_limits_cover_requests,
)

LABEL_KEYS = Rule(
    cel=f"self.all(k, {cel_qualified_name('k')})",
    message="nodeSelector keys must be label keys: an optional DNS prefix and '/', then at most 63 of "
    "A-Z, a-z, 0-9, '-', '_', '.', starting and ending alphanumeric",
    holds=_all_keys(is_qualified_name),
)
LABEL_VALUES = Rule(
    cel=f"self.all(k, self[k].matches({cel_regex(LABEL_VALUE)}))",
    message="nodeSelector values must be label values: at most 63 of A-Z, a-z, 0-9, '-', '_', '.', "
    "starting and ending alphanumeric",
    holds=_all_values(lambda v: matches(LABEL_VALUE, v)),
)

TOLERATION_KEY = Rule(
    cel=f"size(self) == 0 || {cel_qualified_name('self')}",
    message="toleration key must be a label key (an optional DNS prefix and '/', then a name)",
    holds=lambda key: key == "" or is_qualified_name(key),
)
TOLERATION_VALUE = Rule(
    cel=f"self.matches({cel_regex(LABEL_VALUE)})",
    message="toleration value must be a label value (at most 63 of A-Z, a-z, 0-9, '-', '_', '.')",
    holds=lambda value: matches(LABEL_VALUE, value),
)
# The three rules core/v1 applies to a pod's tolerations (ValidateTolerations), so a bad toleration stops
# at the CR instead of at the Deployment the operator would write.
EXISTS_HAS_NO_VALUE = Rule(
    cel="!has(self.operator) || self.operator != 'Exists' || !has(self.value) || size(self.value) == 0",
    message="a toleration with operator Exists must not set a value",
    holds=lambda t: t.operator != "Exists" or not t.value,
)
EMPTY_KEY_NEEDS_EXISTS = Rule(
    cel="(has(self.key) && size(self.key) > 0) || (has(self.operator) && self.operator == 'Exists')",
    message="a toleration without a key must use operator Exists (it then tolerates every taint)",
    holds=lambda t: bool(t.key) or t.operator == "Exists",
)
SECONDS_NEED_NO_EXECUTE = Rule(
    cel="!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
    message="tolerationSeconds applies only to effect NoExecute",
    holds=lambda t: t.toleration_seconds is None or t.effect == "NoExecute",
)

HOSTNAMES = Rule(
    cel=f"self.all(h, h.matches({cel_regex(HOSTNAME)}))",
    message="routing.hostnames must be lowercase RFC 1123 host names, optionally starting with '*.' "
    "(as Gateway API requires)",
    holds=lambda hosts: all(matches(HOSTNAME, h) for h in hosts),
)

ACTIVE_WITHIN_TOTAL = Rule(
    cel="!has(self.activeParamsB) || self.activeParamsB <= self.totalParamsB",
    message="activeParamsB (parameters active per token) cannot exceed totalParamsB",
    holds=lambda a: a.active_params_b is None or a.active_params_b <= a.total_params_b,
)

KNOWN_ENGINE = Rule(
    cel=f"self.matches({cel_regex(KNOWN_ENGINE_VERSION)})",
    message="engine.version must be a 0.x release from 0.10 on (vLLM 0.10 and newer, the Neuron plugin's "
    "0.16 and 0.24): kubemoe renders no other engine's command-line flags",
    holds=lambda v: matches(KNOWN_ENGINE_VERSION, v),
)
