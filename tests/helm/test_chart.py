"""The chart without a cluster: lint, what each mode renders, values the schema rejects, the
CRD copies, and that dashboards and alerts only use metrics that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from helmtest import CHART, KUBE_VERSION, find, granted, render, run_helm, values_args

import trainforge_contract as contract
from kubetest import REPO
from trainforge.api.runtime import parse_runtime_spec

# One values set per mode the chart supports; tests/helm/test_install.py installs some.
MODES: dict[str, dict[str, Any]] = {
    "default": {},
    "release-namespace": {"watch": {"scope": "release"}},
    "namespace-list": {"watch": {"scope": "list", "namespaces": ["team-a", "team-b"]}},
    "ha-all": {"replicaCount": 2},
    "ha-list": {"replicaCount": 3, "watch": {"scope": "list", "namespaces": ["team-a"]}},
    "monitoring": {
        "metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True},
    },
}


@pytest.mark.parametrize("mode", MODES)
def test_lint(helm: Path, tmp_path: Path, mode: str) -> None:
    result = run_helm(
        helm,
        "lint",
        "--strict",
        str(CHART),
        f"--kube-version={KUBE_VERSION}",
        *values_args(MODES[mode], tmp_path),
    )
    assert "0 chart(s) failed" in result.stdout


def operator_args(docs: list[dict[str, Any]]) -> list[str]:
    [deployment] = find(docs, "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return list(container["args"])


def test_default_watches_all_namespaces_with_a_cluster_role(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, {}, tmp_path)
    assert "--all-namespaces" in operator_args(docs)
    assert [r["metadata"]["name"] for r in find(docs, "ClusterRole")] == [
        "tf-trainforge",
        "tf-trainforge-runtimes-trainforge",
        PROGRESS_ROLE,
    ]
    for binding in find(docs, "ClusterRoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "tf-trainforge", "namespace": "trainforge"}
        ]
    assert not find(docs, "Role") and not find(docs, "RoleBinding")


def test_release_namespace_mode_uses_a_role_there(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, MODES["release-namespace"], tmp_path, namespace="ml")
    assert [a for a in operator_args(docs) if a.startswith("--namespace")] == ["--namespace=ml"]
    assert [r["metadata"]["namespace"] for r in find(docs, "Role")] == ["ml"]
    assert [r["metadata"]["namespace"] for r in find(docs, "RoleBinding")] == ["ml"]
    assert only_runtimes_and_the_progress_token_review(docs, "ml")


def test_namespace_list_mode_binds_a_role_in_each_namespace(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, MODES["namespace-list"], tmp_path)
    args = operator_args(docs)
    assert [a for a in args if a.startswith("--namespace")] == [
        "--namespace=team-a",
        "--namespace=team-b",
    ]
    assert "--all-namespaces" not in args
    assert sorted(r["metadata"]["namespace"] for r in find(docs, "Role")) == ["team-a", "team-b"]
    for binding in find(docs, "RoleBinding"):
        assert binding["subjects"][0]["namespace"] == "trainforge"  # the operator's own SA
    assert only_runtimes_and_the_progress_token_review(docs, "trainforge")


PROGRESS_ROLE = "tf-trainforge-progress-trainforge"


def only_runtimes_and_the_progress_token_review(docs: list[dict[str, Any]], namespace: str) -> bool:
    """Namespaced modes grant two things cluster-wide, both cluster-scoped by nature: reading
    ClusterTrainingRuntimes and checking progress tokens (TokenReview)."""
    roles = find(docs, "ClusterRole")
    bindings = find(docs, "ClusterRoleBinding")
    return (
        [r["metadata"]["name"] for r in roles]
        == [f"tf-trainforge-runtimes-{namespace}", f"tf-trainforge-progress-{namespace}"]
        and [{str(p) for p in granted(r["rules"])} for r in roles]
        == [
            {"get trainforge.io/clustertrainingruntimes"},
            {"create authentication.k8s.io/tokenreviews"},
        ]
        and [b["roleRef"]["name"] for b in bindings] == [r["metadata"]["name"] for r in roles]
    )


def test_live_progress_endpoint_service_and_grant_only_when_enabled(
    helm: Path, tmp_path: Path
) -> None:
    docs = render(helm, MODES["release-namespace"], tmp_path, namespace="ml")
    args = operator_args(docs)
    assert "--progress-port=8090" in args
    assert "--progress-url=http://tf-trainforge-progress.ml.svc:8090/v1/progress" in args
    [service] = [s for s in find(docs, "Service") if s["metadata"]["name"].endswith("-progress")]
    assert service["spec"]["ports"][0]["targetPort"] == "progress"
    off = render(helm, {**MODES["release-namespace"], "progress": {"enabled": False}}, tmp_path)
    assert not [a for a in operator_args(off) if a.startswith("--progress")]
    assert [r["metadata"]["name"] for r in find(off, "ClusterRole")] == [
        "tf-trainforge-runtimes-trainforge"
    ]


def test_kueue_integration_flag_and_grants_only_when_enabled(helm: Path, tmp_path: Path) -> None:
    off = render(helm, MODES["release-namespace"], tmp_path, namespace="ml")
    assert "--kueue" not in operator_args(off)
    assert not [p for r in find(off, "Role") for p in granted(r["rules"]) if "kueue" in str(p)]
    on = render(
        helm, {**MODES["release-namespace"], "kueue": {"enabled": True}}, tmp_path, namespace="ml"
    )
    assert "--kueue" in operator_args(on)
    [role] = [r for r in find(on, "Role") if "kueue.x-k8s.io" in json.dumps(r["rules"])]
    assert {str(p) for p in granted(role["rules"]) if "kueue" in str(p)} >= {
        str(p)
        for p in granted(
            [
                {"apiGroups": ["kueue.x-k8s.io"], "resources": ["workloads"], "verbs": ["create"]},
                {
                    "apiGroups": ["kueue.x-k8s.io"],
                    "resources": ["workloads/status"],
                    "verbs": ["patch"],
                },
            ]
        )
    }
    [cluster_role] = [
        c for c in find(on, "ClusterRole") if c["metadata"]["name"].endswith("-kueue-ml")
    ]
    assert {(r["resources"][0], tuple(r["verbs"])) for r in cluster_role["rules"]} == {
        ("resourceflavors", ("get",)),
        ("priorityclasses", ("get",)),
    }


def test_every_mode_grants_the_same_operator_permissions(helm: Path, tmp_path: Path) -> None:
    """RBAC comes from one list (templates/_permissions.tpl) whatever the mode."""
    cluster_rules = find(render(helm, {}, tmp_path), "ClusterRole")[0]["rules"]
    for role in find(render(helm, MODES["namespace-list"], tmp_path), "Role"):
        assert granted(role["rules"]) == granted(cluster_rules)


def operator_env(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    [deployment] = find(docs, "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return list(container.get("env", []))


LEASE_RULES = {
    "get coordination.k8s.io/leases (tf-trainforge)",
    "update coordination.k8s.io/leases (tf-trainforge)",
    "create coordination.k8s.io/leases",
}


def test_single_replica_runs_without_an_election(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, {}, tmp_path)
    assert find(docs, "Deployment")[0]["spec"]["strategy"] == {"type": "Recreate"}
    assert not any(a.startswith("--leader-election") for a in operator_args(docs))
    assert operator_env(docs) == []
    assert not find(docs, "PodDisruptionBudget")
    rules = granted(find(docs, "ClusterRole")[0]["rules"])
    assert not {p for p in rules if p.resource == "leases"}


@pytest.mark.parametrize("mode", ["ha-all", "ha-list"])
def test_ha_elects_a_leader_on_a_lease_in_the_release_namespace(
    helm: Path, tmp_path: Path, mode: str
) -> None:
    docs = render(helm, {**MODES[mode], "leaderElection": {"leaseDurationSeconds": 20}}, tmp_path)
    args = operator_args(docs)
    assert "--leader-election-lease=trainforge/tf-trainforge" in args
    assert "--lease-duration-seconds=20" in args
    assert operator_env(docs) == [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    ]
    assert find(docs, "Deployment")[0]["spec"]["strategy"]["type"] == "RollingUpdate"
    assert find(docs, "PodDisruptionBudget")[0]["spec"]["minAvailable"] == 1

    # The Lease permissions: a Role in the release namespace only, even with a ClusterRole.
    [role] = [r for r in find(docs, "Role") if r["metadata"]["name"].endswith("leader-election")]
    assert role["metadata"]["namespace"] == "trainforge"
    assert {str(p) for p in granted(role["rules"])} == LEASE_RULES
    [binding] = [
        b for b in find(docs, "RoleBinding") if b["metadata"]["name"] == role["metadata"]["name"]
    ]
    assert binding["metadata"]["namespace"] == "trainforge"
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "tf-trainforge", "namespace": "trainforge"}
    ]
    watch_roles = [r for r in find(docs, "Role") + find(docs, "ClusterRole") if r is not role]
    assert watch_roles
    for watch_role in watch_roles:
        assert not {p for p in granted(watch_role["rules"]) if p.resource == "leases"}
    # Nothing of kopf's peering is left.
    assert not {d["kind"] for d in docs} & {"ClusterKopfPeering", "KopfPeering"}
    assert not any("peering" in a for a in args)


def test_operator_pod_is_hardened(helm: Path, tmp_path: Path) -> None:
    [deployment] = find(render(helm, {}, tmp_path), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert pod["terminationGracePeriodSeconds"] == 30
    assert container["image"] == "ghcr.io/trainforge/operator:0.1.0"  # appVersion
    assert "--trainer-image=ghcr.io/trainforge/trainer:0.1.0" in container["args"]


def test_values_reach_the_operator_flags(helm: Path, tmp_path: Path) -> None:
    docs = render(
        helm,
        {
            "image": {"tag": "1.2.3"},
            "trainerImage": {"tag": "1.2.0"},
            "operator": {"workers": 3, "resyncSeconds": 30, "verbose": True},
            "resources": {"requests": {"cpu": "2"}},
        },
        tmp_path,
    )
    [container] = find(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    assert container["image"].endswith(":1.2.3")
    for arg in (
        "--trainer-image=ghcr.io/trainforge/trainer:1.2.0",
        "--workers=3",
        "--resync-seconds=30",
        "--verbose",
    ):
        assert arg in container["args"]
    assert container["resources"]["requests"]["cpu"] == "2"


def test_example_runtime_and_default_runtime_only_when_set(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, {}, tmp_path)
    assert not find(docs, "ClusterTrainingRuntime")
    assert not [a for a in operator_args(docs) if a.startswith("--default-runtime")]
    docs = render(
        helm,
        {"exampleRuntime": {"enabled": True}, "operator": {"defaultRuntime": "rdma-fabric"}},
        tmp_path,
    )
    [runtime] = find(docs, "ClusterTrainingRuntime")
    assert runtime["metadata"]["name"] == "rdma-fabric"
    assert runtime["spec"]["locked"] == ["network"]
    rdma = runtime["spec"]["template"]["network"]["rdma"]
    assert [n["name"] for n in rdma["networks"]] == ["rdma-rail-0", "rdma-rail-1"]
    assert "--default-runtime=rdma-fabric" in operator_args(docs)
    # The operator's own model accepts what the chart renders.
    assert parse_runtime_spec(runtime["spec"]).template.resources is not None


def test_monitoring_objects_only_when_enabled(helm: Path, tmp_path: Path) -> None:
    kinds = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"}
    assert not kinds & {d["kind"] for d in render(helm, {}, tmp_path)}
    docs = render(helm, MODES["monitoring"], tmp_path)
    assert kinds <= {d["kind"] for d in docs}
    trainers, servers = find(docs, "PodMonitor")
    # Only rank 0 serves the trainer's metrics (trainforge_contract.DEFAULT_METRICS_PORT).
    assert trainers["spec"]["selector"]["matchLabels"]["trainforge.io/worker-index"] == "0"
    assert trainers["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert servers["spec"]["podMetricsEndpoints"][0]["port"] == contract.SERVE_PORT_NAME
    assert trainers["spec"]["namespaceSelector"] == {"any": True}
    [dashboard] = find(docs, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["trainforge.json"])["uid"] == "trainforge"


# --- invalid values -----------------------------------------------------------------------------

INVALID: list[tuple[dict[str, Any], str]] = [
    (
        {"watch": {"scope": "everything"}},
        "at '/watch/scope': value must be one of 'all', 'release', 'list'",
    ),
    ({"watch": {"scope": "list"}}, "at '/watch/namespaces': minItems: got 0, want 1"),
    (
        {"watch": {"scope": "list", "namespaces": ["Team_A"]}},
        "at '/watch/namespaces/0': 'Team_A' does not match pattern",
    ),
    (
        {"watch": {"namespaces": ["team-a"]}},
        'watch.namespaces is set but watch.scope is "all": set watch.scope=list',
    ),
    ({"replicaCount": 0}, "at '/replicaCount': minimum: got 0, want 1"),
    (
        {"leaderElection": {"leaseDurationSeconds": 1}},
        "at '/leaderElection/leaseDurationSeconds': minimum: got 1, want 5",
    ),
    ({"peering": {"name": "x"}}, "additional properties 'peering' not allowed"),
    ({"image": {"tag": 1.2}}, "at '/image/tag': got number, want string"),
    ({"imagee": {"tag": "x"}}, "additional properties 'imagee' not allowed"),
    (
        {"operator": {"logFormat": "xml"}},
        "at '/operator/logFormat': value must be one of 'json', 'plain'",
    ),
    (
        {"podSecurityContext": {"runAsNonRoot": False}},
        "at '/podSecurityContext/runAsNonRoot': value must be true",
    ),
    (
        {"securityContext": {"allowPrivilegeEscalation": True}},
        "at '/securityContext/allowPrivilegeEscalation': value must be false",
    ),
    ({"metricsPort": 70000}, "at '/metricsPort': maximum: got 70,000, want 65,535"),
    (
        {"metrics": {"serviceMonitor": {"interval": "5 minutes"}}},
        "at '/metrics/serviceMonitor/interval': '5 minutes' does not match pattern",
    ),
    (
        {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}},
        "metrics.serviceMonitor.enabled needs metrics.service.enabled",
    ),
    (
        {"serviceAccount": {"create": False}},
        "serviceAccount.name is required when serviceAccount.create is false",
    ),
]


@pytest.mark.parametrize(
    ("values", "message"),
    INVALID,
    ids=[re.sub(r"\W+", "-", json.dumps(v)).strip("-") for v, _ in INVALID],
)
def test_invalid_values_fail_with_a_clear_message(
    helm: Path, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    result = run_helm(
        helm,
        "template",
        "tf",
        str(CHART),
        f"--kube-version={KUBE_VERSION}",
        *values_args(values, tmp_path),
        check=False,
    )
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_kube_version_range_is_enforced(helm: Path) -> None:
    result = run_helm(helm, "template", "tf", str(CHART), "--kube-version=1.27.0", check=False)
    assert "chart requires kubeVersion: >=1.29.0-0" in result.stderr


# --- CRDs ---------------------------------------------------------------------------------------

KIND_CRD = "CustomResourceDefinition"


def test_chart_crds_are_exactly_the_generated_ones() -> None:
    generated = {p.name: p.read_bytes() for p in (REPO / "crds").iterdir()}
    shipped = {p.name: p.read_bytes() for p in (CHART / "files" / "crds").iterdir()}
    assert generated, "no generated CRDs in crds/"
    stale = sorted(
        n for n in generated.keys() | shipped.keys() if generated.get(n) != shipped.get(n)
    )
    assert not stale, (
        f"helm/trainforge/files/crds/ differs from crds/ in {stale}: "
        "run `bash hack/sync-chart-crds.sh`"
    )
    # Helm installs a chart's crds/ folder once and never upgrades it; the CRDs are templates
    # (templates/crds.yaml). A crds/ folder next to them would also make `helm install` fail:
    # the CRDs it creates first have no Helm ownership metadata, so the templates may not
    # adopt them.
    assert not (CHART / "crds").exists(), (
        "helm/trainforge/crds/ is back: `git rm -r helm/trainforge/crds` "
        "(hack/sync-chart-crds.sh copies the CRDs to helm/trainforge/files/crds/)"
    )


def test_crds_render_as_the_generated_ones_that_helm_never_deletes(
    helm: Path, tmp_path: Path
) -> None:
    rendered = {d["metadata"]["name"]: d for d in find(render(helm, {}, tmp_path), KIND_CRD)}
    generated = {
        p.stem: yaml.safe_load(p.read_text()) for p in sorted((REPO / "crds").glob("*.yaml"))
    }
    assert rendered.keys() == generated.keys()
    for name, crd in rendered.items():
        metadata = crd["metadata"]
        assert metadata.pop("annotations") == {"helm.sh/resource-policy": "keep"}, name
        assert metadata.pop("labels")["app.kubernetes.io/part-of"] == "trainforge", name
        assert crd == generated[name], f"{name} renders differently from crds/{name}.yaml"
        # Client-side apply (kubectl, Argo CD by default) keeps the whole object in an
        # annotation, and all annotations together are limited to 256 KiB (docs/gitops.md).
        assert len(json.dumps(crd, separators=(",", ":"))) < 256 * 1024, name


def test_crds_install_false_renders_no_crd(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, {"crds": {"install": False}}, tmp_path)
    assert not find(docs, KIND_CRD)
    assert find(docs, "Deployment")


# --- metrics used by alerts and the dashboard ---------------------------------------------------


def exported_metrics() -> set[str]:
    from prometheus_client import REGISTRY

    import trainforge.metrics  # noqa: F401 - registers the operator's metrics
    from trainforge_trainer.metrics import TrainerMetrics
    from trainforge_trainer.serve.metrics import ServeMetrics

    names = {m.name for m in REGISTRY.collect()}
    names |= {m.name for m in TrainerMetrics().registry.collect()}
    names |= {m.name for m in ServeMetrics(max_batch_size=8).registry.collect()}
    return names


def used_metrics(docs: list[dict[str, Any]]) -> set[str]:
    exprs = [
        r["expr"]
        for d in find(docs, "PrometheusRule")
        for g in d["spec"]["groups"]
        for r in g["rules"]
    ]
    dashboard = json.loads(find(docs, "ConfigMap")[0]["data"]["trainforge.json"])
    exprs += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    # Histogram and counter series map back to the family name prometheus_client reports.
    return {
        re.sub(r"_(bucket|sum|count|total)$", "", m)
        for e in exprs
        for m in re.findall(r"\btrainforge_\w+", e)
    }


def test_alerts_and_dashboard_use_exported_metrics(helm: Path, tmp_path: Path) -> None:
    used = used_metrics(render(helm, MODES["monitoring"], tmp_path))
    assert {
        "trainforge_trainingjobs",
        "trainforge_trainer_loss",
        "trainforge_serve_request_duration_seconds",
    } <= used
    unknown = used - exported_metrics()
    assert not unknown, f"no component exports {sorted(unknown)}"
