"""The operator installed by its chart on the real node, running TrainingJobs whose workers
really run the trainer image: rendezvous through the headless Service's DNS names (CoreDNS),
gloo, checkpoints on a PersistentVolume, a worker killed for real, a graceful delete, and an
image that cannot start."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from realnode_helpers import (
    committed_steps,
    log_events,
    status,
    training_job,
    volume_dir,
    wait_phase,
    workers,
)

from kubetest import Cluster, Kubectl, wait_for

# The session's first test also waits for the real node and any image rebuild.
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]


def test_two_workers_rendezvous_by_dns_train_and_checkpoint_to_the_volume(
    operator_release: str, real_kubectl: Kubectl, real_namespace: str
) -> None:
    ns = real_namespace
    real_kubectl("apply", "-n", ns, "-f", "-", input=training_job("mlp", steps=200, every=50))
    done = wait_phase(real_kubectl, ns, "mlp", "Succeeded", timeout=300)
    assert done["restarts"] == 0
    assert done["checkpoint"]["step"] == 200, done
    assert done["workers"]["succeeded"] == 2, done
    # Rank 1 found rank 0 by the headless Service's DNS name (MASTER_ADDR).
    pods = workers(real_kubectl, ns, "mlp")
    env = {e["name"]: e.get("value") for e in pods[1]["spec"]["containers"][0]["env"]}
    assert env["MASTER_ADDR"].startswith("mlp-worker-0.mlp"), env["MASTER_ADDR"]
    volume = volume_dir(real_kubectl, ns, "mlp-checkpoints")
    assert committed_steps(volume) == [150, 200]  # keepLast 2
    assert (volume / "latest").read_text().strip() == "step-00000200"
    assert (volume / "step-00000200" / "manifest.json").is_file()


def container_id(pod: dict) -> str:
    return pod["status"]["containerStatuses"][0]["containerID"].removeprefix("containerd://")


def test_sigkilled_worker_restarts_the_gang_which_resumes_from_its_checkpoint(
    operator_release: str, real_cluster: Cluster, real_kubectl: Kubectl, real_namespace: str
) -> None:
    ns = real_namespace
    real_kubectl("apply", "-n", ns, "-f", "-", input=training_job("kill", steps=1000, every=100))
    volume = volume_dir(real_kubectl, ns, "kill-checkpoints")
    wait_for(lambda: committed_steps(volume), "a first committed checkpoint", timeout=240)
    victim = workers(real_kubectl, ns, "kill")[1]
    # SIGKILL of the container's process, as the kernel's OOM killer would do it.
    # The real node's containerd (hack/cluster/node.py writes its socket into the lock file).
    socket = json.loads(Path("/run/trainforge-real-node.lock").read_text())["containerd_socket"]
    subprocess.run(
        [
            "ctr",
            f"--address={socket}",
            "-n",
            "k8s.io",
            "tasks",
            "kill",
            "-s",
            "SIGKILL",
            container_id(victim),
        ],
        check=True,
        capture_output=True,
    )
    wait_for(
        lambda: status(real_kubectl, ns, "kill").get("restarts") == 1,
        "the gang restart after the SIGKILL",
        timeout=60,
    )
    done = wait_phase(real_kubectl, ns, "kill", "Succeeded", timeout=300)
    assert done["restarts"] == 1, done
    assert done["checkpoint"]["step"] == 1000
    pods = workers(real_kubectl, ns, "kill")
    assert {p["metadata"]["labels"]["trainforge.io/restart-attempt"] for p in pods} == {"1"}
    resumed = log_events(real_kubectl, ns, pods[0]["metadata"]["name"], "resumed")
    assert resumed and resumed[0]["step"] > 0, resumed
    print(f"resumed from step {resumed[0]['step']}")


def test_graceful_delete_checkpoints_exits_143_and_is_not_counted(
    operator_release: str, real_kubectl: Kubectl, real_namespace: str
) -> None:
    ns = real_namespace
    real_kubectl("apply", "-n", ns, "-f", "-", input=training_job("term", steps=1000, every=400))
    volume = volume_dir(real_kubectl, ns, "term-checkpoints")

    def training() -> bool:
        pods = workers(real_kubectl, ns, "term")
        return len(pods) == 2 and any(
            e["step"] >= 30
            for e in log_events(real_kubectl, ns, pods[1]["metadata"]["name"], "progress")
        )

    wait_for(training, "worker 1 to train 30 steps", timeout=240, interval=1)
    victim_pod = workers(real_kubectl, ns, "term")[1]
    victim, victim_uid = victim_pod["metadata"]["name"], victim_pod["metadata"]["uid"]
    # Poll the pod while it terminates: its container's exit code is the trainer's.
    real_kubectl("delete", "pod", "-n", ns, victim, "--wait=false")
    exit_codes: list[int] = []

    def terminated() -> bool:
        out = real_kubectl("get", "pod", "-n", ns, victim, "-o", "json", check=False)
        if out.returncode != 0:
            return True  # gone
        pod = json.loads(out.stdout)
        if pod["metadata"]["uid"] != victim_uid:
            return True  # gone, and the restarted gang's worker has its name
        for cs in pod["status"].get("containerStatuses", []):
            state = cs.get("state", {}).get("terminated")
            if state:
                exit_codes.append(state["exitCode"])
        return False

    wait_for(terminated, f"{victim} to stop", timeout=90, interval=0.2)
    first_save = committed_steps(volume)
    assert first_save and first_save[0] % 400 != 0, (
        f"no SIGTERM checkpoint between the periodic ones: {first_save}"
    )
    if exit_codes:
        assert exit_codes[-1] == 143, exit_codes
    done = wait_phase(real_kubectl, ns, "term", "Succeeded", timeout=300)
    assert done["restarts"] == 0, done


def test_a_job_whose_image_cannot_start_says_why(
    operator_release: str, real_kubectl: Kubectl, real_namespace: str
) -> None:
    ns = real_namespace
    real_kubectl(
        "apply",
        "-n",
        ns,
        "-f",
        "-",
        input=training_job(
            "noimage", steps=10, every=5, image="localhost/trainforge/no-such-image:1"
        ),
    )

    def named() -> str:
        conditions = status(real_kubectl, ns, "noimage").get("conditions", [])
        text = " ".join(f"{c.get('reason', '')} {c.get('message', '')}" for c in conditions)
        return text if ("ImagePull" in text or "ErrImage" in text) else ""

    text = wait_for(named, "a condition naming the image pull failure", timeout=120)
    assert "no-such-image" in str(text), text
