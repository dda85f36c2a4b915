"""InferenceService -> its children (Deployment, Service, HorizontalPodAutoscaler, PDB).

Pure functions, as for TrainingJob: the same inputs give the same manifests, byte for byte;
every child carries an owner reference, the labels from `contract`, and a spec-hash
annotation, so the planner tells a stale child from a current one by one string. Unlike
pods these children are mutable: a different hash means apply the new manifest in place.

The checkpoint step is deliberately absent from the pod template: the server hot-reloads
newer checkpoints itself, so a TrainingJob committing one must not roll the Deployment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import trainforge_contract as contract
from trainforge.api.inferenceservice import KIND, InferenceServiceSpec
from trainforge.render import security
from trainforge.render.common import (
    GPU_TAINT_KEY,
    OwnerRef,
    RenderSettings,
    child_metadata,
    env_var,
    with_hash,
)
from trainforge.render.merge import merge
from trainforge.render.progress import progress_env, progress_mount, progress_volume

CHECKPOINT_VOLUME = "checkpoints"
SERVER_MODULE = "trainforge_trainer"
# runtime vllm: vLLM's OpenAI server, and the health path it answers once the engine runs.
VLLM_MODULE = "vllm.entrypoints.openai.api_server"
VLLM_HEALTH_PATH = "/health"
SERVICE_PORT = 80  # the URL carries no port
STARTUP_PROBE_PERIOD = 5


@dataclass(frozen=True)
class InferenceRef(OwnerRef):
    """Identity of the InferenceService the children belong to."""

    kind: ClassVar[str] = KIND


@dataclass(frozen=True)
class ModelMount:
    """The resolved model source: the claim, where it is mounted, and the directory the
    server watches for committed checkpoints."""

    claim_name: str
    mount_path: str
    checkpoint_dir: str


@dataclass(frozen=True)
class DesiredChildren:
    deployment: dict[str, Any]
    service: dict[str, Any]
    autoscaler: dict[str, Any] | None
    disruption_budget: dict[str, Any] | None

    def by_kind(self) -> dict[str, dict[str, Any] | None]:
        """Every child kind the service may have, None for those it should not have."""
        return {
            "Deployment": self.deployment,
            "Service": self.service,
            "HorizontalPodAutoscaler": self.autoscaler,
            "PodDisruptionBudget": self.disruption_budget,
        }


# --- names, labels, addresses ----------------------------------------------------------------


def selector_labels(name: str) -> dict[str, str]:
    """Labels on every child and server pod; the Deployment and Service select with them."""
    return {contract.LABEL_MANAGED_BY: contract.MANAGED_BY, contract.LABEL_INFERENCE_SERVICE: name}


def selector_string(name: str) -> str:
    """The pod selector in string form (status.selector, read through the scale subresource)."""
    return ",".join(f"{key}={value}" for key, value in sorted(selector_labels(name).items()))


def url(name: str, namespace: str) -> str:
    return f"http://{name}.{namespace}.svc.cluster.local"


def _metadata(ref: InferenceRef) -> dict[str, Any]:
    # Every child is named after the service: one of each kind.
    return child_metadata(ref, ref.name, selector_labels(ref.name))


# --- the server container ------------------------------------------------------------------


def server_env(name: str, spec: InferenceServiceSpec, mount: ModelMount) -> list[dict[str, Any]]:
    """The server's settings (trainforge_trainer.serve reads TRAINFORGE_SERVE_*), then the
    user's env, which may set the server's other knobs and HOME but not these."""
    server = spec.server
    env = [
        env_var(contract.ENV_CHECKPOINT_DIR, mount.checkpoint_dir),
        env_var(contract.ENV_SERVE_MODEL_NAME, spec.model.name or name),
        env_var(contract.ENV_SERVE_PORT, contract.SERVE_DEFAULT_PORT),
        env_var(contract.ENV_SERVE_MAX_BATCH_SIZE, server.max_batch_size),
        env_var(contract.ENV_SERVE_MAX_BATCH_DELAY_MS, server.max_batch_delay_ms),
        env_var(contract.ENV_SERVE_QUANTIZE, server.quantize),
        *security.scratch_env(),
    ]
    policy = spec.model.reload_policy
    if policy is not None:
        env += [
            env_var(contract.ENV_SERVE_RELOAD_METRIC, policy.metric),
            env_var(contract.ENV_SERVE_RELOAD_MODE, policy.mode),
        ]
    user = [var.to_json() for var in spec.env]
    overridden = {var["name"] for var in user}
    return [var for var in env if var["name"] not in overridden] + user


def _resources(spec: InferenceServiceSpec) -> dict[str, Any]:
    # GPUs cannot be overcommitted: requests = limits.
    gpus = {spec.resources.gpu_resource: str(spec.resources.gpus)} if spec.resources.gpus else {}
    resources: dict[str, Any] = {}
    requests = {**spec.resources.requests, **gpus}
    limits = {**spec.resources.limits, **gpus}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return resources


def _probe(path: str, period: int, failures: int, timeout: int = 1) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": contract.SERVE_PORT_NAME},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def vllm_command(name: str, spec: InferenceServiceSpec, mount: ModelMount) -> list[str]:
    """vLLM's OpenAI server over the Hugging Face export of the checkpoint directory."""
    return [
        "python3",
        "-m",
        VLLM_MODULE,
        "--model",
        f"{mount.checkpoint_dir.rstrip('/')}/{contract.EXPORT_DIR_NAME}",
        "--served-model-name",
        spec.model.name or name,
        "--host",
        "0.0.0.0",
        "--port",
        str(contract.SERVE_DEFAULT_PORT),
        *spec.server.vllm_args,
    ]


