"""TrainingJob (trainforge.io/v1alpha1): spec and status models, the source of the CRD.

Every cross-field rule exists twice, side by side: as a CEL rule in `json_schema_extra` (the
API server enforces it) and as a Python validator (the operator and `trainforge local run`
enforce it on manifests that never met a server). Keep the two in step: the cluster
validation tests send every invalid manifest to both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

import trainforge_contract as contract
from trainforge.api.common import (
    DNS_1035_LABEL_PATTERN,
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    ENV_VALUE_OR_SOURCE,
    IMAGE_PATTERN,
    LABEL_KEY_PATTERN,
    LABEL_VALUE_PATTERN,
    LIST_MAP_BY_NAME,
    REQUESTS_WITHIN_LIMITS,
    RESOURCE_NAME_PATTERN,
    ApiModel,
    Condition,
    EnvVarFields,
    InvalidSpec,
    Quantity,
    UniqueNames,
    cel,
    cel_list,
    cel_rules,
    check_requests_within_limits,
    describe_errors,
    is_zero_quantity,
    pod_spec_overlay,
)

KIND = "TrainingJob"
PLURAL = "trainingjobs"

MAX_WORKERS = 1024
# Pod hostnames are `<job>-worker-<index>` and must be DNS labels (at most 63 characters).
MAX_HOSTNAME = 63
WORKER_INFIX = "-worker-"

# Environment the operator sets on every worker; user env may not shadow it, because a
# silently different WORLD_SIZE or RANK hangs the whole gang at rendezvous.
OPERATOR_ENV_NAMES = (
    contract.ENV_MASTER_ADDR,
    contract.ENV_MASTER_PORT,
    contract.ENV_WORLD_SIZE,
    contract.ENV_RANK,
    contract.ENV_LOCAL_RANK,
    contract.ENV_NNODES,
    contract.ENV_NODE_RANK,
    contract.ENV_NPROC_PER_NODE,
)
OPERATOR_ENV_PREFIXES = ("PET_", "TRAINFORGE_")
# Label/annotation prefix only the operator writes (job name, worker index, restart attempt).
RESERVED_LABEL_PREFIX = f"{contract.GROUP}/"
# Pod fields the operator owns: the rendezvous address depends on hostname and subdomain, and
# gang restarts depend on pods never restarting in place.
OPERATOR_POD_FIELDS = ("restartPolicy", "hostname", "subdomain")
# While the job is in one of these phases the gang's shape is fixed: changing it would leave
# running workers that disagree with the spec about the world they belong to.
LOCKED_PHASES = ("Running", "Restarting", "Succeeded", "Failed")
IMMUTABLE_WHILE_RUNNING = (
    "workers",
    "procsPerWorker",
    "resources",
    "network",
    "checkpoint",
    "runtimeRef",
)

Phase = Literal["Pending", "Running", "Restarting", "Suspended", "Succeeded", "Failed"]
GangPolicy = Literal["None", "Volcano", "Coscheduling", "Kueue"]
AccessMode = Literal["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany", "ReadWriteOncePod"]

CommandPart = Annotated[str, Field(max_length=4096)]
LabelKey = Annotated[str, Field(max_length=317, pattern=LABEL_KEY_PATTERN)]
ResourceName = Annotated[str, Field(max_length=253, pattern=RESOURCE_NAME_PATTERN)]


# --- environment ---------------------------------------------------------------------------


def _is_operator_env(name: str) -> bool:
    return name in OPERATOR_ENV_NAMES or name.startswith(OPERATOR_ENV_PREFIXES)


class EnvVar(EnvVarFields):
    """An environment variable of the trainer container (core/v1 EnvVar)."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                f"!(self.name in {cel_list(OPERATOR_ENV_NAMES)})"
                + "".join(f" && !self.name.startsWith('{p}')" for p in OPERATOR_ENV_PREFIXES),
                "env names MASTER_*, WORLD_SIZE, RANK, LOCAL_RANK, NNODES, NODE_RANK, "
                "NPROC_PER_NODE, PET_* and TRAINFORGE_* are set by trainforge; remove the "
                "variable or use another name",
                message_expression=(
                    "'env ' + self.name + ' is set by trainforge for every worker "
                    "(MASTER_*, WORLD_SIZE, RANK, LOCAL_RANK, NNODES, NODE_RANK, "
                    "NPROC_PER_NODE, PET_*, TRAINFORGE_*); remove it or use another name'"
                ),
                field_path=".name",
            ),
            ENV_VALUE_OR_SOURCE,
        )
    )

    @model_validator(mode="after")
    def _not_owned_by_operator(self) -> EnvVar:
        if _is_operator_env(self.name):
            raise ValueError(
                f"env {self.name} is set by trainforge for every worker (MASTER_*, WORLD_SIZE, "
                "RANK, LOCAL_RANK, NNODES, NODE_RANK, NPROC_PER_NODE, PET_*, TRAINFORGE_*); "
                "remove it or use another name"
            )
        self.check_value_or_source()
        return self


# --- resources -----------------------------------------------------------------------------


