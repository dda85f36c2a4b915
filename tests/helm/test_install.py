"""The chart against the real control plane: server-side validation of every mode, then one
release (watch scope "list") whose ServiceAccount the operator runs as — no admin rights — while
it takes TrainingJobs through their lifecycle. A recording proxy logs every API call the
operator makes; the chart's permissions are checked against those calls and with
`kubectl auth can-i`. Then upgrade (jobs survive) and uninstall (everything goes but the CRDs).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from helmtest import (
    CHART,
    KUBE_VERSION,
    Call,
    Permission,
    RecordingProxy,
    admin_server_and_ca,
    granted,
    plain_kubeconfig,
    run_helm,
    values_args,
)

from kubetest import Cluster, Kubectl, start_operator, wait_for

pytestmark = pytest.mark.cluster

MONITORING_CRDS = Path(__file__).parent / "testdata" / "prometheus-operator-crds"
RELEASE = "tf"
SA = f"{RELEASE}-trainforge"

# Permissions the chart grants that the run below does not exercise, and why. The test fails
# when one of them is used after all (then it is verified: remove it here).
NOT_EXERCISED: dict[Permission, str] = {
    Permission(
        "trainforge.io", f"{kind}/finalizers", "update"
    ): "checked by the OwnerReferencesPermissionEnforcement admission plugin (children carry "
    "blockOwnerDeletion), which the test cluster does not enable"
    for kind in ("trainingjobs", "inferenceservices")
}

# Calls the operator makes that the chart deliberately does not allow (templates/_permissions.tpl
# says why); the operator must keep working when they are denied.
DENIED_ON_PURPOSE = {
    Permission("", "namespaces", "list"): "kopf's namespace observer (namespaced mode)",
    Permission("", "namespaces", "watch"): "kopf's namespace observer (namespaced mode)",
    Permission("apiextensions.k8s.io", "customresourcedefinitions", "list"): "kopf's CRD observer",
    Permission("apiextensions.k8s.io", "customresourcedefinitions", "watch"): "kopf's CRD observer",
}


def create_namespace(kubectl: Kubectl, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:5]}"
    kubectl("create", "namespace", name)
    wait_for(
        lambda: kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
        f"the default ServiceAccount of {name}",
    )
    return name


@pytest.fixture(scope="module")
def helm_crds(kubectl: Kubectl) -> None:
    """kopf's peering CRDs (shipped in the chart) and prometheus-operator's, so every object
    the chart can render has its API."""
    kubectl(
        "apply",
        "--server-side",
        f"--filename={CHART / 'crds' / 'kopf-peerings.yaml'}",
        f"--filename={MONITORING_CRDS}",
    )
    kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")


@dataclass
class Release:
    namespace: str  # where the operator is installed
    watched: str  # the one namespace it watches (scope "list")
    install_output: str


@pytest.fixture(scope="module")
def release(
    cluster: Cluster,
    kubectl: Kubectl,
    helm: Path,
    helm_crds: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Release]:
    system = create_namespace(kubectl, "trainforge-system")
    watched = create_namespace(kubectl, "ml")
    values = {"watch": {"scope": "list", "namespaces": [watched]}}
    out = run_helm(
        helm,
        "install",
        RELEASE,
        str(CHART),
        f"--namespace={system}",
        *values_args(values, tmp_path_factory.mktemp("values")),
        kubeconfig=cluster.kubeconfig,
    )
    yield Release(system, watched, out.stdout)
    run_helm(
        helm,
        "uninstall",
        RELEASE,
        f"--namespace={system}",
        "--wait",
        kubeconfig=cluster.kubeconfig,
        check=False,
    )
    for ns in (system, watched):
        kubectl("delete", "namespace", ns, "--wait=false", check=False)


# --- rendering validated by the API server ---------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"watch": {"scope": "release"}},
        {"watch": {"scope": "list"}},
        {"replicaCount": 2},
        {"replicaCount": 2, "watch": {"scope": "list"}},
        {
            "metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
            "prometheusRule": {"enabled": True},
            "dashboard": {"enabled": True},
        },
    ],
    ids=["all", "release", "list", "ha-all", "ha-list", "monitoring"],
)
def test_rendered_manifests_pass_server_validation(
    cluster: Cluster,
    kubectl: Kubectl,
    helm: Path,
    helm_crds: None,
    namespace: str,
    tmp_path: Path,
    values: dict[str, Any],
) -> None:
    if values.get("watch", {}).get("scope") == "list":
        values["watch"]["namespaces"] = [namespace]
    rendered = run_helm(
        helm,
        "template",
        "check",
        str(CHART),
        f"--namespace={namespace}",
        f"--kube-version={KUBE_VERSION}",
        *values_args(values, tmp_path),
    ).stdout
    result = kubectl("apply", "--dry-run=server", "-f", "-", input=rendered)
    assert "deployment.apps/check-trainforge created (server dry run)" in result.stdout


# --- the operator with the chart's RBAC --------------------------------------------------------


def job(name: str, **spec: Any) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "trainforge.io/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": name},
            "spec": {"image": "example.com/trainer:1", **spec},
        }
    )


def inference_service(**spec: Any) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "trainforge.io/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": "serve"},
            "spec": {
                "model": {"claimName": "shared", "name": "mlp"},
                "image": "example.com/server:1",
                "resources": {"requests": {"cpu": "100m"}},
                **spec,
            },
        }
    )


def phase(kubectl: Kubectl, ns: str, name: str) -> str | None:
    out = kubectl("get", "trainingjob", name, "-n", ns, "-o", "json", check=False)
    return json.loads(out.stdout).get("status", {}).get("phase") if out.returncode == 0 else None


def running_pods(kubectl: Kubectl, ns: str, job_name: str, attempt: int) -> list[str]:
    out = kubectl(
        "get",
        "pods",
        "-n",
        ns,
        "-l",
        f"trainforge.io/job-name={job_name},trainforge.io/restart-attempt={attempt}",
        "-o",
        "json",
    )
    return [
        p["metadata"]["name"]
        for p in json.loads(out.stdout)["items"]
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]


def end(kubectl: Kubectl, ns: str, pods: list[str], code: int) -> None:
    for pod in pods:
        kubectl(
            "annotate", "pod", pod, "-n", ns, f"trainforge.test/exit-code={code}", "--overwrite"
        )


@pytest.fixture(scope="module")
def operator_calls(
    cluster: Cluster, kubectl: Kubectl, release: Release, tmp_path_factory: pytest.TempPathFactory
) -> list[Call]:
    """Runs the operator as the chart's ServiceAccount through a recording proxy while
    TrainingJobs exercise every TrainingJob code path that needs an API permission; returns
    the calls it made."""
    ns = release.watched
    # No storage provisioner here: volumes pre-bound to the claims let the scheduler place
    # the workers (the claims the jobs use, one made by the operator from a template).
    volumes = [f"{ns}-{claim}" for claim in ("shared", "train-checkpoints")]
    kubectl(
        "apply",
        "-f",
        "-",
        input=yaml.safe_dump_all(
            [
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolume",
                    "metadata": {"name": volume},
                    "spec": {
                        "capacity": {"storage": "1Gi"},
                        "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
                        "storageClassName": "",
                        "hostPath": {"path": f"/tmp/{volume}"},
                        "claimRef": {"namespace": ns, "name": volume.removeprefix(f"{ns}-")},
                    },
                }
                for volume in volumes
            ]
        ),
    )
    kubectl(
        "apply",
        "-n",
        ns,
        "-f",
        "-",
        input=yaml.safe_dump_all(
            [
                {
                    "apiVersion": "k8s.cni.cncf.io/v1",
                    "kind": "NetworkAttachmentDefinition",
                    "metadata": {"name": "rail-0"},
                    "spec": {"config": '{"cniVersion": "0.3.1"}'},
                },
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {"name": "shared"},
                    "spec": {
                        "accessModes": ["ReadWriteMany"],
                        "storageClassName": "",
                        "resources": {"requests": {"storage": "1Gi"}},
                    },
                },
            ]
        ),
    )
    token = kubectl("create", "token", SA, "-n", release.namespace, "--duration=1h").stdout
    server, ca = admin_server_and_ca(cluster.kubeconfig)
    tmp = tmp_path_factory.mktemp("chart-rbac-operator")
    with RecordingProxy(server, ca, token.strip()) as proxy:
        operator = start_operator(
            plain_kubeconfig(tmp / "kubeconfig", proxy.url),
            tmp / "operator.log",
            f"--namespace={ns}",
            "--log-format=plain",
        )
        try:
            # Autoscaled serving from an existing claim: Deployment, Service, HPA and PDB
            # applied (server-side apply creates them), later HPA and PDB deleted.
            kubectl(
                "apply",
                "-n",
                ns,
                "-f",
                "-",
                input=inference_service(autoscaling={"minReplicas": 2, "maxReplicas": 3}),
            )
            # GPUs + RDMA network (NAD get) + a checkpoint PVC from a template (PVC create) +
            # one gang restart (pod delete, Event) + TTL (TrainingJob delete).
            kubectl(
                "apply",
                "-n",
                ns,
                "-f",
                "-",
                input=job(
                    "train",
                    workers=2,
                    ttlSecondsAfterFinished=1,
                    resources={"gpusPerWorker": 1},
                    network={
                        "rdma": {
                            "networks": [{"name": "rail-0"}],
                            "resources": {"rdma/rdma_shared_device_a": 1},
                        }
                    },
                    checkpoint={"volumeClaimTemplate": {"size": "1Gi"}},
                    failurePolicy={"maxRestarts": 3},
                ),
            )
            # An existing claim (PVC get) and the two PodGroup kinds.
            kubectl(
                "apply",
                "-n",
                ns,
                "-f",
                "-",
                input=job(
                    "cosched",
                    workers=1,
                    checkpoint={"claimName": "shared"},
                    scheduling={"gang": {"policy": "Coscheduling"}},
                ),
            )
            kubectl(
                "apply",
                "-n",
                ns,
                "-f",
                "-",
                input=job("volcano", workers=1, scheduling={"gang": {"policy": "Volcano"}}),
            )

            pods = wait_for(
                lambda: (p := running_pods(kubectl, ns, "train", 0)) and len(p) == 2 and p,
                "2 running workers of train",
                # kopf retries its forbidden namespace listing for ~1 minute
                # before it falls back to the given namespace (see report).
                timeout=180,
            )
            end(kubectl, ns, pods[1:], 1)  # retryable: the whole gang restarts
            pods = wait_for(
                lambda: (p := running_pods(kubectl, ns, "train", 1)) and len(p) == 2 and p,
                "the restarted gang of train",
                timeout=90,
            )
            end(kubectl, ns, pods, 0)  # type: ignore[arg-type]
            wait_for(
                lambda: phase(kubectl, ns, "train") is None,
                "train to succeed and be deleted after its TTL",
                timeout=90,
            )
            wait_for(
                lambda: (
                    kubectl(
                        "get", "podgroups.scheduling.volcano.sh", "volcano", "-n", ns, check=False
                    ).returncode
                    == 0
                ),
                "the Volcano PodGroup",
            )
            wait_for(
                lambda: (
                    kubectl(
                        "get", "podgroups.scheduling.x-k8s.io", "cosched", "-n", ns, check=False
                    ).returncode
                    == 0
                ),
                "the Coscheduling PodGroup",
            )
            wait_for(lambda: phase(kubectl, ns, "cosched") is not None, "cosched's status")
            events = kubectl(
                "get", "events", "-n", ns, "--field-selector=reason=GangRestarted", "-o", "name"
            ).stdout
            assert events.strip(), "no GangRestarted event recorded"

            kubectl(
                "wait",
                "--for=condition=Ready",
                "inferenceservice/serve",
                "-n",
                ns,
                "--timeout=120s",
                timeout=130,
            )
            kubectl("get", "hpa,pdb", "serve", "-n", ns)
            kubectl("apply", "-n", ns, "-f", "-", input=inference_service(replicas=1))
            wait_for(
                lambda: not kubectl("get", "hpa,pdb", "-n", ns, "-o", "name").stdout.strip(),
                "the HPA and PDB of a single-replica InferenceService to go",
            )
        except AssertionError as e:
            operator.stop()
            raise AssertionError(f"{e}\noperator log (end):\n{operator.logs()[-4000:]}") from None
        finally:
            operator.stop()
            kubectl("delete", "persistentvolume", *volumes, "--wait=false", check=False)
        logs = operator.logs()
        assert "Traceback" not in logs, logs[-5000:]
        return list(proxy.calls)


def test_operator_runs_jobs_with_only_the_chart_rbac(operator_calls: list[Call]) -> None:
    denied = {p for c in operator_calls if c.status == 403 for p in c.permissions()}
    assert denied <= DENIED_ON_PURPOSE.keys(), f"forbidden: {sorted(map(str, denied))}"
    assert any(
        c.method == "DELETE" and "/trainingjobs/train" in c.path and c.status == 200
        for c in operator_calls
    ), "the TTL deletion did not go through the proxy"


def chart_role(kubectl: Kubectl, release: Release) -> list[dict[str, Any]]:
    out = kubectl("get", "role", SA, "-n", release.watched, "-o", "json").stdout
    return list(json.loads(out)["rules"])


def test_granted_permissions_are_exactly_the_operators_calls(
    kubectl: Kubectl, release: Release, operator_calls: list[Call]
) -> None:
    grants = {
        Permission(p.group, p.resource, p.verb) for p in granted(chart_role(kubectl, release))
    }
    used = {p for c in operator_calls if c.status != 403 for p in c.permissions()}

    missing = used - grants
    assert not missing, f"the operator needs: {sorted(map(str, missing))}"
    unused = grants - used - NOT_EXERCISED.keys()
    assert not unused, f"granted but never used: {sorted(map(str, unused))}"
    verified = NOT_EXERCISED.keys() & used
    assert not verified, f"now exercised, remove from NOT_EXERCISED: {sorted(map(str, verified))}"
    assert NOT_EXERCISED.keys() <= grants


def can_i(kubectl: Kubectl, release: Release, permission: Permission, namespace: str) -> bool:
    resource, _, sub = permission.resource.partition("/")
    target = f"{resource}.{permission.group}" if permission.group else resource
    args = [
        "auth",
        "can-i",
        permission.verb,
        target,
        "-n",
        namespace,
        f"--as=system:serviceaccount:{release.namespace}:{SA}",
    ]
    if sub:
        args.append(f"--subresource={sub}")
    return kubectl(*args, check=False).stdout.strip() == "yes"


def test_auth_can_i_confirms_each_grant_and_nothing_more(
    kubectl: Kubectl, release: Release
) -> None:
    grants = granted(chart_role(kubectl, release))
    refused = [str(p) for p in grants if not can_i(kubectl, release, p, release.watched)]
    assert not refused, f"granted in the Role but refused: {refused}"
    # Nothing in the operator's own namespace, and nothing beyond its calls anywhere.
    beyond = [
        Permission("", "secrets", "get"),
        Permission("", "pods", "patch"),
        Permission("trainforge.io", "trainingjobs", "update"),
        Permission("", "persistentvolumeclaims", "delete"),
        Permission("", "namespaces", "list"),
    ]
    allowed = [
        f"{p} in {ns}"
        for p in beyond
        for ns in (release.watched, release.namespace)
        if can_i(kubectl, release, p, ns)
    ]
    allowed += [
        f"{p} in {release.namespace}"
        for p in grants
        if can_i(kubectl, release, p, release.namespace)
    ]
    assert not allowed, f"more than the operator needs: {allowed}"


def test_install_notes_show_a_first_trainingjob(release: Release) -> None:
    notes = release.install_output[release.install_output.index("NOTES:") :]
    assert f"kubectl apply -n {release.watched} -f -" in notes
    manifest = yaml.safe_load(notes.split(" -f -\n", 1)[1].split("  YAML\n", 1)[0])
    assert (manifest["kind"], manifest["spec"]["workers"]) == ("TrainingJob", 2)


# --- upgrade and uninstall ----------------------------------------------------------------------


def test_upgrade_with_changed_values_keeps_jobs(
    cluster: Cluster, kubectl: Kubectl, helm: Path, release: Release, tmp_path: Path
) -> None:
    ns = release.watched
    kubectl("apply", "-n", ns, "-f", "-", input=job("survivor", workers=1))
    uid = json.loads(kubectl("get", "tj", "survivor", "-n", ns, "-o", "json").stdout)["metadata"][
        "uid"
    ]
    values = {
        "watch": {"scope": "list", "namespaces": [ns]},
        "replicaCount": 2,
        "operator": {"workers": 4},
    }
    run_helm(
        helm,
        "upgrade",
        RELEASE,
        str(CHART),
        f"--namespace={release.namespace}",
        *values_args(values, tmp_path),
        kubeconfig=cluster.kubeconfig,
    )

    deployment = json.loads(
        kubectl("get", "deployment", SA, "-n", release.namespace, "-o", "json").stdout
    )
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--workers=4" in args and f"--peering={SA}" in args
    assert deployment["spec"]["replicas"] == 2
    kubectl("get", "kopfpeering", SA, "-n", ns)  # HA turned on: its peering object exists
    after = json.loads(kubectl("get", "tj", "survivor", "-n", ns, "-o", "json").stdout)
    assert after["metadata"]["uid"] == uid


def test_uninstall_removes_everything_but_the_crds(
    cluster: Cluster, kubectl: Kubectl, helm: Path, release: Release
) -> None:
    run_helm(
        helm,
        "uninstall",
        RELEASE,
        f"--namespace={release.namespace}",
        "--wait",
        kubeconfig=cluster.kubeconfig,
    )
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/part-of=trainforge"
    for ns in (release.namespace, release.watched):
        left = kubectl(
            "get",
            "deployment,serviceaccount,service,role,rolebinding,pdb,kopfpeering",
            "-n",
            ns,
            "-l",
            selector,
            "-o",
            "name",
        ).stdout
        assert not left.strip(), left
    left = kubectl("get", "clusterrole,clusterrolebinding", "-l", selector, "-o", "name").stdout
    assert not left.strip(), left
    for crd in (
        "trainingjobs.trainforge.io",
        "kopfpeerings.kopf.dev",
        "clusterkopfpeerings.kopf.dev",
    ):
        kubectl("get", "crd", crd)
    kubectl("get", "tj", "survivor", "-n", release.watched)  # user data stays with its CRD
