"""The chart against the real control plane: server-side validation of every mode, then one
release (watch scope "list") whose ServiceAccount the operator runs as — no admin rights — while
it takes TrainingJobs through their lifecycle. A recording proxy logs every API call the
operator makes; the chart's permissions are checked against those calls and with
`kubectl auth can-i`. A second, HA release runs two replicas the same way: they elect one
leader with the chart's Lease permissions. Then upgrade (jobs survive) and uninstall
(everything goes but the CRDs).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
    reconciles,
    run_helm,
    values_args,
)

from kubetest import Cluster, Kubectl, start_operator, wait_for

pytestmark = pytest.mark.cluster

MONITORING_CRDS = Path(__file__).parent / "testdata" / "prometheus-operator-crds"
RELEASE = "tf"
SA = f"{RELEASE}-trainforge"
# The session's CRDs come from the kubectl fixture (crds/, for every test), so these releases
# do not install them; two releases could not both own them anyway. The chart's CRD templates
# are installed and upgraded by tests/helm/test_crd_upgrade.py on a cluster of its own.
NO_CRDS = {"crds": {"install": False}}

# Permissions the chart grants that the run below does not exercise, and why. The test fails
# when one of them is used after all (then it is verified: remove it here).
NOT_EXERCISED: dict[Permission, str] = {
    Permission(
        "trainforge.io", f"{kind}/finalizers", "update"
    ): "checked by the OwnerReferencesPermissionEnforcement admission plugin (children carry "
    "blockOwnerDeletion), which the test cluster does not enable"
    for kind in ("trainingjobs", "inferenceservices")
} | {
    Permission(group, "podgroups", "get"): "only when a PodGroup's name is already taken, which "
    "these tests do not provoke"
    for group in ("scheduling.volcano.sh", "scheduling.x-k8s.io")
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
    """prometheus-operator's CRDs, so every object the chart can render has its API (the
    chart's own CRDs are the project's, which the kubectl fixture installs)."""
    kubectl("apply", "--server-side", f"--filename={MONITORING_CRDS}")
    kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")


@dataclass
class Release:
    namespace: str  # where the operator is installed
    watched: str  # the one namespace it watches (scope "list")
    install_output: str


def install(
    cluster: Cluster, kubectl: Kubectl, helm: Path, tmp: Path, **values: Any
) -> Iterator[Release]:
    """A release in a new namespace that watches one other new namespace (scope "list");
    uninstalled and both namespaces deleted afterwards."""
    system = create_namespace(kubectl, "trainforge-system")
    watched = create_namespace(kubectl, "ml")
    values = {"watch": {"scope": "list", "namespaces": [watched]}, **NO_CRDS, **values}
    out = run_helm(
        helm,
        "install",
        RELEASE,
        str(CHART),
        f"--namespace={system}",
        *values_args(values, tmp),
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


@pytest.fixture(scope="module")
def release(
    cluster: Cluster,
    kubectl: Kubectl,
    helm: Path,
    helm_crds: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Release]:
    yield from install(cluster, kubectl, helm, tmp_path_factory.mktemp("values"))


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
        {"exampleRuntime": {"enabled": True}, "operator": {"defaultRuntime": "rdma-fabric"}},
    ],
    ids=["all", "release", "list", "ha-all", "ha-list", "monitoring", "example-runtime"],
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
    if values.get("exampleRuntime", {}).get("enabled"):
        # The CRD's schema and rules accept the chart's example runtime.
        assert "clustertrainingruntime.trainforge.io/rdma-fabric created" in result.stdout


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
    # A job on a TrainingRuntime in its namespace and one on a ClusterTrainingRuntime (get of
    # each, once, when the job starts).
    cluster_runtime = f"{ns}-runtime"
    kubectl(
        "apply",
        "-n",
        ns,
        "-f",
        "-",
        input=yaml.safe_dump_all(
            [
                {
                    "apiVersion": "trainforge.io/v1alpha1",
                    "kind": kind,
                    "metadata": {"name": name},
                    "spec": {"template": {"image": "example.com/trainer:1"}},
                }
                for kind, name in (
                    ("TrainingRuntime", "small"),
                    ("ClusterTrainingRuntime", cluster_runtime),
                )
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

            for runtime_job, ref in (
                ("namespaced", {"kind": "TrainingRuntime", "name": "small"}),
                ("clusterwide", {"name": cluster_runtime}),
            ):
                kubectl(
                    "apply",
                    "-n",
                    ns,
                    "-f",
                    "-",
                    input=yaml.safe_dump(
                        {
                            "apiVersion": "trainforge.io/v1alpha1",
                            "kind": "TrainingJob",
                            "metadata": {"name": runtime_job},
                            "spec": {"runtimeRef": ref},
                        }
                    ),
                )

            pods = wait_for(
                lambda: (p := running_pods(kubectl, ns, "train", 0)) and len(p) == 2 and p,
                "2 running workers of train",
            )
            for runtime_job in ("namespaced", "clusterwide"):
                wait_for(
                    lambda: running_pods(kubectl, ns, runtime_job, 0),  # noqa: B023
                    f"the worker of {runtime_job} (from its runtime)",
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
            kubectl("delete", "clustertrainingruntime", cluster_runtime, check=False)
        logs = operator.logs()
        assert "Traceback" not in logs, logs[-5000:]
        return list(proxy.calls)


def test_operator_runs_jobs_with_only_the_chart_rbac(operator_calls: list[Call]) -> None:
    denied = sorted({f"{c.method} {c.path}" for c in operator_calls if c.status == 403})
    assert not denied, f"forbidden: {denied}"
    assert any(
        c.method == "DELETE" and "/trainingjobs/train" in c.path and c.status == 200
        for c in operator_calls
    ), "the TTL deletion did not go through the proxy"


def chart_role(kubectl: Kubectl, release: Release) -> list[dict[str, Any]]:
    out = kubectl("get", "role", SA, "-n", release.watched, "-o", "json").stdout
    return list(json.loads(out)["rules"])


def runtimes_role(kubectl: Kubectl, release: Release) -> list[dict[str, Any]]:
    """The ClusterRole for ClusterTrainingRuntimes (cluster-scoped, whatever the watch scope)."""
    name = f"{SA}-runtimes-{release.namespace}"
    return list(json.loads(kubectl("get", "clusterrole", name, "-o", "json").stdout)["rules"])


def test_granted_permissions_are_exactly_the_operators_calls(
    kubectl: Kubectl, release: Release, operator_calls: list[Call]
) -> None:
    rules = chart_role(kubectl, release) + runtimes_role(kubectl, release)
    grants = {Permission(p.group, p.resource, p.verb) for p in granted(rules)}
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
    if permission.name:
        target += f"/{permission.name}"
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
    grants = sorted(granted(chart_role(kubectl, release)))
    # Nothing in the operator's own namespace, and nothing beyond its calls anywhere.
    beyond = [
        Permission("", "secrets", "get"),
        Permission("", "pods", "patch"),
        Permission("trainforge.io", "trainingjobs", "update"),
        Permission("", "persistentvolumeclaims", "delete"),
        Permission("", "namespaces", "list"),
    ]
    checks = [(p, release.watched, True) for p in grants]
    checks += [(p, ns, False) for p in beyond for ns in (release.watched, release.namespace)]
    checks += [(p, release.namespace, False) for p in grants]
    # One kubectl per check: a few at a time, as they mostly wait for the API server.
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda c: can_i(kubectl, release, c[0], c[1]), checks))
    wrong = [
        (f"{p} in {ns}", want)
        for (p, ns, want), yes in zip(checks, answers, strict=True)
        if yes != want
    ]
    refused = [check for check, want in wrong if want]
    assert not refused, f"granted in the Role but refused: {refused}"
    allowed = [check for check, want in wrong if not want]
    assert not allowed, f"more than the operator needs: {allowed}"


def test_install_notes_show_a_first_trainingjob(release: Release) -> None:
    notes = release.install_output[release.install_output.index("NOTES:") :]
    assert f"kubectl apply -n {release.watched} -f -" in notes
    manifest = yaml.safe_load(notes.split(" -f -\n", 1)[1].split("  YAML\n", 1)[0])
    assert (manifest["kind"], manifest["spec"]["workers"]) == ("TrainingJob", 2)


# --- HA: two replicas, one Lease ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ha_release(
    cluster: Cluster, kubectl: Kubectl, helm: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Release]:
    yield from install(cluster, kubectl, helm, tmp_path_factory.mktemp("ha-values"), replicaCount=2)


def lease_holder(kubectl: Kubectl, namespace: str, name: str) -> str:
    out = kubectl("get", "lease", name, "-n", namespace, "-o", "json", check=False)
    return json.loads(out.stdout)["spec"].get("holderIdentity", "") if out.returncode == 0 else ""


def test_ha_replicas_elect_one_leader_with_the_chart_rbac(
    cluster: Cluster, kubectl: Kubectl, ha_release: Release, tmp_path: Path
) -> None:
    """Two replicas as the HA release's ServiceAccount, with the election flags the chart
    rendered into its Deployment and their own pod names: one leads and reconciles, the
    other only watches; every call (Lease ones included) is allowed by the chart's RBAC."""
    ns, system = ha_release.watched, ha_release.namespace
    deployment = json.loads(kubectl("get", "deployment", SA, "-n", system, "-o", "json").stdout)
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    election = [
        a for a in container["args"] if a.startswith(("--leader-election", "--lease-duration"))
    ]
    assert election == [f"--leader-election-lease={system}/{SA}", "--lease-duration-seconds=15"]
    assert container["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"

    token = kubectl("create", "token", SA, "-n", system, "--duration=1h").stdout
    server, ca = admin_server_and_ca(cluster.kubeconfig)
    with RecordingProxy(server, ca, token.strip()) as proxy:
        kubeconfig = plain_kubeconfig(tmp_path / "kubeconfig", proxy.url)
        replicas = {
            pod: start_operator(
                kubeconfig,
                tmp_path / f"{pod}.log",
                f"--namespace={ns}",
                "--log-format=plain",
                *election,
                env={"POD_NAME": pod},
            )
            for pod in (f"{SA}-7d9f-aaaaa", f"{SA}-7d9f-bbbbb")
        }
        try:
            leader = str(wait_for(lambda: lease_holder(kubectl, system, SA), "a Lease holder"))
            assert leader in replicas
            kubectl("apply", "-n", ns, "-f", "-", input=job("ha", workers=1))
            wait_for(lambda: running_pods(kubectl, ns, "ha", 0), "the leader to run ha's worker")
            wait_for(
                lambda: any(c.method == "PUT" and c.status == 200 for c in proxy.calls),
                "the leader to renew its Lease",
            )
            assert lease_holder(kubectl, system, SA) == leader
            standby = next(r for r in replicas if r != leader)
            assert reconciles(replicas[leader]) > 0
            assert reconciles(replicas[standby]) == 0  # it watches, but does not act
        except AssertionError as e:
            logs = "\n".join(f"{pod} log (end):\n{r.logs()[-2000:]}" for pod, r in replicas.items())
            raise AssertionError(f"{e}\n{logs}") from None
        finally:
            for replica in replicas.values():
                replica.stop()
        calls = list(proxy.calls)
    for pod, replica in replicas.items():
        logs = replica.logs()
        assert "Traceback" not in logs, logs[-5000:]
        assert ("now leads" in logs) == (pod == leader), logs[-3000:]

    denied = sorted({f"{c.method} {c.path}" for c in calls if c.status == 403})
    assert not denied, f"forbidden: {denied}"
    lease_calls = [c for c in calls if "/leases" in c.path]
    used = {p for c in lease_calls for p in c.permissions()}
    assert {str(p) for p in used} == {
        "get coordination.k8s.io/leases",
        "create coordination.k8s.io/leases",
        "update coordination.k8s.io/leases",
    }
    # ... which are exactly what the chart's leader election Role grants (none unused).
    role = kubectl("get", "role", f"{SA}-leader-election", "-n", system, "-o", "json").stdout
    grants = granted(json.loads(role)["rules"])
    assert {Permission(p.group, p.resource, p.verb) for p in grants} == used
    assert {c.path for c in lease_calls if c.method in ("GET", "PUT")} == {
        f"/apis/coordination.k8s.io/v1/namespaces/{system}/leases/{SA}"
    }
    # The grants behind them: the release's Lease only, and only in the release namespace.
    lease = Permission("coordination.k8s.io", "leases", "update", SA)
    assert can_i(kubectl, ha_release, lease, system)
    assert not can_i(
        kubectl,
        ha_release,
        Permission("coordination.k8s.io", "leases", "update", "other-lease"),
        system,
    )
    assert not can_i(kubectl, ha_release, lease, ns)


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
        **NO_CRDS,
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
    assert "--workers=4" in args
    assert f"--leader-election-lease={release.namespace}/{SA}" in args
    assert deployment["spec"]["replicas"] == 2
    # HA turned on: the Lease permissions, in the release namespace.
    kubectl("get", "role,rolebinding", f"{SA}-leader-election", "-n", release.namespace)
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
            "deployment,serviceaccount,service,role,rolebinding,pdb",
            "-n",
            ns,
            "-l",
            selector,
            "-o",
            "name",
        ).stdout
        assert not left.strip(), left
    cluster_wide = kubectl(
        "get", "clusterrole,clusterrolebinding", "-l", selector, "-o", "name"
    ).stdout.split()
    # The HA release (same release name, another namespace) keeps its own progress and
    # runtimes grants.
    left = [
        n
        for n in cluster_wide
        if not ("-progress-" in n or "-runtimes-" in n) or n.endswith(f"-{release.namespace}")
    ]
    assert not left, left
    for crd in (
        "trainingjobs.trainforge.io",
        "inferenceservices.trainforge.io",
        "trainingruntimes.trainforge.io",
        "clustertrainingruntimes.trainforge.io",
    ):
        kubectl("get", "crd", crd)
    kubectl("get", "tj", "survivor", "-n", release.watched)  # user data stays with its CRD