class Resources(ApiModel):
    """Compute resources of each worker pod."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                "(!has(self.requests) || !(self.gpuResource in self.requests))"
                " && (!has(self.limits) || !(self.gpuResource in self.limits))",
                "do not list the GPU resource in requests or limits; set "
                "resources.gpusPerWorker instead",
                message_expression=(
                    "'do not list ' + self.gpuResource + ' in requests or limits; "
                    "set resources.gpusPerWorker instead'"
                ),
            ),
            REQUESTS_WITHIN_LIMITS,
        )
    )

    gpus_per_worker: int = Field(default=0, ge=0, le=64)
    """GPUs per worker pod (requests = limits). 0 trains on CPU."""
    gpu_resource: ResourceName = "nvidia.com/gpu"
    """Extended resource that provides a GPU, e.g. nvidia.com/gpu or a MIG profile such as
    nvidia.com/mig-1g.10gb."""
    requests: dict[ResourceName, Quantity] = Field(default_factory=dict, max_length=16)
    """Resource requests of the trainer container besides GPUs, e.g. {cpu: 8, memory: 64Gi}."""
    limits: dict[ResourceName, Quantity] = Field(default_factory=dict, max_length=16)
    """Resource limits of the trainer container besides GPUs."""
    shared_memory: Quantity = "1Gi"
    """Size limit of the memory-backed /dev/shm (data loader workers and NCCL use it); it
    counts against the container's memory limit."""

    @model_validator(mode="after")
    def _gpus_only_via_gpus_per_worker(self) -> Resources:
        for field, values in (("requests", self.requests), ("limits", self.limits)):
            if self.gpu_resource in values:
                raise ValueError(
                    f"do not list {self.gpu_resource} in {field} (got "
                    f"{values[self.gpu_resource]}); set resources.gpusPerWorker instead"
                )
        check_requests_within_limits(self.requests, self.limits)
        return self


# --- network -------------------------------------------------------------------------------


class RdmaNetwork(ApiModel):
    """A Multus NetworkAttachmentDefinition attached to every worker (one RDMA rail)."""

    name: str = Field(max_length=63, pattern=DNS_LABEL_PATTERN)
    """Name of the NetworkAttachmentDefinition."""
    namespace: str | None = Field(default=None, max_length=63, pattern=DNS_LABEL_PATTERN)
    """Namespace of the NetworkAttachmentDefinition; default: the job's namespace."""
    interface: str | None = Field(default=None, max_length=15, pattern=r"^[A-Za-z0-9_.-]+$")
    """Interface name inside the pod, e.g. net1; default: chosen by Multus."""


NcclList = Annotated[str, Field(max_length=256, pattern=r"^[=^]?[A-Za-z0-9_.:,-]+$")]


class Nccl(ApiModel):
    """NCCL settings passed as environment variables; unset fields keep NCCL's defaults."""

    socket_if_name: NcclList | None = None
    """NCCL_SOCKET_IFNAME: interfaces for NCCL's TCP bootstrap, e.g. eth0 or ^lo,docker."""
    ib_hca: NcclList | None = Field(default=None, alias="ibHCA")
    """NCCL_IB_HCA: RDMA devices to use, e.g. mlx5_0:1,mlx5_1:1 or =mlx5_0."""
    gid_index: int | None = Field(default=None, ge=0, le=255)
    """NCCL_IB_GID_INDEX: RoCE GID index (often 3 for RoCEv2)."""
    gdr_level: Literal["LOC", "PIX", "PXB", "PHB", "SYS"] | None = None
    """NCCL_NET_GDR_LEVEL: how far GPUDirect RDMA may reach between NIC and GPU."""
    debug: Literal["VERSION", "WARN", "INFO", "TRACE"] | None = None
    """NCCL_DEBUG: log level of NCCL."""


class Rdma(ApiModel):
    """RDMA networking: Multus attachments, RDMA device resources and NCCL settings. Workers
    also get a memory-backed /dev/shm and, unless ipcLock is false, the IPC_LOCK capability
    (to pin memory), which needs a namespace whose Pod Security level is privileged."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                "!has(self.networks) || self.networks.all(n, self.networks.exists_one(m, "
                "m.name == n.name && "
                "(has(m.__namespace__) ? m.__namespace__ : '') == "
                "(has(n.__namespace__) ? n.__namespace__ : '')))",
                "network.rdma.networks: each NetworkAttachmentDefinition (name and namespace) "
                "may be listed once; remove the duplicate",
                field_path=".networks",
            )
        )
    )

    networks: list[RdmaNetwork] = Field(default_factory=list, max_length=16)
    """Networks to attach, rendered into the k8s.v1.cni.cncf.io/networks annotation."""
    resources: dict[ResourceName, Quantity] = Field(default_factory=dict, max_length=16)
    """RDMA device-plugin resources per worker (requests = limits), e.g.
    {rdma/rdma_shared_device_a: 1}."""
    nccl: Nccl = Field(default_factory=Nccl)
    """NCCL environment for the RDMA fabric."""
    ipc_lock: bool = True
    """Give the trainer the IPC_LOCK capability, so RDMA can pin as much memory as it needs.
    The capability only takes effect for root, so the trainer then runs as uid 0 with IPC_LOCK
    as its only capability, and the pod is admitted only where the namespace's Pod Security
    level is privileged. Set false where the nodes' container runtime already allows
    unlimited locked memory (RLIMIT_MEMLOCK, e.g. LimitMEMLOCK=infinity for containerd): the
    pod then runs as the image's non-root user and passes the restricted level."""
    require_rdma: bool = Field(default=False, alias="requireRDMA")
    """Fail the job (reason RDMARequired) instead of letting it run slowly when a requested
    network is not attached to a worker or NCCL reports that it runs over TCP sockets.
    Without it those are conditions (RDMAAttached, RDMAActive=False/FellBackToTCP)."""

    @model_validator(mode="after")
    def _networks_listed_once(self) -> Rdma:
        keys = [(net.name, net.namespace) for net in self.networks]
        twice = sorted({name for name, namespace in keys if keys.count((name, namespace)) > 1})
        if twice:
            raise ValueError(
                f"network.rdma.networks: each NetworkAttachmentDefinition (name and namespace) "
                f"may be listed once; {', '.join(twice)} is listed more than once: remove the "
                "duplicate"
            )
        return self