def server_container(
    name: str, spec: InferenceServiceSpec, mount: ModelMount, settings: RenderSettings
) -> dict[str, Any]:
    vllm = spec.server.runtime == "vllm"
    container: dict[str, Any] = {
        "name": contract.SERVE_CONTAINER_NAME,
        "image": spec.image or settings.default_image,
        "command": (
            vllm_command(name, spec, mount) if vllm else ["python", "-m", SERVER_MODULE, "serve"]
        ),
        # vLLM reads no TRAINFORGE_SERVE_*; offline: the model is on the volume, never a hub.
        "env": (
            [env_var("HF_HUB_OFFLINE", 1), *(var.to_json() for var in spec.env)]
            if vllm
            else server_env(name, spec, mount) + progress_env(settings.progress_url)
        ),
        "ports": [
            {
                "name": contract.SERVE_PORT_NAME,
                "containerPort": contract.SERVE_DEFAULT_PORT,
                "protocol": "TCP",
            }
        ],
    }
    resources = _resources(spec)
    if resources:
        container["resources"] = resources
    container["volumeMounts"] = [
        {"name": CHECKPOINT_VOLUME, "mountPath": mount.mount_path, "readOnly": True},
        security.scratch_mount(),
        *progress_mount(settings.progress_url),  # served-step push hook (render/progress.py)
    ]
    container["securityContext"] = security.container_security_context()
    # The server listens within seconds of starting (importing torch, initialising CUDA) and
    # is live from then on; loading the weights only holds readiness back. The startup probe
    # gives slow images their time before the liveness probe may restart them.
    # vLLM listens only once the weights are loaded, and then its /health is both.
    live = VLLM_HEALTH_PATH if vllm else contract.SERVE_PATH_LIVE
    ready = VLLM_HEALTH_PATH if vllm else contract.SERVE_PATH_READY
    startup_failures = math.ceil(spec.server.startup_timeout_seconds / STARTUP_PROBE_PERIOD)
    container["startupProbe"] = _probe(live, STARTUP_PROBE_PERIOD, startup_failures)
    # A server busy with large batches answers slowly but is alive: a generous timeout.
    container["livenessProbe"] = _probe(live, 10, 3, timeout=5)
    container["readinessProbe"] = _probe(ready, 5, 2, timeout=5)
    return container


# --- children --------------------------------------------------------------------------------


