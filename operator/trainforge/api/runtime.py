"""TrainingRuntime (namespaced) and ClusterTrainingRuntime (cluster-scoped): a platform team's
template of everything a TrainingJob needs but its own intent, which jobs reference with
spec.runtimeRef.

The template reuses the TrainingJob spec's own sub-models, so every field (and every rule on
it) a job has, a runtime has too. How a job and its runtime combine is
`trainforge.reconcile.runtime.resolve` (docs/platform.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, ValidationError

from trainforge.api.common import (
    IMAGE_PATTERN,
    LIST_MAP_BY_NAME,
    ApiModel,
    InvalidSpec,
    UniqueNames,
    describe_errors,
)
from trainforge.api.trainingjob import (
    Checkpoint,
    CommandPart,
    EnvVar,
    FailurePolicy,
    Network,
    PodTemplate,
    Resources,
    Scheduling,
)

KIND = "TrainingRuntime"
PLURAL = "trainingruntimes"
CLUSTER_KIND = "ClusterTrainingRuntime"
CLUSTER_PLURAL = "clustertrainingruntimes"

# The template's fields: everything of a TrainingJob spec except the job's own intent
# (workers, suspend, deadlines, TTL, runtimeRef), which only the job says.
TEMPLATE_FIELDS = (
    "image",
    "command",
    "args",
    "env",
    "trainer",
    "procsPerWorker",
    "resources",
    "network",
    "checkpoint",
    "failurePolicy",
    "scheduling",
    "podTemplate",
)
# A lock names a template field or a path inside one (resources.gpuResource,
# scheduling.queueName, network.rdma.nccl).
LOCK_PATTERN = rf"^({'|'.join(TEMPLATE_FIELDS)})(\.[A-Za-z][A-Za-z0-9]*)*$"


class RuntimeTemplate(ApiModel):
    """The TrainingJob spec fields the runtime provides; a job that references the runtime
    gets them unless it sets them itself (and the runtime does not lock them)."""

    image: str | None = Field(default=None, min_length=1, max_length=1024, pattern=IMAGE_PATTERN)
    """Container image of the workers; default: the operator's trainer image."""
    command: list[CommandPart] | None = Field(default=None, max_length=64)
    """Command instead of the bundled trainer (TrainingJob spec.command)."""
    args: list[CommandPart] | None = Field(default=None, max_length=256)
    """Arguments appended to the command (TrainingJob spec.args)."""
    env: Annotated[list[EnvVar], UniqueNames] = Field(
        default_factory=list, max_length=128, json_schema_extra=LIST_MAP_BY_NAME
    )
    """Environment of the trainer container; a job's env merges by name (the job's wins)."""
    trainer: dict[str, Any] | None = Field(default=None, max_length=64)
    """Defaults for the bundled trainer's configuration; a job's trainer merges over them key
    by key."""
    procs_per_worker: int | None = Field(default=None, ge=1, le=128)
    """Processes per worker (TrainingJob spec.procsPerWorker)."""
    resources: Resources | None = None
    """Compute resources of each worker (GPUs, GPU resource, CPU, memory, shared memory)."""
    network: Network | None = None
    """RDMA networking: Multus networks, RDMA device resources, NCCL settings."""
    checkpoint: Checkpoint | None = None
    """Checkpoint storage and cadence, e.g. a volumeClaimTemplate with the platform's storage
    class. A job that sets claimName or volumeClaimTemplate replaces the runtime's claim."""
    failure_policy: FailurePolicy | None = None
    """Restart and failure behaviour."""
    scheduling: Scheduling | None = None
    """Scheduler, gang policy, queue, priority class, node selector, tolerations, affinity."""
    pod_template: PodTemplate | None = None
    """Overlay merged onto every worker pod (TrainingJob spec.podTemplate); a job's
    podTemplate is merged onto it."""


LockPath = Annotated[str, Field(max_length=128, pattern=LOCK_PATTERN)]


class TrainingRuntimeSpec(ApiModel):
    """A template for TrainingJobs and the fields jobs may not override."""

    template: RuntimeTemplate = Field(default_factory=RuntimeTemplate)
    """TrainingJob spec fields given to every job that references this runtime."""
    locked: list[LockPath] = Field(
        default_factory=list, max_length=32, json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """Template fields (or paths inside them, e.g. network, image, scheduling.queueName) a job
    may not change: a job that sets one to a different value is Stalled (reason
    RuntimeLocked) naming the field and the runtime, and gets no pods."""


def parse_runtime_spec(raw: Mapping[str, Any]) -> TrainingRuntimeSpec:
    """Validate a stored runtime spec; raises InvalidSpec naming each bad field."""
    try:
        return TrainingRuntimeSpec.model_validate(raw)
    except ValidationError as error:
        raise InvalidSpec(describe_errors(error, root="spec")) from None