class Network(ApiModel):
    """Networking of the worker pods beyond the pod network."""

    rdma: Rdma | None = None
    """RDMA (InfiniBand or RoCE) for GPU-to-GPU traffic across nodes."""


# --- checkpoint ----------------------------------------------------------------------------


def _shared_by_all_workers() -> list[AccessMode]:
    return ["ReadWriteMany"]


class VolumeClaimTemplate(ApiModel):
    """A PersistentVolumeClaim `<job>-checkpoints` the operator creates and owns (deleted with
    the job)."""

    size: Annotated[
        Quantity,
        Field(
            json_schema_extra=cel_rules(
                cel(
                    "quantity(string(self)).isGreaterThan(quantity('0'))",
                    "checkpoint.volumeClaimTemplate.size must be more than 0, e.g. 100Gi",
                )
            )
        ),
    ]
    """Requested storage, e.g. 100Gi."""
    storage_class_name: str | None = Field(
        default=None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN
    )
    """StorageClass; default: the cluster's default class."""
    access_modes: list[AccessMode] = Field(
        default_factory=_shared_by_all_workers,
        min_length=1,
        max_length=4,
        json_schema_extra={
            "x-kubernetes-list-type": "set",
            **cel_rules(
                cel(
                    "!('ReadWriteOncePod' in self) || size(self) == 1",
                    "checkpoint.volumeClaimTemplate.accessModes: ReadWriteOncePod cannot be "
                    "combined with other access modes; list it alone",
                )
            ),
        },
    )
    """Access modes; every worker writes its checkpoint shards to the same volume, so more
    than one worker on different nodes needs ReadWriteMany."""

    @model_validator(mode="after")
    def _claim_is_possible(self) -> VolumeClaimTemplate:
        if is_zero_quantity(self.size):
            raise ValueError(
                f"checkpoint.volumeClaimTemplate.size must be more than 0, e.g. 100Gi (got "
                f"{self.size})"
            )
        modes = self.access_modes
        if len(set(modes)) != len(modes):
            raise ValueError(
                f"checkpoint.volumeClaimTemplate.accessModes lists a mode twice ({modes}); "
                "remove the duplicate"
            )
        if "ReadWriteOncePod" in modes and len(modes) > 1:
            raise ValueError(
                "checkpoint.volumeClaimTemplate.accessModes: ReadWriteOncePod cannot be "
                f"combined with other access modes (got {modes}); list it alone"
            )
        return self


class Checkpoint(ApiModel):
    """Where and how often the trainer checkpoints; a restarted gang resumes from here."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                "!(has(self.claimName) && has(self.volumeClaimTemplate))",
                "set exactly one of checkpoint.claimName (an existing PVC) or "
                "checkpoint.volumeClaimTemplate (a PVC the operator creates), not both",
            ),
            cel(
                f"self.mountPath != '{contract.SHM_MOUNT}'",
                f"checkpoint.mountPath must not be {contract.SHM_MOUNT} (the shared-memory "
                "mount); use e.g. /checkpoints",
                field_path=".mountPath",
            ),
        )
    )

    claim_name: str | None = Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    """An existing PersistentVolumeClaim in the job's namespace."""
    volume_claim_template: VolumeClaimTemplate | None = None
    """Have the operator create the claim `<job>-checkpoints`."""
    mount_path: str = Field(
        default=contract.DEFAULT_CHECKPOINT_MOUNT, max_length=256, pattern=r"^/[^:]*$"
    )
    """Mount path in the worker (TRAINFORGE_CHECKPOINT_DIR)."""
    every_steps: int | None = Field(default=None, ge=1, le=1_000_000_000)
    """Checkpoint every N optimizer steps; default: the trainer's. Overrides
    trainer.checkpoint.everySteps."""
    every_seconds: int | None = Field(default=None, ge=1, le=604_800)
    """Checkpoint at least every N seconds; default: the trainer's. Overrides
    trainer.checkpoint.everySeconds."""
    keep_last: int = Field(default=3, ge=1, le=1000)
    """Number of committed checkpoints to keep; older ones are deleted. Overrides
    trainer.checkpoint.keepLast."""

    @property
    def has_claim(self) -> bool:
        return self.claim_name is not None or self.volume_claim_template is not None

    @model_validator(mode="after")
    def _one_claim_source(self) -> Checkpoint:
        # "Neither" is checked by the spec: a runtime may provide the claim (runtimeRef).
        if self.claim_name is not None and self.volume_claim_template is not None:
            raise ValueError(
                "set exactly one of checkpoint.claimName (an existing PVC) or "
                "checkpoint.volumeClaimTemplate (a PVC the operator creates), not both"
            )
        if self.mount_path == contract.SHM_MOUNT:
            raise ValueError(
                f"checkpoint.mountPath must not be {contract.SHM_MOUNT} (the shared-memory "
                "mount); use e.g. /checkpoints"
            )
        return self


