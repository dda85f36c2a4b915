"""What GitOps tools and Prometheus see of a running operator, against the real control plane.

One operator (watching one namespace) takes a set of TrainingJobs and InferenceServices,
applied as a GitOps tool applies them (server-side apply, field manager "gitops"), to every
state a health check must tell apart: running, pending, succeeded, failed, stalled, ready.
Then: re-applying the same manifests changes nothing (the operator writes only status); the
Argo CD health checks in docs/ read the live objects right; a real Prometheus scrapes the
operator's metrics.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_argocd_health import health

from kubetest import Cluster, Kubectl, Operator, free_port, start_operator, wait_for

pytestmark = pytest.mark.cluster

GITOPS = "--field-manager=gitops"


def trainingjob(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "trainforge.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "labels": {"team": "ml"}, "annotations": {"git/sha": "abc"}},
        "spec": {
            "workers": 1,
            "image": "example.com/trainer:1",
            "resources": {"gpusPerWorker": 1, "requests": {"cpu": "100m"}},
            **spec,
        },
    }


def training_runtime(name: str, **template: Any) -> dict[str, Any]:
    """A platform team's runtime, kept in the same Git repository as the jobs."""
    return {
        "apiVersion": "trainforge.io/v1alpha1",
        "kind": "TrainingRuntime",
        "metadata": {"name": name, "labels": {"team": "ml"}, "annotations": {"git/sha": "abc"}},
        "spec": {"template": template, "locked": ["image"]},
    }


def job_on_runtime(name: str, runtime: str, **spec: Any) -> dict[str, Any]:
    """A job that names its runtime and says only what it trains."""
    return {
        "apiVersion": "trainforge.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "labels": {"team": "ml"}, "annotations": {"git/sha": "abc"}},
        "spec": {"runtimeRef": {"kind": "TrainingRuntime", "name": runtime}, **spec},
    }


def inferenceservice(name: str, claim: str) -> dict[str, Any]:
    return {
        "apiVersion": "trainforge.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name, "labels": {"team": "ml"}, "annotations": {"git/sha": "abc"}},
        "spec": {
            "model": {"claimName": claim, "name": "mlp"},
            "image": "example.com/server:1",
            "replicas": 1,
            "resources": {"requests": {"cpu": "100m"}},
        },
    }


# The Git repository: one object per state. Workers of "succeeded" and "failed" are ended by
# the test (KWOK's trainforge.test/exit-code annotation); "failed" may not restart.
MANIFESTS = [
    trainingjob("running"),
    trainingjob("pending", resources={"gpusPerWorker": 16}),  # no node has 16 GPUs
    trainingjob("succeeded"),
    trainingjob("failed", failurePolicy={"maxRestarts": 0}),
    trainingjob("stalled", network={"rdma": {"networks": [{"name": "missing-rail"}]}}),
    inferenceservice("ready", claim="checkpoints"),
    inferenceservice("unservable", claim="missing-claim"),
    training_runtime(
        "platform",
        image="example.com/trainer:1",
        resources={"gpusPerWorker": 1, "requests": {"cpu": "100m"}},
        env=[{"name": "TEAM", "value": "platform"}],
    ),
    job_on_runtime("on-runtime", "platform", trainer={"maxSteps": 10}),
]


def key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def get(kubectl: Kubectl, ns: str, kind: str, name: str) -> dict[str, Any]:
    return dict(json.loads(kubectl("get", kind, name, "-n", ns, "-o", "json").stdout))


def condition(obj: dict[str, Any], type_: str) -> str:
    conditions = obj.get("status", {}).get("conditions", [])
    return next((c["status"] for c in conditions if c["type"] == type_), "")


def phase(obj: dict[str, Any]) -> str:
    return str(obj.get("status", {}).get("phase", ""))


@pytest.fixture(scope="module")
def ns(kubectl: Kubectl) -> Iterator[str]:
    name = f"gitops-{uuid.uuid4().hex[:5]}"
    kubectl("create", "namespace", name)
    wait_for(
        lambda: kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
        f"the default ServiceAccount of {name}",
    )
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, ns: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    op = start_operator(
        cluster.kubeconfig,
        tmp_path_factory.mktemp("operator") / "operator.log",
        f"--namespace={ns}",
    )
    yield op
    op.stop()
    assert "Traceback" not in op.logs(), op.logs()[-5000:]


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("git") / "objects.yaml"
    path.write_text(yaml.safe_dump_all(MANIFESTS))
    return path


