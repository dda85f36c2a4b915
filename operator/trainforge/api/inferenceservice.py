"""InferenceService (trainforge.io/v1alpha1): spec and status models, the source of the CRD.

As for TrainingJob, every cross-field rule exists twice, side by side: a CEL rule (the API
server enforces it) and a Python validator (the operator and clients without a server enforce
it). The cluster validation tests send every invalid manifest to both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

import trainforge_contract as contract
from trainforge.api.common import (
    DNS_1035_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    ENV_VALUE_OR_SOURCE,
    IMAGE_PATTERN,
    LIST_MAP_BY_NAME,
    REQUESTS_WITHIN_LIMITS,
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
    pod_spec_overlay,
)
from trainforge.api.trainingjob import ObjectMeta, PodTemplateMetadata, ResourceName

KIND = "InferenceService"
PLURAL = "inferenceservices"

# The Service is named after the object, and Service names are DNS-1035 labels.
MAX_NAME = 63
MAX_REPLICAS = 1000
# The served model name is a URL path segment (/v2/models/{name}/infer); the server's rule.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
# A directory inside the claim, relative to its root. No segment may start with '.', which
# rules out '..' (escaping the volume) and the trainer's in-progress '.tmp-*' directories.
RELATIVE_PATH_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*$"
# HPA target when spec.autoscaling names no metric.
DEFAULT_TARGET_CPU_PERCENT = 80

# Server settings the operator renders from spec.model and spec.server: user env may not
# shadow them (a different port would break the probes and the Service). The server's other
# TRAINFORGE_SERVE_* knobs (device, reload interval, drain time…) are left to spec.env.
OPERATOR_ENV_NAMES = (
    contract.ENV_CHECKPOINT_DIR,
    contract.ENV_SERVE_MODEL_NAME,
    contract.ENV_SERVE_HOST,
    contract.ENV_SERVE_PORT,
    contract.ENV_SERVE_MAX_BATCH_SIZE,
    contract.ENV_SERVE_MAX_BATCH_DELAY_MS,
    contract.ENV_SERVE_QUANTIZE,
)
# A Deployment's pods always restart in place.
OPERATOR_POD_FIELDS = ("restartPolicy",)

Quantize = Literal["none", "int8"]
Runtime = Literal["trainforge", "vllm"]


# --- model source ----------------------------------------------------------------------------


class ReloadPolicy(ApiModel):
    """Quality-gated reload: the servers switch to a newer checkpoint only when the metric
    in its manifest (the trainer records its newest validation results there) is no worse
    than the served checkpoint's. Skipped steps show in status.model.skippedStep and the
    trainforge_serve_skipped_step metric."""

    metric: str = Field(max_length=63, pattern=r"^[a-z][a-z0-9_]*$")
    """Manifest metric to compare, e.g. val_loss, val_accuracy or val_perplexity (the
    bundled trainer writes val_<name> for each validation result)."""
    mode: Literal["min", "max"] = "min"
    """min: lower is better (losses); max: higher is better (accuracy)."""


class ModelSource(ApiModel):
    """Which checkpoints to serve: those of a TrainingJob, or a directory on a PVC. The server
    serves the newest committed checkpoint there and hot-reloads newer ones."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                "has(self.fromTrainingJob) != has(self.claimName)",
                "set exactly one of model.fromTrainingJob (serve a TrainingJob's checkpoints) "
                "or model.claimName (serve checkpoints from an existing PVC)",
            ),
            cel(
                "!has(self.path) || has(self.claimName)",
                "model.path applies only with model.claimName (a TrainingJob's checkpoints are "
                "found from the job); remove it",
                field_path=".path",
            ),
        )
    )

    from_training_job: str | None = Field(
        default=None, max_length=MAX_NAME, pattern=DNS_1035_LABEL_PATTERN
    )
    """A TrainingJob in the same namespace: its checkpoint volume is mounted read-only, and
    the service deploys once the job has committed a checkpoint (status.checkpoint)."""
    claim_name: str | None = Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    """An existing PersistentVolumeClaim holding trainforge checkpoints (step-XXXXXXXX/
    directories and a latest pointer), mounted read-only."""
    path: str | None = Field(default=None, max_length=1024, pattern=RELATIVE_PATH_PATTERN)
    """Checkpoint directory inside the claim, relative to its root, e.g. runs/gpt; default:
    the root. Only with claimName."""
    name: str | None = Field(default=None, max_length=128, pattern=MODEL_NAME_PATTERN)
    """Model name clients use in /v2/models/{name}; default: the InferenceService's name."""
    reload_policy: ReloadPolicy | None = None
    """Switch to a newer checkpoint only when it is no worse on a validation metric; unset:
    always serve the newest committed checkpoint."""

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if (self.from_training_job is None) == (self.claim_name is None):
            got = "both" if self.claim_name is not None else "neither"
            raise ValueError(
                "set exactly one of model.fromTrainingJob (serve a TrainingJob's checkpoints) "
                f"or model.claimName (serve checkpoints from an existing PVC); got {got}"
            )
        if self.path is not None and self.claim_name is None:
            raise ValueError(
                f"model.path ({self.path!r}) applies only with model.claimName (a "
                "TrainingJob's checkpoints are found from the job); remove it"
            )
        return self