# --- failure policy ------------------------------------------------------------------------


class FailurePolicy(ApiModel):
    """What a failed worker does to the job. Any failure restarts the whole gang from the last
    checkpoint; evictions and preemptions restart it without counting."""

    max_restarts: int = Field(default=3, ge=0, le=1000)
    """Gang restarts allowed before the job fails."""
    fail_on_exit_codes: list[Annotated[int, Field(ge=1, le=255)]] = Field(
        default_factory=list, max_length=32
    )
    """Exit codes that fail the job at once instead of restarting the gang. 78 (the bundled
    trainer's configuration error) always does."""
    progress_deadline_seconds: int | None = Field(default=None, ge=30, le=7 * 86_400)
    """Hang detection: a Running job whose step has not changed for this long (a hung NCCL
    collective, a stuck data loader) gets a gang restart with reason NoProgress, counted
    against maxRestarts. Needs live progress (the bundled trainer pushes it; see
    docs/trainer.md). Off when unset."""
    startup_deadline_seconds: int | None = Field(default=None, ge=30, le=7 * 86_400)
    """With progressDeadlineSeconds: the allowance for the first step after the gang starts
    running (rendezvous, loading data and the checkpoint, compiling). Default:
    progressDeadlineSeconds + 600."""


# --- scheduling ----------------------------------------------------------------------------


class Gang(ApiModel):
    """All-or-nothing scheduling of the workers, so a half-placed gang does not hold GPUs."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                "!has(self.scheduleTimeoutSeconds) || self.policy == 'Coscheduling'",
                "gang.scheduleTimeoutSeconds applies only to policy Coscheduling",
                field_path=".scheduleTimeoutSeconds",
            ),
        )
    )

    policy: GangPolicy = "None"
    """None: plain pods. Volcano: a Volcano PodGroup and schedulerName volcano. Coscheduling:
    a scheduler-plugins PodGroup (set schedulerName to your coscheduling scheduler). Kueue:
    the job is queued as one Kueue Workload in the LocalQueue scheduling.queueName; no worker
    exists until Kueue admits it, and a preempted job is stopped gracefully (SIGTERM,
    checkpoint) and waits for admission again without counting a restart."""
    schedule_timeout_seconds: int | None = Field(default=None, ge=1, le=86_400)
    """Coscheduling: how long the gang may wait for all workers to fit."""

    @model_validator(mode="after")
    def _timeout_only_for_coscheduling(self) -> Gang:
        if self.schedule_timeout_seconds is not None and self.policy != "Coscheduling":
            raise ValueError(
                "gang.scheduleTimeoutSeconds applies only to policy Coscheduling "
                f"(policy is {self.policy}); remove it"
            )
        return self


TopologyMode = Literal["Required", "Preferred"]


class Topology(ApiModel):
    """Keep the whole gang inside one network domain (a rack, a block): the domain is the
    value of a node label, so workers talk over the fewest switch hops."""

    key: LabelKey
    """Node label whose value names the domain, e.g. topology.kubernetes.io/rack or
    cloud.provider.com/topology-block."""
    mode: TopologyMode = "Required"
    """Required: every worker in one domain, or the gang stays Pending (the scheduler's
    reason is in status). Preferred: one domain when there is room, else spread over
    several. With gang policy Kueue this is the Workload's topology request
    (Topology-Aware Scheduling); otherwise pod affinity on the key."""


class Scheduling(ApiModel):
    """Where and how the worker pods are scheduled."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                "self.gang.policy != 'Kueue' || has(self.queueName)",
                "gang policy Kueue needs scheduling.queueName (the Kueue LocalQueue)",
                field_path=".queueName",
            ),
            cel(
                "!has(self.queueName) || self.gang.policy in ['Volcano', 'Kueue']",
                "scheduling.queueName applies only to gang policy Volcano or Kueue",
                field_path=".queueName",
            ),
            cel(
                "self.gang.policy != 'Volcano' || !has(self.schedulerName)"
                " || self.schedulerName == 'volcano'",
                "gang policy Volcano schedules with schedulerName volcano; remove "
                "scheduling.schedulerName",
                field_path=".schedulerName",
            ),
        )
    )

    scheduler_name: str | None = Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    """Scheduler of the worker pods; default: the cluster's (volcano with gang policy
    Volcano)."""
    priority_class_name: str | None = Field(
        default=None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN
    )
    """PriorityClass of the worker pods."""
    node_selector: dict[
        LabelKey, Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]
    ] = Field(default_factory=dict, max_length=32)
    """Node labels the workers require."""
    tolerations: list[dict[str, Any]] = Field(default_factory=list, max_length=32)
    """Tolerations (core/v1 Toleration); the nvidia.com/gpu toleration is added when GPUs are
    requested."""
    affinity: dict[str, Any] | None = None
    """Affinity (core/v1 Affinity); spreadWorkers adds a pod anti-affinity term."""
    spread_workers: bool = False
    """Place at most one worker of this job per node."""
    queue_name: str | None = Field(default=None, max_length=63, pattern=DNS_LABEL_PATTERN)
    """Queue the gang is admitted through: the Volcano queue or the Kueue LocalQueue."""
    gang: Gang = Field(default_factory=Gang)
    """Gang scheduling policy."""
    topology: Topology | None = None
    """Place the gang inside one topology domain (rack, block) by a node label."""

    @model_validator(mode="after")
    def _gang_settings_agree(self) -> Scheduling:
        policy = self.gang.policy
        if policy == "Kueue" and self.queue_name is None:
            raise ValueError("gang policy Kueue needs scheduling.queueName (the Kueue LocalQueue)")
        if self.queue_name is not None and policy not in ("Volcano", "Kueue"):
            raise ValueError(
                f"scheduling.queueName applies only to gang policy Volcano or Kueue (policy is "
                f"{policy}); remove it or choose a policy"
            )
        if policy == "Volcano" and self.scheduler_name not in (None, "volcano"):
            raise ValueError(
                "gang policy Volcano schedules with schedulerName volcano (got "
                f"{self.scheduler_name}); remove scheduling.schedulerName"
            )
        return self


