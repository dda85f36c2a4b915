"""Building blocks shared by the CRD models: the base model, quantities, conditions, errors.

The models are the single source of truth for the CRDs: `crdgen` turns their JSON schema
into the OpenAPI schema the API server enforces, so every constraint declared here (bounds,
patterns, defaults, descriptions) is enforced both by the server and by `trainforge local
run`. Attribute docstrings become field descriptions (`kubectl explain`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel

# A non-negative Kubernetes quantity ("64Gi", "500m", "1.5", "1e3"); negative amounts make no
# sense for the resources and sizes of this API. Same grammar as resource.Quantity.
QUANTITY_PATTERN = (
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)
# RFC 1123 label, the rule for pod hostnames, service names' cousins and most object names.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# RFC 1035 label: what a Service name must be (starts with a letter).
DNS_1035_LABEL_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# RFC 1123 subdomain: PVC, PriorityClass and scheduler names.
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Extended resource names such as nvidia.com/gpu or rdma/rdma_shared_device_a.
RESOURCE_NAME_PATTERN = (
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
# Environment variable names as the kubelet accepts them (C identifier-ish, dots and dashes).
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# Label and annotation keys: optional DNS-subdomain prefix and a name.
LABEL_KEY_PATTERN = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"


class ApiModel(BaseModel):
    """Base of every CRD model: camelCase on the wire, unknown fields rejected, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        # The API server does not coerce "2" to 2 or "true" to true, so neither do we.
        strict=True,
        frozen=True,
        # Field docstrings become the schema descriptions users read in `kubectl explain`.
        use_attribute_docstrings=True,
    )

    def to_json(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase keys, unset optionals omitted."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _quantity(value: object) -> str:
    # bool is an int subclass; `sharedMemory: true` is a mistake, not a quantity of 1.
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(
            f"must be a quantity such as 64Gi, 500m or 4 (got {value!r} of type "
            f"{type(value).__name__}); quote fractional values, e.g. '0.5'"
        )
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must not be negative (got {value})")
        return str(value)
    if not _QUANTITY_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid quantity; use a non-negative number with an optional "
            "suffix such as 500m, 2, 64Gi or 1e3"
        )
    return value


