"""The local control plane is a real one: version, RBAC, scheduler, GC, Deployments, KWOK."""

from __future__ import annotations

import json
import re

import yaml

from kubetest import REPO, Cluster, Kubectl, make_kubectl, wait_for


def k8s_version() -> str:
    text = (REPO / "hack/cluster/versions.env").read_text()
    match = re.search(r"^K8S_VERSION=(\S+)", text, re.M)
    assert match
    return match.group(1)


def gpu_pod(name: str, gpus: int) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "containers": [
                    {
                        "name": "main",
                        "image": "busybox",
                        "resources": {"limits": {"nvidia.com/gpu": gpus}},
                    }
                ],
                "tolerations": [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                ],
            },
        }
    )


def pod(kubectl: Kubectl, namespace: str, name: str) -> dict:
    return json.loads(kubectl("get", "pod", name, "-n", namespace, "-o", "json").stdout)


def test_version_reports_the_built_release(kubectl: Kubectl) -> None:
    server = json.loads(kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert server["gitVersion"] == k8s_version()
    assert server["gitTreeState"] == "clean"


def test_rbac_forbids_until_a_role_grants(
    kubectl: Kubectl, cluster: Cluster, namespace: str, tmp_path
) -> None:
    kubectl("create", "serviceaccount", "reader", "-n", namespace)
    token = kubectl("create", "token", "reader", "-n", namespace).stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    sa_config = tmp_path / "sa.kubeconfig"
    sa_config.write_text(
        yaml.safe_dump(
            {**admin, "users": [{"name": admin["users"][0]["name"], "user": {"token": token}}]}
        )
    )
    as_reader = make_kubectl(sa_config)

    denied = as_reader("get", "pods", "-n", namespace, check=False)
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr
    assert f"system:serviceaccount:{namespace}:reader" in denied.stderr

    kubectl("create", "role", "pod-reader", "--verb=get,list", "--resource=pods", "-n", namespace)
    kubectl(
        "create",
        "rolebinding",
        "pod-reader",
        "--role=pod-reader",
        f"--serviceaccount={namespace}:reader",
        "-n",
        namespace,
    )
    wait_for(
        lambda: as_reader("get", "pods", "-n", namespace, check=False).returncode == 0,
        "the RoleBinding to take effect",
        timeout=30,
    )
    assert as_reader("get", "secrets", "-n", namespace, check=False).returncode != 0


def test_scheduler_places_gpu_pods_for_real(kubectl: Kubectl, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=gpu_pod("too-big", 9))
    kubectl("apply", "-n", namespace, "-f", "-", input=gpu_pod("fits", 8))

    def unschedulable_message() -> str:
        conditions = pod(kubectl, namespace, "too-big")["status"].get("conditions", [])
        return next(
            (
                c.get("message", "")
                for c in conditions
                if c["type"] == "PodScheduled" and c["status"] == "False"
            ),
            "",
        )

    message = str(wait_for(unschedulable_message, "the PodScheduled=False condition"))
    assert "Insufficient nvidia.com/gpu" in message
    assert pod(kubectl, namespace, "too-big")["status"]["phase"] == "Pending"

    wait_for(
        lambda: pod(kubectl, namespace, "fits")["status"].get("phase") == "Running",
        "the 8-GPU pod to run",
    )
    placed = pod(kubectl, namespace, "fits")
    assert placed["spec"]["nodeName"].startswith("kwok-gpu-")
    assert placed["status"]["podIP"]


def test_garbage_collector_deletes_owned_objects(kubectl: Kubectl, namespace: str) -> None:
    kubectl("create", "configmap", "owner", "-n", namespace)
    uid = json.loads(kubectl("get", "cm", "owner", "-n", namespace, "-o", "json").stdout)[
        "metadata"
    ]["uid"]
    kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": "child",
                    "ownerReferences": [
                        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
                    ],
                },
            }
        ),
    )
    kubectl("delete", "cm", "owner", "-n", namespace)
    wait_for(
        lambda: kubectl("get", "cm", "child", "-n", namespace, check=False).returncode != 0,
        "the garbage collector to delete the child",
    )


def test_deployment_reaches_available_replicas(kubectl: Kubectl, namespace: str) -> None:
    kubectl("create", "deployment", "web", "--image=nginx", "--replicas=2", "-n", namespace)
    kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=90s", timeout=100)
    status = json.loads(kubectl("get", "deploy", "web", "-n", namespace, "-o", "json").stdout)[
        "status"
    ]
    assert status["availableReplicas"] == 2


def test_kwok_ends_pods_with_the_requested_exit_code(kubectl: Kubectl, namespace: str) -> None:
    for name in ("ok", "killed"):
        kubectl("run", name, "--image=busybox", "--restart=Never", "-n", namespace)
    for name in ("ok", "killed"):
        wait_for(
            lambda n=name: pod(kubectl, namespace, n)["status"].get("phase") == "Running",
            f"pod {name} to run",
        )
    kubectl(
        "annotate",
        "pod",
        "ok",
        "trainforge.test/exit-code=0",
        'trainforge.test/termination-message={"step": 7}',
        "-n",
        namespace,
    )
    kubectl("annotate", "pod", "killed", "trainforge.test/exit-code=137", "-n", namespace)

    wait_for(
        lambda: pod(kubectl, namespace, "ok")["status"]["phase"] == "Succeeded", "pod ok to succeed"
    )
    wait_for(
        lambda: pod(kubectl, namespace, "killed")["status"]["phase"] == "Failed",
        "pod killed to fail",
    )
    ok = pod(kubectl, namespace, "ok")["status"]["containerStatuses"][0]["state"]["terminated"]
    assert ok["exitCode"] == 0
    assert json.loads(ok["message"]) == {"step": 7}
    killed = pod(kubectl, namespace, "killed")["status"]["containerStatuses"][0]
    assert killed["state"]["terminated"]["exitCode"] == 137


def test_crd_schema_violations_are_rejected(kubectl: Kubectl, namespace: str) -> None:
    bad = yaml.safe_dump(
        {
            "apiVersion": "scheduling.x-k8s.io/v1alpha1",
            "kind": "PodGroup",
            "metadata": {"name": "gang"},
            "spec": {"minMember": 0},
        }
    )
    result = kubectl("apply", "-n", namespace, "-f", "-", input=bad, check=False)
    assert result.returncode != 0
    assert "spec.minMember" in result.stderr
    assert "should be greater than or equal to 1" in result.stderr


def test_nodes_advertise_gpus_and_rdma(kubectl: Kubectl) -> None:
    nodes = json.loads(kubectl("get", "nodes", "-o", "json").stdout)["items"]
    gpu_nodes = [n for n in nodes if "nvidia.com/gpu" in n["status"]["allocatable"]]
    assert len(gpu_nodes) >= 4
    for node in gpu_nodes:
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
        assert "rdma/rdma_shared_device_a" in node["status"]["allocatable"]
        assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in node[
            "spec"
        ]["taints"]
    assert any("nvidia.com/gpu" not in n["status"]["allocatable"] for n in nodes)
