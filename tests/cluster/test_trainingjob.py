"""The TrainingJob operator against the real control plane: KWOK runs the pods, tests decide
how each worker ends (the `trainforge.test/exit-code` annotation, hack/cluster/kwok.yaml)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from kubetest import Cluster, Kubectl, Operator, start_operator, wait_for

WORKER_SELECTOR = "trainforge.io/job-name={job}"


def job_manifest(name: str, workers: int = 2, gpus: int = 8, cpu: str = "1", **spec: Any) -> str:
    body: dict[str, Any] = {
        "workers": workers,
        "image": "example.com/trainer:1",
        "resources": {"gpusPerWorker": gpus, "requests": {"cpu": cpu, "memory": "1Gi"}},
        **spec,
    }
    return yaml.safe_dump(
        {
            "apiVersion": "trainforge.io/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": name},
            "spec": body,
        }
    )


def get_job(kubectl: Kubectl, ns: str, name: str) -> dict[str, Any]:
    return json.loads(kubectl("get", "trainingjob", name, "-n", ns, "-o", "json").stdout)


def worker_pods(kubectl: Kubectl, ns: str, job: str) -> list[dict[str, Any]]:
    out = kubectl("get", "pods", "-n", ns, "-l", WORKER_SELECTOR.format(job=job), "-o", "json")
    return sorted(json.loads(out.stdout)["items"], key=lambda p: p["metadata"]["name"])


def apply(kubectl: Kubectl, namespace: str, manifest: str) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=manifest)


def running(kubectl: Kubectl, ns: str, job: str) -> list[dict[str, Any]]:
    return [p for p in worker_pods(kubectl, ns, job) if p["status"].get("phase") == "Running"]


def condition(job: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in job.get("status", {}).get("conditions", []) if c["type"] == type_), {})


def wait_phase(kubectl: Kubectl, ns: str, name: str, phase: str, timeout: float = 60) -> dict:
    wait_for(
        lambda: get_job(kubectl, ns, name).get("status", {}).get("phase") == phase,
        f"TrainingJob {name} to reach phase {phase}",
        timeout=timeout,
    )
    return get_job(kubectl, ns, name)


def running_workers(
    kubectl: Kubectl, ns: str, job: str, count: int, attempt: int = 0
) -> list[dict[str, Any]]:
    def ready() -> list[dict[str, Any]] | None:
        pods = [
            p
            for p in worker_pods(kubectl, ns, job)
            if p["metadata"]["labels"]["trainforge.io/restart-attempt"] == str(attempt)
            and p["status"].get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")
        ]
        return pods if len(pods) == count else None

    return wait_for(ready, f"{count} running workers of {job} (attempt {attempt})")  # type: ignore[return-value]


def end_pod(
    kubectl: Kubectl, ns: str, pod: str, exit_code: int, message: dict[str, Any] | None = None
) -> None:
    args = [f"trainforge.test/exit-code={exit_code}"]
    if message is not None:
        args.append(f"trainforge.test/termination-message={json.dumps(message)}")
    kubectl("annotate", "pod", pod, "-n", ns, *args, "--overwrite")


def test_two_worker_gpu_job_succeeds(operator: Operator, kubectl: Kubectl, namespace: str) -> None:
    apply(
        kubectl,
        namespace,
        job_manifest("llm", checkpoint={"volumeClaimTemplate": {"size": "10Gi"}}),
    )
    pods = running_workers(kubectl, namespace, "llm", 2)

    assert [p["metadata"]["name"] for p in pods] == ["llm-worker-0", "llm-worker-1"]
    for pod in pods:
        assert pod["spec"]["nodeName"].startswith("kwok-gpu-")
        limits = pod["spec"]["containers"][0]["resources"]["limits"]
        assert str(limits["nvidia.com/gpu"]) == "8"
        owner = pod["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["controller"]) == ("TrainingJob", "llm", True)
    service = json.loads(kubectl("get", "service", "llm", "-n", namespace, "-o", "json").stdout)
    assert service["spec"]["clusterIP"] == "None"
    kubectl("get", "pvc", "llm-checkpoints", "-n", namespace)
    job = wait_phase(kubectl, namespace, "llm", "Running")
    assert condition(job, "Running")["status"] == "True"
    assert condition(job, "Ready")["status"] == "True"

    for i, pod in enumerate(pods):
        end_pod(
            kubectl,
            namespace,
            pod["metadata"]["name"],
            0,
            {
                "step": 100,
                "totalSteps": 100,
                "loss": 1.25,
                "checkpoint": {
                    "step": 100,
                    "path": "/checkpoints/step-00000100",
                    "time": "2026-11-23T00:00:00Z",
                },
            }
            if i == 0
            else None,
        )
    kubectl(
        "wait",
        "--for=condition=Succeeded",
        "trainingjob/llm",
        "-n",
        namespace,
        "--timeout=60s",
        timeout=70,
    )
    job = get_job(kubectl, namespace, "llm")
    assert job["status"]["phase"] == "Succeeded"
    assert job["status"]["workers"]["succeeded"] == 2
    assert job["status"]["checkpoint"]["step"] == 100
    assert job["status"]["progress"]["step"] == 100
    assert job["status"]["completionTime"]
    assert job["status"]["observedGeneration"] == job["metadata"]["generation"]
    assert condition(job, "Stalled")["status"] == "False"


def test_retryable_failure_restarts_the_whole_gang(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    apply(kubectl, namespace, job_manifest("flaky", failurePolicy={"maxRestarts": 3}))
    first = running_workers(kubectl, namespace, "flaky", 2, attempt=0)
    end_pod(kubectl, namespace, "flaky-worker-1", 1)

    second = running_workers(kubectl, namespace, "flaky", 2, attempt=1)
    assert {p["metadata"]["uid"] for p in second}.isdisjoint({p["metadata"]["uid"] for p in first})
    env = {e["name"]: e.get("value") for e in second[0]["spec"]["containers"][0]["env"]}
    assert env["TRAINFORGE_RESTART_ATTEMPT"] == "1"
    assert get_job(kubectl, namespace, "flaky")["status"]["restarts"] == 1

    for pod in second:
        end_pod(kubectl, namespace, pod["metadata"]["name"], 0)
    job = wait_phase(kubectl, namespace, "flaky", "Succeeded")
    assert job["status"]["restarts"] == 1
    events = kubectl(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        "involvedObject.name=flaky",
        "-o",
        "json",
    ).stdout
    assert "GangRestarted" in events


def test_non_finite_progress_from_a_worker_never_freezes_the_job(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    """A diverged loss (NaN) and a checkpoint record without a path, as a worker might report
    them: the gang still restarts and the job still succeeds, with what was valid in status."""
    apply(kubectl, namespace, job_manifest("diverged", failurePolicy={"maxRestarts": 3}))
    running_workers(kubectl, namespace, "diverged", 2, attempt=0)
    end_pod(
        kubectl,
        namespace,
        "diverged-worker-0",
        1,
        {"step": 50, "loss": float("nan"), "samplesPerSecond": float("inf"), "checkpoint": {}},
    )
    second = running_workers(kubectl, namespace, "diverged", 2, attempt=1)
    status = get_job(kubectl, namespace, "diverged")["status"]
    # Only the valid step (and updatedAt, the operator's stamp of when it changed).
    assert {k: v for k, v in status["progress"].items() if k != "updatedAt"} == {"step": 50}
    assert "checkpoint" not in status

    for i, pod in enumerate(second):
        end_pod(
            kubectl,
            namespace,
            pod["metadata"]["name"],
            0,
            {"step": 100, "loss": float("-inf"), "checkpoint": {"step": 100}}
            if i
            else {"step": 100, "checkpoint": {"step": 100, "path": "/checkpoints/step-00000100"}},
        )
    job = wait_phase(kubectl, namespace, "diverged", "Succeeded")
    assert job["status"]["progress"]["step"] == 100
    assert "loss" not in job["status"]["progress"]
    assert job["status"]["checkpoint"] == {"step": 100, "path": "/checkpoints/step-00000100"}


def test_failures_beyond_max_restarts_fail_for_good(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    apply(kubectl, namespace, job_manifest("doomed", workers=1, failurePolicy={"maxRestarts": 1}))
    for attempt in (0, 1):
        running_workers(kubectl, namespace, "doomed", 1, attempt=attempt)
        end_pod(kubectl, namespace, "doomed-worker-0", 2)
    job = wait_phase(kubectl, namespace, "doomed", "Failed")
    assert condition(job, "Failed")["reason"] == "MaxRestartsExceeded"
    assert condition(job, "Stalled")["status"] == "True"
    assert job["status"]["restarts"] == 1

    # Sticky: several resyncs later (every 5 s in tests), still no new pod.
    time.sleep(12)
    assert all(p["status"]["phase"] == "Failed" for p in worker_pods(kubectl, namespace, "doomed"))
    assert get_job(kubectl, namespace, "doomed")["status"]["phase"] == "Failed"


def test_exit_code_in_fail_on_exit_codes_fails_at_once(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    apply(
        kubectl,
        namespace,
        job_manifest("oom", failurePolicy={"maxRestarts": 5, "failOnExitCodes": [42]}),
    )
    running_workers(kubectl, namespace, "oom", 2)
    end_pod(kubectl, namespace, "oom-worker-0", 42)
    job = wait_phase(kubectl, namespace, "oom", "Failed")
    assert condition(job, "Failed")["reason"] == "FailOnExitCode"
    assert job["status"]["restarts"] == 0
    # The surviving worker is stopped so its GPUs are freed.
    wait_for(lambda: not running(kubectl, namespace, "oom"), "the other worker to be deleted")


def test_disruption_restarts_without_counting(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    apply(kubectl, namespace, job_manifest("preempted", failurePolicy={"maxRestarts": 0}))
    running_workers(kubectl, namespace, "preempted", 2)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    kubectl(
        "patch",
        "pod",
        "preempted-worker-0",
        "-n",
        namespace,
        "--subresource=status",
        "--type=strategic",
        "-p",
        json.dumps(
            {
                "status": {
                    "phase": "Failed",
                    "conditions": [
                        {
                            "type": "DisruptionTarget",
                            "status": "True",
                            "reason": "PreemptionByScheduler",
                            "lastTransitionTime": now,
                            "message": "preempted by a higher-priority pod",
                        }
                    ],
                }
            }
        ),
    )
    running_workers(kubectl, namespace, "preempted", 2, attempt=1)
    job = get_job(kubectl, namespace, "preempted")
    assert job["status"]["restarts"] == 0
    assert job["status"]["phase"] != "Failed"


def test_suspend_deletes_workers_and_resume_recreates(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    apply(kubectl, namespace, job_manifest("pausable"))
    running_workers(kubectl, namespace, "pausable", 2)
    kubectl(
        "patch",
        "trainingjob",
        "pausable",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec": {"suspend": true}}',
    )
    wait_for(lambda: not worker_pods(kubectl, namespace, "pausable"), "workers to be deleted")
    job = wait_phase(kubectl, namespace, "pausable", "Suspended")
    assert condition(job, "Suspended")["status"] == "True"

    kubectl(
        "patch",
        "trainingjob",
        "pausable",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec": {"suspend": false}}',
    )
    running_workers(kubectl, namespace, "pausable", 2)
    assert (
        condition(wait_phase(kubectl, namespace, "pausable", "Running"), "Suspended")["status"]
        == "False"
    )


def test_active_deadline_fails_the_job(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    apply(kubectl, namespace, job_manifest("slow", activeDeadlineSeconds=3))
    job = wait_phase(kubectl, namespace, "slow", "Failed", timeout=30)
    assert condition(job, "Failed")["reason"] == "DeadlineExceeded"
    wait_for(lambda: not running(kubectl, namespace, "slow"), "workers to be stopped")


def test_ttl_after_finished_deletes_the_job(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    apply(kubectl, namespace, job_manifest("shortlived", workers=1, ttlSecondsAfterFinished=2))
    running_workers(kubectl, namespace, "shortlived", 1)
    end_pod(kubectl, namespace, "shortlived-worker-0", 0)
    wait_for(
        lambda: (
            kubectl("get", "trainingjob", "shortlived", "-n", namespace, check=False).returncode
            != 0
        ),
        "the finished job to be deleted",
        timeout=30,
    )


def test_unschedulable_gang_reports_the_schedulers_message(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    apply(
        kubectl, namespace, job_manifest("huge", workers=8, gpus=8)
    )  # 64 GPUs; the cluster has 32

    def unschedulable() -> dict[str, Any]:
        return condition(get_job(kubectl, namespace, "huge"), "Unschedulable")

    cond = wait_for(
        lambda: unschedulable().get("status") == "True" and unschedulable(),
        "the Unschedulable condition",
    )
    assert "Insufficient nvidia.com/gpu" in cond["message"]  # type: ignore[index]
    assert get_job(kubectl, namespace, "huge")["status"]["phase"] == "Pending"


def test_missing_network_attachment_stalls_with_a_fix(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    apply(
        kubectl,
        namespace,
        job_manifest(
            "rdma",
            network={
                "rdma": {
                    "networks": [{"name": "rail-0"}],
                    "resources": {"rdma/rdma_shared_device_a": 1},
                }
            },
        ),
    )

    def stalled() -> dict[str, Any]:
        return condition(get_job(kubectl, namespace, "rdma"), "Stalled")

    wait_for(lambda: stalled().get("status") == "True", "the Stalled condition")
    assert "spec.network.rdma.networks[0]" in stalled()["message"]
    assert f"{namespace}/rail-0" in stalled()["message"]
    assert worker_pods(kubectl, namespace, "rdma") == []

    kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=yaml.safe_dump(
            {
                "apiVersion": "k8s.cni.cncf.io/v1",
                "kind": "NetworkAttachmentDefinition",
                "metadata": {"name": "rail-0"},
                "spec": {"config": '{"cniVersion": "0.3.1"}'},
            }
        ),
    )
    pods = running_workers(kubectl, namespace, "rdma", 2)
    networks = json.loads(pods[0]["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"])
    assert networks[0]["name"] == "rail-0"
    assert stalled()["status"] == "False"


def test_operator_killed_mid_gang_converges(
    cluster: Cluster, kubectl: Kubectl, namespace: str, tmp_path: Path, operator: Operator
) -> None:
    """SIGKILL while a 40-worker gang is being created; a new operator finishes the job with
    exactly one pod per worker index."""
    operator.kill()
    try:
        apply(kubectl, namespace, job_manifest("big", workers=40, gpus=0, cpu="100m"))
        first = start_operator(cluster.kubeconfig, tmp_path / "first.log", "--workers=1")
        wait_for(
            lambda: len(worker_pods(kubectl, namespace, "big")) >= 3,
            "the first pods",
            timeout=60,
            interval=0.05,
        )
        first.kill()
        created = len(worker_pods(kubectl, namespace, "big"))
        second = start_operator(cluster.kubeconfig, tmp_path / "second.log")
        try:
            running_workers(kubectl, namespace, "big", 40)
            pods = worker_pods(kubectl, namespace, "big")
            indexes = sorted(
                int(p["metadata"]["labels"]["trainforge.io/worker-index"]) for p in pods
            )
            assert indexes == list(range(40)), f"had {created} pods at the kill"
            wait_phase(kubectl, namespace, "big", "Running")
            assert "Traceback" not in second.logs()
        finally:
            second.stop()
    finally:
        restarted = start_operator(cluster.kubeconfig, operator.log)
        operator.process = restarted.process
        operator.metrics_port = restarted.metrics_port
