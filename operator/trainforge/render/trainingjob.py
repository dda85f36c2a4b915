"""TrainingJob -> its children (headless Service, worker Pods, checkpoint PVC, PodGroup).

Pure functions: the same inputs give the same manifests, byte for byte. Every child carries
an owner reference to the job, the labels from `contract`, and a spec-hash annotation over
its own content, so the planner can tell a stale child from a current one by comparing one
string (pods are immutable: a different hash means delete and recreate).

The worker pod is also what `trainforge local run` starts as a local process: its command
refers to the environment with Kubernetes `$(VAR)` references (see `expand_env_references`),
so overriding MASTER_ADDR in the environment is enough to run the gang on one machine.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import trainforge_contract as contract
from trainforge.api.trainingjob import KIND, TrainingJobSpec
from trainforge.render import security
from trainforge.render.common import (
    GPU_TAINT_KEY,
    OwnerRef,
    RenderSettings,
    checkpoint_pvc_name,
    child_metadata,
    env_var,
    with_hash,
)
from trainforge.render.gang import gang
from trainforge.render.merge import merge
from trainforge.render.progress import progress_env, progress_mount, progress_volume

MULTUS_NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
HOSTNAME_TOPOLOGY_KEY = "kubernetes.io/hostname"
SHM_VOLUME = "dshm"
CHECKPOINT_VOLUME = "checkpoints"
RENDEZVOUS_PORT_NAME = "rendezvous"
METRICS_PORT_NAME = "metrics"
TRAINER_MODULE = "trainforge_trainer"


@dataclass(frozen=True)
class JobRef(OwnerRef):
    """Identity of the TrainingJob the children belong to."""

    kind: ClassVar[str] = KIND


@dataclass(frozen=True)
class DesiredChildren:
    """Every child a job should have at one restart attempt."""

    service: dict[str, Any]
    pods: tuple[dict[str, Any], ...]
    checkpoint_pvc: dict[str, Any] | None
    pod_group: dict[str, Any] | None

    @property
    def others(self) -> list[dict[str, Any]]:
        """The children besides pods, in creation order: PVC and PodGroup first, because a
        gang scheduler must see its group before any pod and a pod should not wait on a claim
        that does not exist yet."""
        optional = [child for child in (self.checkpoint_pvc, self.pod_group) if child is not None]
        return [*optional, self.service]

    def in_creation_order(self) -> list[dict[str, Any]]:
        return [*self.others, *self.pods]


# --- names and labels ------------------------------------------------------------------------


def service_name(job_name: str) -> str:
    return job_name


def pod_group_name(job_name: str) -> str:
    return job_name


def worker_pod_name(job_name: str, index: int) -> str:
    return f"{job_name}-worker-{index}"


def master_addr(job_name: str) -> str:
    """Worker 0's DNS name through the headless Service (resolves inside the namespace)."""
    return f"{worker_pod_name(job_name, 0)}.{service_name(job_name)}"


def job_selector(job_name: str) -> dict[str, str]:
    """Labels on every child of the job: list children with this selector."""
    return {contract.LABEL_MANAGED_BY: contract.MANAGED_BY, contract.LABEL_JOB_NAME: job_name}


def worker_labels(job_name: str, index: int, attempt: int) -> dict[str, str]:
    return {
        **job_selector(job_name),
        contract.LABEL_WORKER_INDEX: str(index),
        contract.LABEL_RESTART_ATTEMPT: str(attempt),
    }


# --- service, PVC, PodGroup ------------------------------------------------------------------


def headless_service(job: JobRef) -> dict[str, Any]:
    """Gives every worker the DNS name `<job>-worker-<i>.<job>` (pods set hostname/subdomain).

    Not-ready addresses are published because workers have no readiness probe that could
    pass before rendezvous, and rendezvous needs worker 0's name first.
    """
    return with_hash(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": child_metadata(job, service_name(job.name), job_selector(job.name)),
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": job_selector(job.name),
                "ports": [
                    {
                        "name": RENDEZVOUS_PORT_NAME,
                        "port": contract.DEFAULT_MASTER_PORT,
                        "targetPort": contract.DEFAULT_MASTER_PORT,
                        "protocol": "TCP",
                    },
                    {
                        "name": METRICS_PORT_NAME,
                        "port": contract.DEFAULT_METRICS_PORT,
                        "targetPort": contract.DEFAULT_METRICS_PORT,
                        "protocol": "TCP",
                    },
                ],
            },
        }
    )