def end_worker(kubectl: Kubectl, ns: str, job: str, code: int) -> None:
    pod = f"{job}-worker-0"
    wait_for(
        lambda: (
            json.loads(
                kubectl("get", "pod", pod, "-n", ns, "-o", "json", check=False).stdout or "{}"
            )
            .get("status", {})
            .get("phase")
            == "Running"
        ),
        f"{pod} to run",
    )
    kubectl("annotate", "pod", pod, "-n", ns, f"trainforge.test/exit-code={code}")


@pytest.fixture(scope="module")
def live(
    operator: Operator, kubectl: Kubectl, ns: str, manifests: Path
) -> dict[tuple[str, str], Any]:
    """Applies the manifests as a GitOps tool does, drives every object to its state, and
    returns the live objects (as `kubectl get -o json` shows them), keyed by (kind, name)."""
    # The claim is not part of the GitOps set: binding writes its spec.volumeName.
    kubectl(
        "apply", "-n", ns, "-f", "-",
        input=yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "checkpoints"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            }
        ),
    )  # fmt: skip
    kubectl("apply", "--server-side", GITOPS, "-n", ns, "-f", str(manifests))
    end_worker(kubectl, ns, "succeeded", 0)
    end_worker(kubectl, ns, "failed", 3)
    expected = {
        ("TrainingJob", "running"): lambda o: phase(o) == "Running",
        ("TrainingJob", "pending"): lambda o: condition(o, "Unschedulable") == "True",
        ("TrainingJob", "succeeded"): lambda o: phase(o) == "Succeeded",
        ("TrainingJob", "failed"): lambda o: phase(o) == "Failed",
        ("TrainingJob", "stalled"): lambda o: condition(o, "Stalled") == "True",
        ("InferenceService", "ready"): lambda o: condition(o, "Ready") == "True",
        ("InferenceService", "unservable"): lambda o: condition(o, "Stalled") == "True",
        ("TrainingJob", "on-runtime"): lambda o: phase(o) == "Running",
        ("TrainingRuntime", "platform"): lambda o: True,
    }
    objects: dict[tuple[str, str], Any] = {}
    for (kind, name), reached in expected.items():

        def current() -> dict[str, Any] | None:
            obj = get(kubectl, ns, kind, name)  # noqa: B023 - called within this iteration
            return obj if reached(obj) else None  # noqa: B023

        objects[kind, name] = wait_for(current, f"{kind} {name} to reach its state")
    return objects


# --- GitOps: no drift ----------------------------------------------------------------------------


def test_reapplying_the_manifests_changes_nothing(
    kubectl: Kubectl, ns: str, manifests: Path, live: dict[tuple[str, str], Any]
) -> None:
    """What Argo CD / Flux do on every sync: a server-side apply of the same manifests, with
    their field manager. The operator wrote only status, so spec, labels, annotations and
    generation come back unchanged, and `kubectl diff` (the same dry run) finds nothing."""
    out = kubectl(
        "apply", "--server-side", "--dry-run=server", GITOPS, "-n", ns, "-f", str(manifests),
        "-o", "json",
    ).stdout  # fmt: skip
    applied = json.loads(out)
    items = applied["items"] if applied.get("kind") == "List" else [applied]
    assert sorted(map(key, items)) == sorted(map(key, MANIFESTS))
    for dry in items:
        current = get(kubectl, ns, *key(dry))
        for field in ("labels", "annotations", "generation", "finalizers"):
            assert dry["metadata"].get(field) == current["metadata"].get(field), (key(dry), field)
        assert dry["spec"] == current["spec"], key(dry)
        # The operator adds no labels or annotations of its own.
        wanted = next(m for m in MANIFESTS if key(m) == key(dry))["metadata"]
        assert current["metadata"]["labels"] == wanted["labels"]
        assert set(current["metadata"].get("annotations", {})) == set(wanted["annotations"])
        # Only the gitops manager owns spec fields; the operator's writes are status only.
        fields = kubectl(
            "get",
            *key(dry),
            "-n",
            ns,
            "--show-managed-fields",
            "-o",
            "jsonpath={.metadata.managedFields}",
        ).stdout
        for entry in json.loads(fields):
            if entry["manager"] != "gitops":
                assert entry.get("subresource") == "status", entry

    diff = kubectl("diff", "--server-side", GITOPS, "-n", ns, "-f", str(manifests), check=False)
    assert diff.returncode == 0, diff.stdout + diff.stderr
    # ... while a real change in Git does show (exit code 1: differences found).
    relabelled = trainingjob("running")
    relabelled["metadata"]["labels"]["team"] = "research"
    changed = manifests.with_name("changed.yaml")
    changed.write_text(yaml.safe_dump(relabelled))
    diff = kubectl("diff", "--server-side", GITOPS, "-n", ns, "-f", str(changed), check=False)
    assert diff.returncode == 1 and "+    team: research" in diff.stdout, diff.stdout + diff.stderr