def deployment(
    ref: InferenceRef, spec: InferenceServiceSpec, mount: ModelMount, settings: RenderSettings
) -> dict[str, Any]:
    """`<name>`: the server replicas, rolled out one surge pod at a time and never below the
    desired count (a new replica must load the model before an old one goes)."""
    template = spec.pod_template
    labels = {**(template.metadata.labels if template else {}), **selector_labels(ref.name)}
    pod_spec: dict[str, Any] = {
        # Many Services in a namespace would otherwise flood the environment.
        "enableServiceLinks": False,
        "securityContext": security.pod_security_context(),
        "containers": [server_container(ref.name, spec, mount, settings)],
        "volumes": [
            {
                "name": CHECKPOINT_VOLUME,
                "persistentVolumeClaim": {"claimName": mount.claim_name, "readOnly": True},
            },
            security.scratch_volume(),
            *progress_volume(settings.progress_url),
        ],
    }
    if spec.resources.gpus:
        pod_spec["tolerations"] = [
            {"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}
        ]
    if template is not None:
        pod_spec = merge(pod_spec, template.spec)
    pod_template: dict[str, Any] = {"metadata": {"labels": labels}, "spec": pod_spec}
    if template is not None and template.metadata.annotations:
        pod_template["metadata"]["annotations"] = dict(template.metadata.annotations)
    return with_hash(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _metadata(ref),
            "spec": {
                "replicas": spec.desired_replicas,
                "selector": {"matchLabels": selector_labels(ref.name)},
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
                },
                "template": pod_template,
            },
        }
    )


def service(ref: InferenceRef) -> dict[str, Any]:
    """`<name>`: a ClusterIP Service on port 80, so the URL needs no port."""
    return with_hash(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _metadata(ref),
            "spec": {
                "type": "ClusterIP",
                "selector": selector_labels(ref.name),
                "ports": [
                    {
                        "name": contract.SERVE_PORT_NAME,
                        "port": SERVICE_PORT,
                        "targetPort": contract.SERVE_PORT_NAME,
                        "protocol": "TCP",
                    }
                ],
            },
        }
    )


def autoscaler(ref: InferenceRef, spec: InferenceServiceSpec) -> dict[str, Any] | None:
    """`<name>`: an autoscaling/v2 HPA whose target is the InferenceService itself.

    Targeting the InferenceService's scale subresource (not the Deployment) keeps one owner
    of the replica count: the HPA and `kubectl scale` both write spec.replicas, and the
    operator alone copies it to the Deployment. An HPA on the Deployment would fight the
    operator, which renders the Deployment's replicas from spec.replicas.
    """
    scaling = spec.autoscaling
    if scaling is None:
        return None
    metrics: list[dict[str, Any]] = []
    if scaling.target_cpu is not None:
        metrics.append(
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": scaling.target_cpu},
                },
            }
        )
    metrics += [dict(metric) for metric in scaling.metrics]
    return with_hash(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": _metadata(ref),
            "spec": {
                "scaleTargetRef": {
                    "apiVersion": contract.API_VERSION,
                    "kind": KIND,
                    "name": ref.name,
                },
                "minReplicas": scaling.min_replicas,
                "maxReplicas": scaling.max_replicas,
                "metrics": metrics,
            },
        }
    )


def disruption_budget(ref: InferenceRef, spec: InferenceServiceSpec) -> dict[str, Any] | None:
    """`<name>`: at most one server pod voluntarily evicted at a time, only when more than one
    may run. maxUnavailable (not minAvailable) so a service scaled down to one replica never
    blocks a node drain."""
    if not spec.may_run_several:
        return None
    return with_hash(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": _metadata(ref),
            "spec": {
                "maxUnavailable": 1,
                "selector": {"matchLabels": selector_labels(ref.name)},
            },
        }
    )


def desired_children(
    ref: InferenceRef, spec: InferenceServiceSpec, mount: ModelMount, settings: RenderSettings
) -> DesiredChildren:
    return DesiredChildren(
        deployment=deployment(ref, spec, mount, settings),
        service=service(ref),
        autoscaler=autoscaler(ref, spec),
        disruption_budget=disruption_budget(ref, spec),
    )