def checkpoint_pvc(job: JobRef, spec: TrainingJobSpec) -> dict[str, Any] | None:
    """The claim `<job>-checkpoints`, only when the job asks for one to be created."""
    template = spec.checkpoint.volume_claim_template if spec.checkpoint else None
    if template is None:
        return None
    pvc_spec: dict[str, Any] = {
        "accessModes": list(template.access_modes),
        "resources": {"requests": {"storage": template.size}},
    }
    if template.storage_class_name is not None:
        pvc_spec["storageClassName"] = template.storage_class_name
    return with_hash(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": child_metadata(job, checkpoint_pvc_name(job.name), job_selector(job.name)),
            "spec": pvc_spec,
        }
    )


def pod_group(job: JobRef, spec: TrainingJobSpec) -> dict[str, Any] | None:
    """The PodGroup of a gang whose integration needs one (render/gang.py); else None."""
    integration = gang(spec)
    if integration.pod_group_api_version is None or integration.pod_group_spec is None:
        return None
    return with_hash(
        {
            "apiVersion": integration.pod_group_api_version,
            "kind": "PodGroup",
            "metadata": child_metadata(job, pod_group_name(job.name), job_selector(job.name)),
            "spec": integration.pod_group_spec(spec),
        }
    )


# --- worker pod ------------------------------------------------------------------------------


def default_command(procs_per_worker: int) -> list[str]:
    """The bundled trainer: straight under the pod with one process per worker, else under
    torchrun with the static rendezvous at worker 0.

    Without torchrun in between, the kubelet's SIGTERM reaches the trainer itself, which
    checkpoints and exits 143 (torchrun would exit with its own code and SIGKILL a save that
    outlasts its 30 s grace). `$(VAR)` references are expanded by the kubelet from the
    container's environment, so the command line stays readable in `kubectl get pod -o
    yaml` and a local runner only has to change the environment.
    """
    if procs_per_worker == 1:
        return ["python", "-m", TRAINER_MODULE, "train"]
    return [
        "torchrun",
        f"--nnodes=$({contract.ENV_NNODES})",
        f"--nproc-per-node=$({contract.ENV_NPROC_PER_NODE})",
        f"--node-rank=$({contract.ENV_NODE_RANK})",
        "--rdzv-backend=static",
        f"--master-addr=$({contract.ENV_MASTER_ADDR})",
        f"--master-port=$({contract.ENV_MASTER_PORT})",
        "-m",
        TRAINER_MODULE,
        "train",
    ]


_ENV_REFERENCE = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