# --- scaling ---------------------------------------------------------------------------------


MetricSpec = Annotated[
    dict[str, Any],
    WithJsonSchema(
        {
            "type": "object",
            "description": "An autoscaling/v2 MetricSpec.",
            "x-kubernetes-preserve-unknown-fields": True,
        }
    ),
]


class Autoscaling(ApiModel):
    """A HorizontalPodAutoscaler (autoscaling/v2) that drives spec.replicas through the
    InferenceService's scale subresource."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                "self.minReplicas <= self.maxReplicas",
                "autoscaling.minReplicas must not exceed autoscaling.maxReplicas; raise "
                "maxReplicas or lower minReplicas",
                field_path=".minReplicas",
            ),
        )
    )

    min_replicas: int = Field(default=1, ge=1, le=MAX_REPLICAS)
    """Fewest replicas the autoscaler keeps."""
    max_replicas: int = Field(ge=1, le=MAX_REPLICAS)
    """Most replicas the autoscaler may run."""
    target_cpu_utilization_percentage: int | None = Field(
        default=None, ge=1, le=1000, alias="targetCPUUtilizationPercentage"
    )
    """Target average CPU use in percent of resources.requests.cpu; default 80 when metrics is
    empty."""
    metrics: list[MetricSpec] = Field(default_factory=list, max_length=8)
    """Further autoscaling/v2 metrics (Pods, Object, External…), e.g. requests per second
    from a custom metrics adapter; the autoscaler follows whichever asks for most replicas."""

    @model_validator(mode="after")
    def _min_within_max(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"autoscaling.minReplicas ({self.min_replicas}) must not exceed "
                f"autoscaling.maxReplicas ({self.max_replicas}); raise maxReplicas or lower "
                "minReplicas"
            )
        return self

    @property
    def target_cpu(self) -> int | None:
        """The CPU target the HPA uses: the given one, else the default when no metric is set."""
        if self.target_cpu_utilization_percentage is not None:
            return self.target_cpu_utilization_percentage
        return None if self.metrics else DEFAULT_TARGET_CPU_PERCENT


# --- container -------------------------------------------------------------------------------


class EnvVar(EnvVarFields):
    """An environment variable of the server container (core/v1 EnvVar)."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                f"!(self.name in {cel_list(OPERATOR_ENV_NAMES)})",
                "this env name is set by trainforge from spec.model and spec.server; set "
                "those fields instead",
                message_expression=(
                    "'env ' + self.name + ' is set by trainforge from spec.model and "
                    "spec.server; set those fields instead'"
                ),
                field_path=".name",
            ),
            ENV_VALUE_OR_SOURCE,
        )
    )

    @model_validator(mode="after")
    def _not_owned_by_operator(self) -> EnvVar:
        if self.name in OPERATOR_ENV_NAMES:
            raise ValueError(
                f"env {self.name} is set by trainforge from spec.model and spec.server; set "
                "those fields instead"
            )
        self.check_value_or_source()
        return self


