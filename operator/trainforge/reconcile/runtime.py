"""A TrainingJob's effective spec: its own spec over its runtime's template (pure).

Precedence, field by field: what the job sets wins; what it leaves out comes from the runtime.
The API server fills schema defaults into every stored job (resources.gpusPerWorker: 0,
failurePolicy.maxRestarts: 3, …), so a job value equal to its schema default counts as not
set: the runtime's value (if any) applies. Merging follows the podTemplate rules
(render/merge.py): objects merge key by key, env/containers/volumes by name, other lists of
objects (tolerations) are appended, lists of scalars (command, args) are replaced; two
exceptions: a job's network.rdma.networks replaces the runtime's list, and a job that sets
checkpoint.claimName or checkpoint.volumeClaimTemplate replaces the runtime's claim.

Locks: a runtime's spec.locked names template fields (or paths inside them) a job may not
change; a job that sets one to anything but the runtime's value is refused (RuntimeLocked).
"""

from __future__ import annotations

import copy
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from trainforge.api import InvalidSpec, TrainingJobSpec, parse_training_job_spec
from trainforge.api.runtime import parse_runtime_spec
from trainforge.render.merge import merge


@dataclass(frozen=True)
class RuntimeSource:
    """The runtime a job resolves against: read from the API server, or the snapshot in the
    job's status. `spec` None: it does not exist."""

    kind: str
    name: str
    generation: int = 0
    spec: Mapping[str, Any] | None = None
    from_snapshot: bool = False

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}"

    def snapshot(self) -> dict[str, Any]:
        """status.runtime."""
        return {
            "kind": self.kind,
            "name": self.name,
            "generation": self.generation,
            "spec": copy.deepcopy(dict(self.spec or {})),
        }


class RuntimeProblem(InvalidSpec):
    """The job cannot be resolved against its runtime; `reason` is the Stalled reason."""

    def __init__(self, reason: str, messages: list[str]) -> None:
        super().__init__(messages)
        self.reason = reason


def resolve(job_spec: Mapping[str, Any], runtime: RuntimeSource) -> dict[str, Any]:
    """The effective spec (a dict in the CRD's camelCase form, without runtimeRef); raises
    RuntimeProblem when the runtime is missing or invalid, or the job overrides a locked
    field."""
    ref = "spec.runtimeRef" if "runtimeRef" in job_spec else "the operator's default runtime"
    if runtime.spec is None:
        raise RuntimeProblem(
            "RuntimeNotFound",
            [
                f"{ref}: {runtime.label} does not exist; create it (docs/platform.md) or fix "
                "the name; the job starts once it exists"
            ],
        )
    try:
        parsed = parse_runtime_spec(runtime.spec)
    except InvalidSpec as e:
        raise RuntimeProblem(
            "InvalidRuntime",
            [f"{runtime.label} is invalid: {m}; fix the runtime" for m in e.messages],
        ) from None
    template = parsed.template.model_dump(mode="json", by_alias=True, exclude_none=True)
    template = {k: v for k, v in template.items() if v not in ({}, [])}
    own = strip_defaults(TrainingJobSpec, {k: v for k, v in job_spec.items() if k != "runtimeRef"})
    locked = [path for path in parsed.locked if _overrides(template, own, path.split("."))]
    if locked:
        raise RuntimeProblem(
            "RuntimeLocked",
            [
                f"spec.{path}: {runtime.label} locks {path} (spec.locked of the runtime); "
                f"remove spec.{path} from the TrainingJob to use the runtime's value, or use "
                "a runtime that lets jobs set it"
                for path in locked
            ],
        )
    resolved: dict[str, Any] = merge(_make_room(template, own), own)
    return resolved


def effective_spec(job_spec: Mapping[str, Any], runtime: RuntimeSource | None) -> TrainingJobSpec:
    """The parsed spec the operator runs; raises InvalidSpec (a RuntimeProblem for the
    runtime's own problems), each message naming the runtime when there is one."""
    if runtime is None:
        return parse_training_job_spec(job_spec)
    resolved = resolve(job_spec, runtime)
    try:
        return parse_training_job_spec(resolved)
    except InvalidSpec as e:
        raise InvalidSpec(
            [f"{m} (in the spec resolved with {runtime.label})" for m in e.messages]
        ) from None


def parse_effective_spec(
    job_spec: Mapping[str, Any], runtime: RuntimeSource | None
) -> TrainingJobSpec | InvalidSpec:
    """effective_spec, or why there is none."""
    try:
        return effective_spec(job_spec, runtime)
    except InvalidSpec as e:
        return e


def strip_defaults(model: type[BaseModel], raw: Mapping[str, Any]) -> dict[str, Any]:
    """`raw` without the values the API server defaulted: leaves equal to the model's default,
    and objects left empty by that."""
    fields = {(info.alias or name): info for name, info in model.model_fields.items()}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        info = fields.get(key)
        if info is None:
            out[key] = value
            continue
        sub = _model_in(info.annotation)
        if sub is not None and isinstance(value, Mapping):
            stripped = strip_defaults(sub, value)
            if stripped:
                out[key] = stripped
            continue
        default = info.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json", by_alias=True)
        if value != default:
            out[key] = value
    return out


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model of a field typed `Model` or `Model | None`."""
    options = (
        typing.get_args(annotation)
        if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
        else (annotation,)
    )
    for option in options:
        if isinstance(option, type) and issubclass(option, BaseModel):
            return option
    return None


def _overrides(template: Any, own: Any, path: list[str]) -> bool:
    """Whether the job's value at `path` would change the runtime's value there."""
    for key in path:
        if not isinstance(own, Mapping) or key not in own:
            return False
        own = own[key]
        template = template.get(key) if isinstance(template, Mapping) else None
    if template is None:
        return True
    return bool(merge(template, own) != template)


def _make_room(base: dict[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    """The runtime's values the job's replace whole instead of merging into."""
    base = copy.deepcopy(base)
    rdma = own.get("network", {}).get("rdma", {})
    if "networks" in rdma:
        base.get("network", {}).get("rdma", {}).pop("networks", None)
    claim = own.get("checkpoint", {})
    if "claimName" in claim or "volumeClaimTemplate" in claim:
        for key in ("claimName", "volumeClaimTemplate"):
            base.get("checkpoint", {}).pop(key, None)
    return base