def expand_env_references(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' expansion of command/args: `$(VAR)` -> value when VAR is defined, `$$` ->
    `$`, unknown references left as they are."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _ENV_REFERENCE.sub(replace, text)


def worker_env(
    job_name: str, spec: TrainingJobSpec, index: int, attempt: int
) -> list[dict[str, Any]]:
    """The distributed-training environment of worker `index`, then the user's env (which
    may override NCCL settings by name, not the operator's own variables)."""
    procs = spec.effective_procs_per_worker
    env = [
        env_var(contract.ENV_MASTER_ADDR, master_addr(job_name)),
        env_var(contract.ENV_MASTER_PORT, contract.DEFAULT_MASTER_PORT),
        env_var(contract.ENV_WORLD_SIZE, spec.world_size),
        env_var(contract.ENV_NNODES, spec.workers),
        env_var(contract.ENV_NODE_RANK, index),
        env_var(contract.ENV_NPROC_PER_NODE, procs),
    ]
    if procs == 1:
        # One process per pod: the pod's rank is the global rank, without torchrun.
        env += [env_var(contract.ENV_RANK, index), env_var(contract.ENV_LOCAL_RANK, 0)]
    # torchrun reads PET_<OPTION> for every command-line option it is not given.
    env += [
        env_var("PET_NNODES", spec.workers),
        env_var("PET_NODE_RANK", index),
        env_var("PET_NPROC_PER_NODE", procs),
        env_var("PET_MASTER_ADDR", master_addr(job_name)),
        env_var("PET_MASTER_PORT", contract.DEFAULT_MASTER_PORT),
        env_var(contract.ENV_JOB_NAME, job_name),
        env_var(contract.ENV_RESTART_ATTEMPT, attempt),
        env_var(contract.ENV_METRICS_PORT, contract.DEFAULT_METRICS_PORT),
        *security.scratch_env(),
    ]
    if spec.checkpoint is not None:
        env.append(env_var(contract.ENV_CHECKPOINT_DIR, spec.checkpoint.mount_path))
    config = trainer_config(spec)
    if config:
        env.append(
            env_var(contract.ENV_CONFIG, json.dumps(config, sort_keys=True, separators=(",", ":")))
        )
    env += _nccl_env(spec)
    user = [var.to_json() for var in spec.env]
    overridden = {var["name"] for var in user}
    return [var for var in env if var["name"] not in overridden] + user


def trainer_config(spec: TrainingJobSpec) -> dict[str, Any]:
    """TRAINFORGE_CONFIG: spec.trainer, with the cadence from spec.checkpoint (which wins)
    in its `checkpoint` section, where the bundled trainer reads it."""
    config = dict(spec.trainer or {})
    if spec.checkpoint is not None:
        cadence = spec.checkpoint.model_dump(
            by_alias=True, exclude_none=True, include={"every_steps", "every_seconds", "keep_last"}
        )
        config["checkpoint"] = {**config.get("checkpoint", {}), **cadence}
    return config


def _nccl_env(spec: TrainingJobSpec) -> list[dict[str, Any]]:
    rdma = spec.network.rdma if spec.network else None
    if rdma is None:
        return []
    nccl = rdma.nccl
    settings = (
        ("NCCL_SOCKET_IFNAME", nccl.socket_if_name),
        ("NCCL_IB_HCA", nccl.ib_hca),
        ("NCCL_IB_GID_INDEX", nccl.gid_index),
        ("NCCL_NET_GDR_LEVEL", nccl.gdr_level),
        ("NCCL_DEBUG", nccl.debug),
    )
    return [env_var(name, value) for name, value in settings if value is not None]


def _container_resources(spec: TrainingJobSpec) -> dict[str, Any]:
    # Extended resources (GPUs, RDMA devices) cannot be overcommitted: requests = limits.
    extended: dict[str, str] = {}
    if spec.resources.gpus_per_worker:
        extended[spec.resources.gpu_resource] = str(spec.resources.gpus_per_worker)
    if spec.network and spec.network.rdma:
        extended.update(spec.network.rdma.resources)
    resources: dict[str, Any] = {}
    requests = {**spec.resources.requests, **extended}
    limits = {**spec.resources.limits, **extended}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return resources


def _trainer_container(
    job_name: str, spec: TrainingJobSpec, index: int, attempt: int, settings: RenderSettings
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": contract.CONTAINER_NAME,
        "image": spec.image or settings.default_image,
        "command": list(spec.command)
        if spec.command is not None
        else default_command(spec.effective_procs_per_worker),
    }
    if spec.args is not None:
        container["args"] = list(spec.args)
    container["env"] = worker_env(job_name, spec, index, attempt) + progress_env(
        settings.progress_url
    )  # live progress hook (render/progress.py)
    container["ports"] = [
        {"name": RENDEZVOUS_PORT_NAME, "containerPort": contract.DEFAULT_MASTER_PORT},
        {"name": METRICS_PORT_NAME, "containerPort": contract.DEFAULT_METRICS_PORT},
    ]
    resources = _container_resources(spec)
    if resources:
        container["resources"] = resources
    mounts = [{"name": SHM_VOLUME, "mountPath": contract.SHM_MOUNT}, security.scratch_mount()]
    if spec.checkpoint is not None:
        mounts.append({"name": CHECKPOINT_VOLUME, "mountPath": spec.checkpoint.mount_path})
    container["volumeMounts"] = mounts + progress_mount(settings.progress_url)
    rdma = spec.network.rdma if spec.network else None
    container["securityContext"] = security.container_security_context(
        ipc_lock=rdma is not None and rdma.ipc_lock
    )
    container["terminationMessagePath"] = contract.TERMINATION_MESSAGE_PATH
    # The trainer writes its progress record there; when it dies before writing one, the
    # tail of its log explains the failure instead.
    container["terminationMessagePolicy"] = "FallbackToLogsOnError"
    return container


def _volumes(job_name: str, spec: TrainingJobSpec) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {
            "name": SHM_VOLUME,
            "emptyDir": {"medium": "Memory", "sizeLimit": spec.resources.shared_memory},
        },
        security.scratch_volume(),
    ]
    checkpoint = spec.checkpoint
    if checkpoint is not None:
        claim = checkpoint.claim_name or checkpoint_pvc_name(job_name)
        volumes.append({"name": CHECKPOINT_VOLUME, "persistentVolumeClaim": {"claimName": claim}})
    return volumes