class Resources(ApiModel):
    """Compute resources of each server replica."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                "(!has(self.requests) || !(self.gpuResource in self.requests))"
                " && (!has(self.limits) || !(self.gpuResource in self.limits))",
                "do not list the GPU resource in requests or limits; set resources.gpus instead",
                message_expression=(
                    "'do not list ' + self.gpuResource + ' in requests or limits; "
                    "set resources.gpus instead'"
                ),
            ),
            REQUESTS_WITHIN_LIMITS,
        )
    )

    gpus: int = Field(default=0, ge=0, le=16)
    """GPUs per replica (requests = limits). 0 serves on CPU."""
    gpu_resource: ResourceName = "nvidia.com/gpu"
    """Extended resource that provides a GPU, e.g. nvidia.com/gpu or a MIG profile such as
    nvidia.com/mig-1g.10gb."""
    requests: dict[ResourceName, Quantity] = Field(default_factory=dict, max_length=16)
    """Resource requests of the server container besides GPUs, e.g. {cpu: 2, memory: 4Gi};
    CPU autoscaling needs requests.cpu."""
    limits: dict[ResourceName, Quantity] = Field(default_factory=dict, max_length=16)
    """Resource limits of the server container besides GPUs."""

    @model_validator(mode="after")
    def _gpus_only_via_gpus(self) -> Resources:
        for field, values in (("requests", self.requests), ("limits", self.limits)):
            if self.gpu_resource in values:
                raise ValueError(
                    f"do not list {self.gpu_resource} in {field} (got "
                    f"{values[self.gpu_resource]}); set resources.gpus instead"
                )
        check_requests_within_limits(self.requests, self.limits)
        return self


class Server(ApiModel):
    """Settings of the bundled inference server (python -m trainforge_trainer serve)."""

    max_batch_size: int = Field(default=32, ge=1, le=4096)
    """Most rows merged into one forward pass by dynamic batching; 1 turns batching off."""
    max_batch_delay_ms: int = Field(default=5, ge=0, le=10_000)
    """Longest a request waits for others to share its batch, in milliseconds."""
    quantize: Quantize = "none"
    """int8: dynamic int8 quantization of Linear layers (CPU serving only)."""
    startup_timeout_seconds: int = Field(default=600, ge=10, le=86_400)
    """How long a new replica may take to start listening (image with torch, CUDA init)
    before the kubelet restarts it; loading the weights afterwards only delays readiness.
    vLLM listens only once the model is loaded: allow for that too."""
    runtime: Runtime = "trainforge"
    """trainforge: the bundled server (Open Inference Protocol, and OpenAI-compatible
    endpoints for causal-lm checkpoints, with hot reload). vllm: vLLM's OpenAI server over
    the Hugging Face export a causal-lm run writes (`hf` in the checkpoint directory); needs
    spec.image (a vLLM image) and serves the export present when a replica starts."""
    vllm_args: list[Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=list, max_length=64
    )
    """Extra vLLM server flags, e.g. [--max-model-len, "4096", --dtype, bfloat16]
    (runtime vllm only)."""


# --- pod template ----------------------------------------------------------------------------


_OVERLAY_CHECK, _OVERLAY_SCHEMA = pod_spec_overlay(
    OPERATOR_POD_FIELDS,
    "the pods belong to a Deployment, which always restarts them in place",
    "podTemplate.spec must not set restartPolicy: the pods belong to a Deployment, which "
    "always restarts them in place",
)
PodSpecOverlay = Annotated[dict[str, Any], _OVERLAY_CHECK, _OVERLAY_SCHEMA]


class PodTemplate(ApiModel):
    """Escape hatch merged onto the rendered server pod template, with the TrainingJob's merge
    rule (docs/api.md, TrainingJob.spec.podTemplate). Target the server container with
    name: server."""

    metadata: PodTemplateMetadata = Field(default_factory=PodTemplateMetadata)
    """Labels and annotations for the server pods."""
    spec: PodSpecOverlay = Field(default_factory=dict)
    """Partial core/v1 PodSpec merged onto the rendered one, e.g. nodeSelector, tolerations,
    serviceAccountName, a sidecar."""


# --- spec ------------------------------------------------------------------------------------


class InferenceServiceSpec(ApiModel):
    """Desired state of an InferenceService: replicas of the bundled inference server behind
    a Service."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                "!has(self.autoscaling)"
                " || has(self.autoscaling.metrics) && size(self.autoscaling.metrics) > 0"
                " && !has(self.autoscaling.targetCPUUtilizationPercentage)"
                " || has(self.resources.requests) && 'cpu' in self.resources.requests",
                "autoscaling on CPU utilization (targetCPUUtilizationPercentage, the default "
                "without metrics) needs resources.requests.cpu, of which utilization is a "
                "percentage; set it, e.g. cpu: 1, or autoscale on autoscaling.metrics only",
                field_path=".resources.requests",
            ),
            cel(
                "self.server.runtime != 'vllm' || has(self.image)",
                "server.runtime vllm needs spec.image: a vLLM image such as "
                "vllm/vllm-openai:<version> (the trainer image has no vLLM)",
                field_path=".image",
            ),
            cel(
                "self.server.runtime == 'vllm' || !has(self.server.vllmArgs)"
                " || size(self.server.vllmArgs) == 0",
                "server.vllmArgs applies only with server.runtime vllm; remove it",
                field_path=".server.vllmArgs",
            ),
            cel(
                "self.server.runtime != 'vllm' || self.server.quantize == 'none'",
                "server.quantize int8 is the bundled server's; with runtime vllm pass vLLM's "
                "own flags in server.vllmArgs (e.g. --quantization)",
                field_path=".server.quantize",
            ),
            cel(
                "self.server.quantize != 'int8' || self.resources.gpus == 0",
                "server.quantize int8 runs on CPU only; set resources.gpus to 0 or quantize "
                "to none",
                field_path=".server.quantize",
            ),
        )
    )

    model: ModelSource
    """The checkpoints to serve."""
    replicas: int = Field(default=1, ge=0, le=MAX_REPLICAS)
    """Server replicas (the scale subresource: `kubectl scale infsvc/<name> --replicas=3`).
    With autoscaling the HorizontalPodAutoscaler sets it, kept within min and max."""
    autoscaling: Autoscaling | None = None
    """Scale replicas with a HorizontalPodAutoscaler."""
    image: str | None = Field(default=None, min_length=1, max_length=1024, pattern=IMAGE_PATTERN)
    """Container image with the inference server; default: the trainer image the operator is
    configured with."""
    env: Annotated[list[EnvVar], UniqueNames] = Field(
        default_factory=list, max_length=128, json_schema_extra=LIST_MAP_BY_NAME
    )
    """Extra environment variables of the server container (each name once), e.g.
    TRAINFORGE_SERVE_RELOAD_INTERVAL_SECONDS or TRAINFORGE_SERVE_DEVICE."""
    resources: Resources = Field(default_factory=Resources)
    """Compute resources of each replica."""
    server: Server = Field(default_factory=Server)
    """Inference server settings."""
    pod_template: PodTemplate | None = None
    """Overrides merged onto the rendered server pods."""

    @model_validator(mode="after")
    def _settings_agree(self) -> InferenceServiceSpec:
        scaling = self.autoscaling
        cpu_target = scaling.target_cpu if scaling is not None else None
        if cpu_target is not None and "cpu" not in self.resources.requests:
            raise ValueError(
                f"autoscaling on CPU utilization ({cpu_target}%) needs resources.requests.cpu, "
                "of which utilization is a percentage; set it, e.g. cpu: 1, or autoscale on "
                "autoscaling.metrics only"
            )
        server = self.server
        if server.runtime == "vllm" and self.image is None:
            raise ValueError(
                "server.runtime vllm needs spec.image: a vLLM image such as "
                "vllm/vllm-openai:<version> (the trainer image has no vLLM)"
            )
        if server.runtime != "vllm" and server.vllm_args:
            raise ValueError("server.vllmArgs applies only with server.runtime vllm; remove it")
        if server.runtime == "vllm" and server.quantize != "none":
            raise ValueError(
                "server.quantize int8 is the bundled server's; with runtime vllm pass vLLM's "
                "own flags in server.vllmArgs (e.g. --quantization)"
            )
        if self.server.quantize == "int8" and self.resources.gpus:
            raise ValueError(
                f"server.quantize int8 runs on CPU only (resources.gpus is "
                f"{self.resources.gpus}); set resources.gpus to 0 or quantize to none"
            )
        return self

    @property
    def desired_replicas(self) -> int:
        """Replicas the Deployment runs: spec.replicas, kept within the autoscaler's bounds."""
        scaling = self.autoscaling
        if scaling is None:
            return self.replicas
        return min(max(self.replicas, scaling.min_replicas), scaling.max_replicas)

    @property
    def may_run_several(self) -> bool:
        """Whether more than one replica may run (then a PodDisruptionBudget protects them)."""
        if self.autoscaling is not None:
            return self.autoscaling.max_replicas > 1
        return self.replicas > 1