# --- pod template --------------------------------------------------------------------------


def _no_reserved_keys(values: dict[str, str]) -> dict[str, str]:
    reserved = sorted(key for key in values if key.startswith(RESERVED_LABEL_PREFIX))
    if reserved:
        raise ValueError(
            f"keys under {RESERVED_LABEL_PREFIX} are set by trainforge (got {reserved}); "
            "remove them"
        )
    return values


_RESERVED_KEYS_RULE = cel(
    f"self.all(k, !k.startsWith('{RESERVED_LABEL_PREFIX}'))",
    f"keys under {RESERVED_LABEL_PREFIX} are set by trainforge; remove them",
)
TemplateMap = Annotated[
    dict[LabelKey, Annotated[str, Field(max_length=65536)]],
    Field(max_length=64, json_schema_extra=cel_rules(_RESERVED_KEYS_RULE)),
    AfterValidator(_no_reserved_keys),
]


class PodTemplateMetadata(ApiModel):
    """Labels and annotations added to every worker pod."""

    labels: TemplateMap = Field(default_factory=dict)
    """Extra labels; labels the operator sets win on conflict."""
    annotations: TemplateMap = Field(default_factory=dict)
    """Extra annotations; annotations the operator sets win on conflict."""


_OVERLAY_CHECK, _OVERLAY_SCHEMA = pod_spec_overlay(
    OPERATOR_POD_FIELDS,
    "trainforge sets them (restartPolicy Never; hostname and subdomain for the rendezvous address)",
    "podTemplate.spec must not set restartPolicy, hostname or subdomain: trainforge sets them",
)
PodSpecOverlay = Annotated[dict[str, Any], _OVERLAY_CHECK, _OVERLAY_SCHEMA]


class PodTemplate(ApiModel):
    """Escape hatch merged onto each rendered worker pod. Merge rule: labels and annotations
    are added; objects merge recursively; lists of named items (containers, initContainers,
    env, volumes, imagePullSecrets) merge by name, volumeMounts by mountPath and ports by
    containerPort; other lists (tolerations, topologySpreadConstraints…) are appended;
    scalars and lists of scalars (command, args) are replaced. Target the trainer container
    with name: trainer."""

    metadata: PodTemplateMetadata = Field(default_factory=PodTemplateMetadata)
    """Labels and annotations for the worker pods."""
    spec: PodSpecOverlay = Field(default_factory=dict)
    """Partial core/v1 PodSpec merged onto the rendered one, e.g. serviceAccountName,
    securityContext, an extra sidecar or volume."""


# --- runtime reference ---------------------------------------------------------------------

RuntimeKind = Literal["TrainingRuntime", "ClusterTrainingRuntime"]


class RuntimeRef(ApiModel):
    """The TrainingRuntime or ClusterTrainingRuntime this job takes its defaults from
    (docs/platform.md)."""

    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    """Name of the runtime."""
    kind: RuntimeKind = "ClusterTrainingRuntime"
    """ClusterTrainingRuntime (cluster-wide, the platform team's) or TrainingRuntime (in the
    job's namespace)."""