def _tolerations(spec: TrainingJobSpec) -> list[dict[str, Any]]:
    tolerations = [dict(toleration) for toleration in spec.scheduling.tolerations]
    if spec.resources.gpus_per_worker:
        gpu = {"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}
        if gpu not in tolerations:
            tolerations.append(gpu)
    return tolerations


def _affinity(job_name: str, spec: TrainingJobSpec, attempt: int) -> dict[str, Any] | None:
    affinity = dict(spec.scheduling.affinity) if spec.scheduling.affinity is not None else None
    # Only this attempt's workers attract or repel each other: terminating pods of the
    # previous attempt must neither pull the new gang to their rack nor keep it off a node.
    gang_pods = {
        "labelSelector": {
            "matchLabels": {
                contract.LABEL_JOB_NAME: job_name,
                contract.LABEL_RESTART_ATTEMPT: str(attempt),
            }
        }
    }
    if spec.scheduling.spread_workers:
        spread = {
            "podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {**gang_pods, "topologyKey": HOSTNAME_TOPOLOGY_KEY}
                ]
            }
        }
        affinity = merge(affinity or {}, spread)
    topology = spec.scheduling.topology
    # Under Kueue the topology is the Workload's request instead (render/kueue.py).
    if topology is not None and spec.scheduling.gang.policy != "Kueue":
        term = {**gang_pods, "topologyKey": topology.key}
        together = (
            {"requiredDuringSchedulingIgnoredDuringExecution": [term]}
            if topology.mode == "Required"
            else {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 100, "podAffinityTerm": term}
                ]
            }
        )
        affinity = merge(affinity or {}, {"podAffinity": together})
    return affinity


def _rdma_annotations(spec: TrainingJobSpec) -> dict[str, str]:
    rdma = spec.network.rdma if spec.network else None
    if rdma is None or not rdma.networks:
        return {}
    networks = [network.to_json() for network in rdma.networks]
    return {MULTUS_NETWORKS_ANNOTATION: json.dumps(networks, separators=(",", ":"))}


def worker_pod(
    job: JobRef, spec: TrainingJobSpec, index: int, attempt: int, settings: RenderSettings
) -> dict[str, Any]:
    """Worker `index` of restart attempt `attempt`: `<job>-worker-<index>`."""
    if not 0 <= index < spec.workers:
        raise ValueError(f"worker index {index} out of range for {spec.workers} workers")
    name = worker_pod_name(job.name, index)
    integration = gang(spec)
    group = pod_group_name(job.name)
    template = spec.pod_template
    # Operator-set keys win: the planner and the gang scheduler depend on them.
    labels = {
        **(template.metadata.labels if template else {}),
        **integration.labels(group, spec),
        **worker_labels(job.name, index, attempt),
    }
    annotations = {
        **(template.metadata.annotations if template else {}),
        **integration.annotations(group, spec),
        **_rdma_annotations(spec),
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "hostname": name,
        "subdomain": service_name(job.name),
        # Thousands of Services in a namespace would otherwise flood the environment.
        "enableServiceLinks": False,
        "securityContext": security.pod_security_context(),
        "containers": [_trainer_container(job.name, spec, index, attempt, settings)],
        "volumes": _volumes(job.name, spec) + progress_volume(settings.progress_url),
    }
    scheduling = spec.scheduling
    scheduler = integration.scheduler_name or scheduling.scheduler_name
    if scheduler is not None:
        pod_spec["schedulerName"] = scheduler
    if scheduling.priority_class_name is not None:
        pod_spec["priorityClassName"] = scheduling.priority_class_name
    if scheduling.node_selector:
        pod_spec["nodeSelector"] = dict(scheduling.node_selector)
    tolerations = _tolerations(spec)
    if tolerations:
        pod_spec["tolerations"] = tolerations
    affinity = _affinity(job.name, spec, attempt)
    if affinity:
        pod_spec["affinity"] = affinity
    if template is not None:
        pod_spec = merge(pod_spec, template.spec)
    return with_hash(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": child_metadata(job, name, labels, annotations),
            "spec": pod_spec,
        }
    )


def desired_children(
    job: JobRef, spec: TrainingJobSpec, attempt: int, settings: RenderSettings
) -> DesiredChildren:
    """All children of the job at restart attempt `attempt` (0 for the first run)."""
    return DesiredChildren(
        service=headless_service(job),
        pods=tuple(
            worker_pod(job, spec, index, attempt, settings) for index in range(spec.workers)
        ),
        checkpoint_pvc=checkpoint_pvc(job, spec),
        pod_group=pod_group(job, spec),
    )