# --- status ----------------------------------------------------------------------------------


class ModelStatus(ApiModel):
    """The checkpoints the service serves."""

    claim_name: str | None = Field(default=None, max_length=253)
    """PersistentVolumeClaim mounted read-only into the servers."""
    path: str | None = Field(default=None, max_length=4096)
    """Checkpoint directory the servers watch, or, from a TrainingJob, the job's newest
    committed checkpoint; the servers load the newest committed one without a restart."""
    step: int | None = Field(default=None, ge=0, le=2**53)
    """Training step of the TrainingJob's newest committed checkpoint."""
    training_job: str | None = Field(default=None, max_length=253)
    """The TrainingJob the checkpoints come from."""
    served_step: int | None = Field(default=None, ge=0, le=2**53)
    """The step the servers actually serve: the lowest one any replica reported in the last
    5 minutes (each replica reports after every load and every minute). Follows a reload
    within 30 s."""
    skipped_step: int | None = Field(default=None, ge=0, le=2**53)
    """With model.reloadPolicy: the newest step a server refused as worse than the one it
    serves."""


class InferenceServiceStatus(ApiModel):
    """Observed state of an InferenceService, written by the operator."""

    observed_generation: int | None = Field(default=None, ge=0, le=2**53)
    """The .metadata.generation this status describes."""
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Ready (the Deployment has the desired available replicas), ModelLoaded, and kstatus
    Reconciling and Stalled."""
    url: str | None = Field(default=None, max_length=512)
    """In-cluster address of the service: http://<name>.<namespace>.svc.cluster.local."""
    replicas: int = Field(default=0, ge=0, le=1_000_000)
    """Server pods of the Deployment (the scale subresource's current replicas)."""
    ready_replicas: int = Field(default=0, ge=0, le=1_000_000)
    """Server pods that are ready (a checkpoint loaded)."""
    selector: str | None = Field(default=None, max_length=1024)
    """Label selector of the server pods in string form, for the scale subresource (HPA)."""
    model: ModelStatus | None = None
    """The checkpoints served."""