Quantity = Annotated[
    str,
    BeforeValidator(_quantity),
    WithJsonSchema(
        {
            # The one anyOf a structural schema allows; bounds go beside it.
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "minimum": 0,
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
"""A Kubernetes quantity: an integer or a string such as "64Gi"; stored here as a string."""


_SUFFIXES = {
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{s: Decimal(1000) ** (i + 1) for i, s in enumerate(("k", "M", "G", "T", "P", "E"))},
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
}


def quantity_value(value: str) -> Decimal:
    """The amount of a valid quantity (see Quantity): "1.5Gi" -> 1610612736."""
    number, suffix = re.match(r"^([0-9]*\.?[0-9]*)(.*)$", value).groups()  # type: ignore[union-attr]
    if suffix[:1] in ("e", "E"):
        return Decimal(number or "0") * Decimal(10) ** Decimal(suffix[1:])
    return Decimal(number or "0") * _SUFFIXES[suffix]


def is_zero_quantity(value: str) -> bool:
    """Whether a valid quantity (see Quantity) is zero, whatever its suffix."""
    return quantity_value(value) == 0


def check_requests_within_limits(requests: Mapping[str, str], limits: Mapping[str, str]) -> None:
    over = [
        f"{name} {requests[name]} > {limit}"
        for name, limit in sorted(limits.items())
        if name in requests and quantity_value(requests[name]) > quantity_value(limit)
    ]
    if over:
        raise ValueError(
            f"resources.requests must not exceed resources.limits for the same resource "
            f"({', '.join(over)}); raise the limit or lower the request"
        )


# A container image reference never contains whitespace (the kubelet reports such an image as
# InvalidImageName only once the pod exists).
IMAGE_PATTERN = r"^\S+$"
# A label value: what nodeSelector values must be.
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# A list of objects keyed by their `name`: the API server rejects a name listed twice.
LIST_MAP_BY_NAME: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["name"],
}


def _unique_names(items: list[Any]) -> list[Any]:
    names = [item.name for item in items]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(
            f"names must be unique; {', '.join(twice)} is listed more than once: remove or "
            "rename the duplicate"
        )
    return items


UniqueNames = AfterValidator(_unique_names)
"""Pydantic's side of LIST_MAP_BY_NAME: `Annotated[list[X], UniqueNames]`."""

ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """metav1.Condition: one aspect of the object's state, as kstatus and `kubectl wait` read it."""

    type: str = Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z]([A-Za-z0-9_.-]*[A-Za-z0-9])?$",
    )
    """Type of condition in CamelCase, e.g. Running, Succeeded, Ready, Stalled."""
    status: ConditionStatus
    """Status of the condition: True, False or Unknown."""
    observed_generation: int | None = Field(default=None, ge=0, le=2**53)
    """The .metadata.generation the condition was set for."""
    last_transition_time: str = Field(max_length=64)
    """RFC 3339 time of the last change of status."""
    reason: str = Field(max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    """Machine-readable CamelCase reason for the last transition."""
    message: str = Field(default="", max_length=32768)
    """Human-readable details about the transition."""


def cel(
    rule: str,
    message: str | None = None,
    *,
    message_expression: str | None = None,
    field_path: str | None = None,
) -> dict[str, str]:
    """One `x-kubernetes-validations` entry; keep the same rule in the model's Python check.

    Give a static `message` with every `message_expression`: the server falls back to it when
    the expression fails, and the API reference shows it.
    """
    entry = {"rule": rule}
    if message is not None:
        entry["message"] = message
    if message_expression is not None:
        entry["messageExpression"] = message_expression
    if field_path is not None:
        entry["fieldPath"] = field_path
    return entry


def cel_list(values: tuple[str, ...]) -> str:
    """A CEL list literal of strings."""
    return "[" + ", ".join(f"'{value}'" for value in values) + "]"


def cel_rules(*rules: dict[str, str]) -> dict[str, Any]:
    """`json_schema_extra` carrying CEL rules into the generated CRD."""
    return {"x-kubernetes-validations": list(rules)}


# The API server refuses a container whose request exceeds its limit, but only when the pod
# is created; this says so at `kubectl apply`. The rule names the usual resources (a loop over
# every key exceeds the API server's CEL cost budget); the models check every key.
REQUESTS_WITHIN_LIMITS = cel(
    "!has(self.requests) || !has(self.limits) || ['cpu', 'memory', 'ephemeral-storage'].all(k, "
    "!(k in self.requests) || !(k in self.limits) || "
    "!quantity(string(self.requests[k])).isGreaterThan(quantity(string(self.limits[k]))))",
    "resources.requests must not exceed resources.limits for the same resource; raise the "
    "limit or lower the request",
)


ENV_VALUE_OR_SOURCE = cel(
    "!(has(self.value) && has(self.valueFrom))", "set either value or valueFrom, not both"
)


class EnvVarFields(ApiModel):
    """core/v1 EnvVar's fields; each kind adds the names its operator reserves."""

    name: str = Field(max_length=256, pattern=ENV_NAME_PATTERN)
    """Name of the variable."""
    value: str | None = Field(default=None, max_length=32768)
    """Literal value; `$(VAR)` references to earlier variables are expanded by the kubelet."""
    value_from: dict[str, Any] | None = None
    """Source of the value (core/v1 EnvVarSource: secretKeyRef, configMapKeyRef, fieldRef…)."""

    def check_value_or_source(self) -> None:
        if self.value is not None and self.value_from is not None:
            raise ValueError(f"env {self.name}: set either value or valueFrom, not both")


def pod_spec_overlay(
    forbidden: tuple[str, ...], reason: str, cel_message: str
) -> tuple[AfterValidator, WithJsonSchema]:
    """Validation of `podTemplate.spec` (`Annotated[dict[str, Any], *these]`): a partial
    core/v1 PodSpec merged onto the rendered one, minus the `forbidden` fields the operator
    must own (rejected by the server's CEL rule and by the model, `reason` saying why)."""

    def check(spec: dict[str, Any]) -> dict[str, Any]:
        owned = [field for field in forbidden if field in spec]
        if owned:
            raise ValueError(f"podTemplate.spec must not set {', '.join(owned)}: {reason}")
        return spec

    return (
        AfterValidator(check),
        WithJsonSchema(
            {
                "type": "object",
                "description": "Fields merged onto the rendered core/v1 PodSpec.",
                "x-kubernetes-preserve-unknown-fields": True,
                # Declared only so the CEL rule can see them; the rule forbids them.
                "properties": {
                    field: {"type": "string", "maxLength": 253, "description": "Set by trainforge."}
                    for field in forbidden
                },
                "x-kubernetes-validations": [
                    cel(" && ".join(f"!has(self.{field})" for field in forbidden), cel_message)
                ],
            }
        ),
    )


class InvalidSpec(ValueError):
    """A manifest that cannot be honoured; `messages` say which field, what value, what to do."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


def describe_errors(error: ValidationError, root: str) -> list[str]:
    """One line per problem, `<root>.<field path>: <what is wrong> (got <value>)`; `root` is
    the path of the validated object in the manifest ("spec", or "" for a whole manifest)."""
    lines = []
    for item in error.errors(include_url=False):
        path = root
        for part in item["loc"]:
            path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
        lines.append(f"{path}: {_explain(item)}" if path else _explain(item))
    return lines


def _explain(item: Mapping[str, Any]) -> str:
    kind, ctx = item["type"], item.get("ctx", {})
    value: Any = item.get("input")
    match kind:
        case "missing":
            return "required; set it"
        case "extra_forbidden":
            return "unknown field; remove it or check its spelling (kubectl explain lists fields)"
        case "greater_than_equal":
            return f"must be at least {ctx['ge']} (got {value!r})"
        case "less_than_equal":
            return f"must be at most {ctx['le']} (got {value!r})"
        case "string_too_long":
            return f"must be at most {ctx['max_length']} characters (got {len(value)})"
        case "too_long":
            return f"must have at most {ctx['max_length']} entries (got {ctx.get('actual_length')})"
        case "too_short":
            return (
                f"must have at least {ctx['min_length']} entries (got {ctx.get('actual_length')})"
            )
        case "string_pattern_mismatch":
            return f"{value!r} does not match {ctx['pattern']}"
        case "literal_error":
            return f"must be one of {ctx['expected']} (got {value!r})"
        case "int_type" | "int_parsing":
            return f"must be an integer (got {value!r})"
        case "bool_type" | "bool_parsing":
            return f"must be true or false (got {value!r})"
        case "string_type":
            return f"must be a string (got {value!r})"
        case "list_type":
            return f"must be a list (got {value!r})"
        case "dict_type" | "model_type":
            return f"must be an object (got {value!r})"
        case "value_error":
            return str(ctx["error"])
        case _:
            return f"{item['msg']} (got {value!r})"
