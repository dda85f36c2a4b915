"""Helpers of the real-node tests: the operator installed by its chart, TrainingJobs, the
checkpoint volume as the node sees it, and `kubectl port-forward`."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kubetest import REPO, Kubectl, wait_for


@dataclass(frozen=True)
class Images:
    pause: str
    base: str
    operator: str
    trainer: str


def built_images() -> Images:
    """The images images.sh built (it is cached: this only reads the tags when nothing changed)."""
    out = subprocess.run(
        ["bash", str(REPO / "hack/cluster/images.sh")], capture_output=True, text=True
    )
    assert out.returncode == 0, f"images.sh failed:\n{out.stderr[-4000:]}"
    refs = {}
    for line in out.stdout.splitlines():
        name, archive = line.split()
        refs[name] = Path(archive).with_suffix(".ref").read_text().strip()
    base = subprocess.run(
        [
            "buildah",
            "images",
            "--format",
            "{{.Name}}:{{.Tag}}",
            "--filter",
            "reference=localhost/trainforge/python-base",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return Images(
        pause=refs["pause"], base=base[0], operator=refs["operator"], trainer=refs["trainer"]
    )


def run_pod(
    kubectl: Kubectl,
    ns: str,
    name: str,
    image: str,
    *,
    command: list[str] | None = None,
    args: list[str] | None = None,
    timeout: float = 180,
) -> tuple[str, dict]:
    """Run one container to completion on the real node: (its logs, its terminated state)."""
    container: dict = {"name": "main", "image": image}
    if command is not None:
        container["command"] = command
    if args is not None:
        container["args"] = args
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [container]},
    }
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pod))

    def finished() -> dict | None:
        status = json.loads(kubectl("get", "pod", name, "-n", ns, "-o", "json").stdout)["status"]
        states = status.get("containerStatuses") or [{}]
        return states[0].get("state", {}).get("terminated")

    terminated = wait_for(finished, f"pod {name} to finish", timeout=timeout)
    logs = kubectl("logs", "-n", ns, name).stdout
    assert isinstance(terminated, dict)
    return logs, terminated


JOB_SELECTOR = "trainforge.io/job-name={job}"


def training_job(name: str, *, steps: int, every: int, **spec: Any) -> str:
    """A small CPU job of the bundled trainer: 2 workers (gloo), the MLP recipe, checkpoints
    on a claim the operator creates (bound to one of the node's hostPath volumes)."""
    body: dict[str, Any] = {
        "workers": 2,
        "trainer": {"recipe": "mlp", "maxSteps": steps},
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "sharedMemory": "64Mi"},
        "checkpoint": {
            "volumeClaimTemplate": {"size": "1Gi", "accessModes": ["ReadWriteOnce"]},
            "everySteps": every,
            "keepLast": 2,
        },
        "failurePolicy": {"maxRestarts": 2},
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


def get(kubectl: Kubectl, ns: str, kind: str, name: str) -> dict[str, Any]:
    return json.loads(kubectl("get", kind, name, "-n", ns, "-o", "json").stdout)


def status(kubectl: Kubectl, ns: str, name: str) -> dict[str, Any]:
    return get(kubectl, ns, "trainingjob", name).get("status", {})


def wait_phase(kubectl: Kubectl, ns: str, name: str, phase: str, timeout: float) -> dict:
    def reached() -> dict | None:
        current = status(kubectl, ns, name)
        if current.get("phase") == phase:
            return current
        if current.get("phase") in {"Succeeded", "Failed"}:
            raise AssertionError(
                f"TrainingJob {name} ended {current['phase']} instead of {phase}:\n"
                f"{json.dumps(current, indent=1)}\n{describe_pods(kubectl, ns)}"
            )
        return None

    try:
        return wait_for(reached, f"TrainingJob {name} to reach {phase}", timeout, interval=1)  # type: ignore[return-value]
    except AssertionError as e:
        if "timed out" in str(e):
            raise AssertionError(
                f"{e}\nstatus: {json.dumps(status(kubectl, ns, name), indent=1)}\n"
                f"{describe_pods(kubectl, ns)}"
            ) from None
        raise


def describe_pods(kubectl: Kubectl, ns: str) -> str:
    pods = kubectl("get", "pods", "-n", ns, "-o", "wide", check=False).stdout
    events = kubectl("get", "events", "-n", ns, "--sort-by=.lastTimestamp", check=False).stdout
    return f"pods:\n{pods}\nevents:\n{events[-3000:]}"


def workers(kubectl: Kubectl, ns: str, job: str) -> list[dict[str, Any]]:
    out = kubectl("get", "pods", "-n", ns, "-l", JOB_SELECTOR.format(job=job), "-o", "json")
    return sorted(json.loads(out.stdout)["items"], key=lambda p: p["metadata"]["name"])


def volume_dir(kubectl: Kubectl, ns: str, claim: str) -> Path:
    """The host directory of the PersistentVolume bound to `claim` (a hostPath volume)."""

    def volume_name() -> str | None:
        # The operator creates the claim when it first reconciles the job.
        out = kubectl("get", "pvc", claim, "-n", ns, "-o", "json", check=False)
        return json.loads(out.stdout)["spec"].get("volumeName") if out.returncode == 0 else None

    bound = wait_for(volume_name, f"claim {claim} to bind")
    pv = json.loads(kubectl("get", "pv", str(bound), "-o", "json").stdout)
    return Path(pv["spec"]["hostPath"]["path"])


def committed_steps(directory: Path) -> list[int]:
    return sorted(
        int(p.name.removeprefix("step-"))
        for p in directory.glob("step-*")
        if re.fullmatch(r"step-\d{8}", p.name)
    )


def log_events(kubectl: Kubectl, ns: str, pod: str, event: str) -> list[dict[str, Any]]:
    """The trainer's JSON log lines named `event`, from a pod's logs."""
    out = kubectl("logs", "-n", ns, pod, check=False).stdout
    lines = []
    for line in out.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == event:
                lines.append(record)
    return lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def port_forward(kubeconfig: Path, ns: str, target: str, remote: int) -> Iterator[int]:
    """`kubectl port-forward` on loopback: the only way the tests reach a pod or Service."""
    local = free_port()
    proc = subprocess.Popen(
        [
            "kubectl",
            f"--kubeconfig={kubeconfig}",
            "port-forward",
            "--address=127.0.0.1",
            "-n",
            ns,
            target,
            f"{local}:{remote}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", local), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None:
                    raise AssertionError(f"port-forward ended: {proc.stdout.read()}") from None  # type: ignore[union-attr]
                time.sleep(0.2)
        yield local
    finally:
        proc.terminate()
        proc.wait(timeout=10)