def test_a_job_on_a_runtime_from_git_runs_the_runtimes_spec(
    live: dict[tuple[str, str], Any],
) -> None:
    status = live["TrainingJob", "on-runtime"]["status"]
    assert status["runtime"]["name"] == "platform"
    effective = status["effectiveSpec"]
    assert effective["image"] == "example.com/trainer:1"
    assert effective["resources"]["gpusPerWorker"] == 1
    assert effective["trainer"] == {"maxSteps": 10}
    assert condition(live["TrainingJob", "on-runtime"], "Ready") == "True"


# --- Argo CD health of the live objects ----------------------------------------------------------

LUA = shutil.which("lua5.4")

# Argo CD's health status and a part of its message (the operator's own words).
HEALTH = {
    ("TrainingJob", "running"): ("Progressing", "Running: all 1 workers are running"),
    ("TrainingJob", "pending"): ("Progressing", "Pending: pending-worker-0: 0/5 nodes are"),
    ("TrainingJob", "succeeded"): ("Healthy", "All workers succeeded"),
    ("TrainingJob", "failed"): ("Degraded", "failed-worker-0 (exit code 3) failed"),
    ("TrainingJob", "stalled"): ("Degraded", "/missing-rail does not exist"),
    ("TrainingJob", "on-runtime"): ("Progressing", "Running: all 1 workers are running"),
    ("InferenceService", "ready"): ("Healthy", "1/1 replicas available"),
    ("InferenceService", "unservable"): ("Degraded", "/missing-claim does not exist"),
}


@pytest.mark.skipif(LUA is None, reason="lua5.4 missing: apt-get install lua5.4")
@pytest.mark.parametrize("obj", HEALTH, ids=lambda k: f"{k[0]}-{k[1]}")
def test_argocd_health_of_live_objects(
    live: dict[tuple[str, str], Any], obj: tuple[str, str]
) -> None:
    script = f"argocd-health-{obj[0].lower()}.lua"
    status, message = health(script, live[obj])
    want_status, want_in_message = HEALTH[obj]
    assert (status, want_in_message in message) == (want_status, True), (
        status,
        message,
        json.dumps(live[obj].get("status"), indent=1),
    )


# --- Prometheus ----------------------------------------------------------------------------------


def query(port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
    except OSError:  # not listening yet
        return []
    assert body["status"] == "success", body
    return list(body["data"]["result"])


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="apt-get install prometheus")
def test_prometheus_scrapes_the_operator(
    operator: Operator, ns: str, live: dict[tuple[str, str], Any], tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "trainforge",
                        "static_configs": [{"targets": [f"127.0.0.1:{operator.metrics_port}"]}],
                    }
                ],
            }
        )
    )
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        prometheus = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        reconciles = wait_for(
            lambda: query(port, 'trainforge_reconcile_total{kind="TrainingJob"} > 0'),
            "Prometheus to scrape trainforge_reconcile_total",
            timeout=30,
        )
        assert reconciles[0]["metric"]["job"] == "trainforge"  # type: ignore[index]
        # The gauge has the namespace's jobs by phase, as the cluster shows them.
        by_phase = {
            r["metric"]["phase"]: r["value"][1]
            for r in query(port, f'trainforge_trainingjobs{{namespace="{ns}"}}')
        }
        assert {p: by_phase.get(p) for p in ("Running", "Succeeded", "Failed")} == {
            "Running": "2",  # "running" and "on-runtime"
            "Succeeded": "1",
            "Failed": "1",
        }, by_phase
        up = query(port, 'up{job="trainforge"}')
        assert up[0]["value"][1] == "1"
    except AssertionError as e:
        raise AssertionError(f"{e}\nprometheus log:\n{log.read_text()[-3000:]}") from None
    finally:
        prometheus.terminate()
        try:
            prometheus.wait(timeout=30)
        except subprocess.TimeoutExpired:
            prometheus.kill()
            prometheus.wait(timeout=30)