# --- spec ----------------------------------------------------------------------------------


def _locked_rule(field: str) -> dict[str, str]:
    """Transition rule: spec.<field> may not change once the gang has started."""
    old, new = f"oldSelf.spec.{field}", f"self.spec.{field}"
    # Optional fields may appear or vanish: compare presence first, then value.
    same = f"(has({new}) == has({old}) && (!has({new}) || {new} == {old}))"
    unlocked = (
        "!has(oldSelf.status) || !has(oldSelf.status.phase) || "
        f"!(oldSelf.status.phase in {cel_list(LOCKED_PHASES)})"
    )
    return cel(
        f"{unlocked} || {same}",
        f"spec.{field} cannot change while the job is {', '.join(LOCKED_PHASES)}; suspend it "
        "first (spec.suspend: true) or create a new TrainingJob",
        message_expression=(
            f"'spec.{field} cannot change while the job is ' + oldSelf.status.phase + "
            "'; suspend it first (spec.suspend: true) or create a new TrainingJob'"
        ),
        field_path=f".spec.{field}",
    )


class TrainingJobSpec(ApiModel):
    """Desired state of a TrainingJob: a gang of worker pods running distributed training."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            # Static messages: string(int) in a messageExpression has an unbounded estimated
            # cost and makes the server reject the CRD.
            cel(
                "!has(self.procsPerWorker) || self.resources.gpusPerWorker == 0"
                " || self.procsPerWorker <= self.resources.gpusPerWorker",
                "procsPerWorker must not exceed resources.gpusPerWorker: one process per GPU at "
                "most; lower procsPerWorker or request more GPUs",
                field_path=".procsPerWorker",
            ),
            cel(
                "has(self.runtimeRef) || !has(self.checkpoint) || has(self.checkpoint.claimName)"
                " || has(self.checkpoint.volumeClaimTemplate)",
                "set exactly one of checkpoint.claimName (an existing PVC) or "
                "checkpoint.volumeClaimTemplate (a PVC the operator creates), or reference a "
                "runtime that provides one (spec.runtimeRef)",
                field_path=".checkpoint",
            ),
        )
    )

    runtime_ref: RuntimeRef | None = None
    """Take every field this job does not set from a TrainingRuntime or
    ClusterTrainingRuntime (image, trainer defaults, resources, network, scheduling,
    podTemplate, checkpoint). The runtime may lock fields the job must not change. The
    runtime is read when the job starts and recorded in status.runtime, so editing it later
    does not change this job (suspend and resume the job to pick up a new version); the
    resolved spec is status.effectiveSpec. Cannot change while the job runs."""
    workers: int = Field(default=1, ge=1, le=MAX_WORKERS)
    """Number of worker pods (nodes) in the gang."""
    procs_per_worker: int | None = Field(default=None, ge=1, le=128)
    """Processes per worker (torchrun --nproc-per-node); default: gpusPerWorker, or 1 on CPU."""
    image: str | None = Field(default=None, min_length=1, max_length=1024, pattern=IMAGE_PATTERN)
    """Container image; default: the trainer image the operator is configured with."""
    command: list[CommandPart] | None = Field(default=None, max_length=64)
    """Run this instead of the bundled trainer (torchrun … -m trainforge_trainer train); the
    distributed environment (MASTER_ADDR, WORLD_SIZE, NODE_RANK, PET_*…) is set either way."""
    args: list[CommandPart] | None = Field(default=None, max_length=256)
    """Arguments appended to the command (or to the bundled trainer's command)."""
    env: Annotated[list[EnvVar], UniqueNames] = Field(
        default_factory=list, max_length=128, json_schema_extra=LIST_MAP_BY_NAME
    )
    """Extra environment variables of the trainer container (each name once)."""
    trainer: dict[str, Any] | None = Field(default=None, max_length=64)
    """Configuration of the bundled trainer (recipe, model, data, steps, precision…), passed
    as JSON in TRAINFORGE_CONFIG and validated by the trainer at start (exit code 78 when
    invalid)."""
    resources: Resources = Field(default_factory=Resources)
    """Compute resources of each worker."""
    network: Network | None = None
    """RDMA networking."""
    checkpoint: Checkpoint | None = None
    """Checkpoint volume and cadence; without it a restarted gang starts from step 0."""
    failure_policy: FailurePolicy = Field(default_factory=FailurePolicy)
    """Restart and failure behaviour."""
    active_deadline_seconds: int | None = Field(default=None, ge=1, le=31_536_000)
    """Fail the job (reason DeadlineExceeded) when it has run this long since it started."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0, le=31_536_000)
    """Delete the job this long after it Succeeded or Failed; default: keep it."""
    suspend: bool = False
    """true deletes the worker pods and keeps the job; false resumes it from the last
    checkpoint."""
    scheduling: Scheduling = Field(default_factory=Scheduling)
    """Placement and gang scheduling."""
    pod_template: PodTemplate | None = None
    """Overrides merged onto the rendered worker pods."""

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_has_a_claim(
        cls, checkpoint: Checkpoint | None, info: ValidationInfo
    ) -> Checkpoint | None:
        # runtimeRef is declared before checkpoint, so it is validated (in info.data) by now.
        if checkpoint and not checkpoint.has_claim and info.data.get("runtime_ref") is None:
            raise ValueError(
                "set exactly one of checkpoint.claimName (an existing PVC) or "
                "checkpoint.volumeClaimTemplate (a PVC the operator creates), or reference a "
                "runtime that provides one (spec.runtimeRef); got neither"
            )
        return checkpoint

    @model_validator(mode="after")
    def _procs_fit_gpus(self) -> TrainingJobSpec:
        gpus = self.resources.gpus_per_worker
        if self.procs_per_worker is not None and 0 < gpus < self.procs_per_worker:
            raise ValueError(
                f"procsPerWorker ({self.procs_per_worker}) must not exceed "
                f"resources.gpusPerWorker ({gpus}): one process per GPU at most; lower "
                "procsPerWorker or request more GPUs"
            )
        return self

    @property
    def effective_procs_per_worker(self) -> int:
        """torchrun --nproc-per-node: procsPerWorker, else one per GPU, else 1."""
        return self.procs_per_worker or self.resources.gpus_per_worker or 1

    @property
    def world_size(self) -> int:
        return self.workers * self.effective_procs_per_worker


# --- status --------------------------------------------------------------------------------


class WorkerCounts(ApiModel):
    """Worker pods of the current restart attempt by state."""

    total: int = Field(default=0, ge=0, le=MAX_WORKERS)
    """Workers the job wants (spec.workers)."""
    pending: int = Field(default=0, ge=0, le=MAX_WORKERS)
    """Pods created but not yet running (scheduling, pulling images)."""
    running: int = Field(default=0, ge=0, le=MAX_WORKERS)
    """Pods running."""
    succeeded: int = Field(default=0, ge=0, le=MAX_WORKERS)
    """Pods that exited 0."""
    failed: int = Field(default=0, ge=0, le=MAX_WORKERS)
    """Pods that failed."""
    ready: int = Field(default=0, ge=0, le=MAX_WORKERS)
    """Pods with condition Ready."""


class CheckpointStatus(ApiModel):
    """The newest committed checkpoint reported by the trainer."""

    step: int = Field(ge=0, le=2**53)
    """Training step of the checkpoint."""
    path: str = Field(max_length=4096)
    """Directory of the checkpoint inside the checkpoint volume."""
    time: str | None = Field(default=None, max_length=64)
    """RFC 3339 time the checkpoint was committed."""


class Progress(ApiModel):
    """Training progress reported by the trainer."""

    step: int = Field(default=0, ge=0, le=2**53)
    """Last completed optimizer step."""
    total_steps: int | None = Field(default=None, ge=0, le=2**53)
    """Steps the run will take."""
    loss: float | None = Field(default=None, ge=-1e30, le=1e30)
    """Last training loss."""
    samples_per_second: float | None = Field(default=None, ge=0, le=1e15)
    """Training throughput across all workers."""
    eta_seconds: float | None = Field(default=None, ge=0, le=1e12)
    """Estimated seconds until totalSteps, at the current step rate."""
    transport: Literal["InfiniBand", "RoCE", "Socket"] | None = None
    """What the collectives run over, as the trainer detected it (NCCL's own log, or Socket
    for gloo)."""
    updated_at: str | None = Field(default=None, max_length=64)
    """RFC 3339 time (operator clock) the step last changed; progressDeadlineSeconds counts
    from here."""


class NetworkAttachment(ApiModel):
    """One network Multus attached to a worker (its network-status annotation)."""

    network: str = Field(max_length=253)
    """NetworkAttachmentDefinition as namespace/name."""
    interface: str = Field(default="", max_length=64)
    """Interface inside the pod, e.g. net1."""


class WorkerNetworks(ApiModel):
    """The networks attached to one worker pod."""

    worker: str = Field(max_length=253)
    """Worker pod name."""
    attachments: list[NetworkAttachment] = Field(default_factory=list, max_length=32)
    """Its non-default networks, as Multus reports them."""


class RuntimeSnapshot(ApiModel):
    """A copy of the runtime a job started with."""

    kind: RuntimeKind
    """TrainingRuntime or ClusterTrainingRuntime."""
    name: str = Field(max_length=253)
    """Name of the runtime."""
    generation: int = Field(default=0, ge=0, le=2**53)
    """The runtime's metadata.generation when the job read it."""
    spec: dict[str, Any] = Field(default_factory=dict, max_length=8)
    """The runtime's spec (template and locked fields) when the job read it."""


class TrainingJobStatus(ApiModel):
    """Observed state of a TrainingJob, written by the operator."""

    observed_generation: int | None = Field(default=None, ge=0, le=2**53)
    """The .metadata.generation this status describes."""
    phase: Phase | None = None
    """Pending, Running, Restarting, Suspended, Succeeded or Failed (the last two are
    final)."""
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Running, Restarting, Suspended, Succeeded, Failed, and kstatus Ready, Reconciling,
    Stalled."""
    workers: WorkerCounts | None = None
    """Worker pods by state."""
    restarts: int = Field(default=0, ge=0, le=1_000_000)
    """Gang restarts so far (disruptions excluded)."""
    restart_attempt: int = Field(default=0, ge=0, le=1_000_000)
    """The current gang's attempt number: every gang restart, counted or not, increments it.
    Worker pods carry it in the trainforge.io/restart-attempt label."""
    start_time: str | None = Field(default=None, max_length=64)
    """RFC 3339 time the operator started the job (reset when it resumes from suspend);
    activeDeadlineSeconds counts from here."""
    completion_time: str | None = Field(default=None, max_length=64)
    """RFC 3339 time the job Succeeded or Failed."""
    checkpoint: CheckpointStatus | None = None
    """Newest committed checkpoint."""
    progress: Progress | None = None
    """Training progress."""
    networks: list[WorkerNetworks] | None = Field(default=None, max_length=1024)
    """With spec.network.rdma.networks, while all workers run: the networks Multus attached
    to each one (read back from k8s.v1.cni.cncf.io/network-status)."""
    runtime: RuntimeSnapshot | None = None
    """The runtime this job started with (spec.runtimeRef, or the operator's default
    ClusterTrainingRuntime), as it was then: later edits of the runtime do not change the
    job."""
    effective_spec: dict[str, Any] | None = Field(default=None, max_length=64)
    """The spec the operator runs: the job's spec over its runtime's template (only for jobs
    with a runtime)."""


# --- the whole object ------------------------------------------------------------------------


def max_name_length(workers: int) -> int:
    """Longest job name whose last worker hostname `<name>-worker-<workers-1>` fits 63."""
    return MAX_HOSTNAME - len(WORKER_INFIX) - len(str(workers - 1))


# Root-level CEL rules: they need metadata.name or status next to spec.
ROOT_RULES = [
    cel(
        f"self.metadata.name.matches('{DNS_1035_LABEL_PATTERN}')",
        "metadata.name must start with a lowercase letter and contain only lowercase "
        "letters, digits and '-' (it names the headless Service and the worker hostnames)",
        field_path=".metadata.name",
    ),
    cel(
        f"size(self.metadata.name) <= {MAX_HOSTNAME - len(WORKER_INFIX)} - "
        "(self.spec.workers > 1000 ? 4 : self.spec.workers > 100 ? 3 : "
        "self.spec.workers > 10 ? 2 : 1)",
        f"metadata.name is too long for spec.workers: the pod hostname "
        f"<name>{WORKER_INFIX}<workers-1> must fit in {MAX_HOSTNAME} characters, so the name "
        f"may have at most {max_name_length(10)} characters with up to 10 workers, "
        f"{max_name_length(100)} up to 100, {max_name_length(1000)} up to 1000 and "
        f"{max_name_length(MAX_WORKERS)} beyond; shorten the name",
        field_path=".metadata.name",
    ),
    *(_locked_rule(field) for field in IMMUTABLE_WHILE_RUNNING),
]


class ObjectMeta(BaseModel):
    """The parts of metav1.ObjectMeta trainforge reads; the server owns the rest."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(max_length=253)
    namespace: str = "default"
    uid: str = ""
    generation: int = 0
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class TrainingJob(ApiModel):
    """A whole TrainingJob manifest, for clients without an API server (`trainforge local
    run`): the same checks as the CRD, including those on metadata.name."""

    api_version: Literal["trainforge.io/v1alpha1"]
    kind: Literal["TrainingJob"]
    metadata: ObjectMeta
    spec: TrainingJobSpec
    status: TrainingJobStatus | None = None

    @model_validator(mode="after")
    def _name_fits_children(self) -> TrainingJob:
        name = self.metadata.name
        if not re.match(DNS_1035_LABEL_PATTERN, name):
            raise ValueError(
                f"metadata.name {name!r} must start with a lowercase letter and contain only "
                "lowercase letters, digits and '-' (it names the headless Service and the "
                "worker hostnames)"
            )
        limit = max_name_length(self.spec.workers)
        if len(name) > limit:
            raise ValueError(
                f"metadata.name is {len(name)} characters; with {self.spec.workers} workers it "
                f"must be at most {limit} so that the pod hostname <name>{WORKER_INFIX}<index> "
                f"fits in {MAX_HOSTNAME} characters; shorten the name"
            )
        return self


def parse_training_job_spec(raw: Mapping[str, Any]) -> TrainingJobSpec:
    """Validate a stored spec; raises InvalidSpec with one `spec.<field>: …` line per problem."""
    try:
        return TrainingJobSpec.model_validate(raw)
    except ValidationError as error:
        raise InvalidSpec(describe_errors(error, root="spec")) from None


def parse_training_job(raw: Mapping[str, Any]) -> TrainingJob:
    """Validate a whole manifest (metadata.name included), as `trainforge local run` reads it."""
    try:
        return TrainingJob.model_validate(raw)
    except ValidationError as error:
        raise InvalidSpec(describe_errors(error, root="")) from None