# --- the whole object ------------------------------------------------------------------------


ROOT_RULES = [
    cel(
        f"self.metadata.name.matches('{DNS_1035_LABEL_PATTERN}')"
        f" && size(self.metadata.name) <= {MAX_NAME}",
        f"metadata.name must start with a lowercase letter, contain only lowercase letters, "
        f"digits and '-', and have at most {MAX_NAME} characters (it names the Service)",
        field_path=".metadata.name",
    ),
]


class InferenceService(ApiModel):
    """A whole InferenceService manifest, for clients without an API server: the same checks
    as the CRD, including those on metadata.name."""

    api_version: Literal["trainforge.io/v1alpha1"]
    kind: Literal["InferenceService"]
    metadata: ObjectMeta
    spec: InferenceServiceSpec
    status: InferenceServiceStatus | None = None

    @model_validator(mode="after")
    def _name_is_a_service_name(self) -> InferenceService:
        name = self.metadata.name
        if not re.match(DNS_1035_LABEL_PATTERN, name) or len(name) > MAX_NAME:
            raise ValueError(
                f"metadata.name {name!r} must start with a lowercase letter, contain only "
                f"lowercase letters, digits and '-', and have at most {MAX_NAME} characters "
                "(it names the Service)"
            )
        return self


def parse_inference_service_spec(raw: Mapping[str, Any]) -> InferenceServiceSpec:
    """Validate a stored spec; raises InvalidSpec with one `spec.<field>: …` line per problem."""
    try:
        return InferenceServiceSpec.model_validate(raw)
    except ValidationError as error:
        raise InvalidSpec(describe_errors(error, root="spec")) from None


def parse_inference_service(raw: Mapping[str, Any]) -> InferenceService:
    """Validate a whole manifest (metadata.name included)."""
    try:
        return InferenceService.model_validate(raw)
    except ValidationError as error:
        raise InvalidSpec(describe_errors(error, root="")) from None
