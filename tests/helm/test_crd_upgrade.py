"""CRD upgrades through Helm (docs/install.md, "CRDs" and "Upgrade"), on a control plane of
the module's own: CRDs are cluster-wide, and these tests start without any.

The chart as it was on main before its CRDs became templates (commit BASELINE, taken from git
at test time) shipped them in crds/, which Helm installs once and never upgrades. It is
installed, an operator takes TrainingJobs to Running, and the documented upgrade (the shell
blocks of docs/install.md, run as they are) must then update the CRDs — a manifest using a
field new since BASELINE is refused before and accepted after — while the running jobs keep
their pods and their status. Rollback, an upgrade with crds.install=false and uninstall must
each leave the CRDs and the jobs in place.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from helmtest import CHART, reconciles, run_helm

from kubetest import (
    REPO,
    Cluster,
    Kubectl,
    Operator,
    control_plane,
    make_kubectl,
    start_operator,
    wait_for,
)

pytestmark = pytest.mark.cluster

# main before the CRDs became templates: its chart (0.1.0) has them in crds/.
BASELINE = "3861543"
# The release and namespace docs/install.md uses in its commands.
RELEASE, SYSTEM = "trainforge", "trainforge-system"
JOBS_NAMESPACE = "ml"
# A field of TrainingJob's spec that the new chart's CRD has and BASELINE's lacks: the runtime
# a job references (issue 13). The tests fail, naming the fields that are new, without it.
NEW_FIELD = "runtimeRef"
INSTALL_DOC = REPO / "docs" / "install.md"
UPGRADE, ADOPT = "## Upgrade", "### From chart 0.1.0 (CRDs in `crds/`)"


# --- the CRDs and their schemas ------------------------------------------------------------------


def generated_crds(chart: Path) -> dict[str, dict[str, Any]]:
    """The CRDs a chart ships, by name: BASELINE's crds/ or this chart's files/crds/."""
    folder = chart / "crds" if (chart / "crds").is_dir() else chart / "files" / "crds"
    return {p.stem: yaml.safe_load(p.read_text()) for p in sorted(folder.glob("*.yaml"))}


def schema(crd: dict[str, Any]) -> dict[str, Any]:
    [version] = [v for v in crd["spec"]["versions"] if v["storage"]]
    return dict(version["schema"]["openAPIV3Schema"])


def field_paths(node: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    """Every field of a schema by its dotted path ("spec.workers"), with its schema."""
    out = {}
    for name, sub in node.get("properties", {}).items():
        path = f"{prefix}{name}"
        out[path] = sub
        out |= field_paths(sub, f"{path}.")
        if "items" in sub:
            out |= field_paths(sub["items"], f"{path}[].")
    return out


def example(node: dict[str, Any]) -> Any:
    """A small value the schema accepts: its default or first enum value, or a made-up one
    with the required fields (and `name`, so a reference names something)."""
    if "default" in node:
        return node["default"]
    if "enum" in node:
        return node["enum"][0]
    kind = node.get("type")
    if kind == "object":
        properties = node.get("properties", {})
        wanted = set(node.get("required", [])) | ({"name"} & properties.keys())
        return {k: example(properties[k]) for k in sorted(wanted)}
    if kind == "array":
        return [example(node["items"]) for _ in range(node.get("minItems", 0))]
    return {"string": "rdma-fabric", "boolean": True}.get(str(kind), node.get("minimum", 1))


def new_field_value(old: Path, new: Path) -> Any:
    crd, path = "trainingjobs.trainforge.io", f"spec.{NEW_FIELD}"
    old_fields = field_paths(schema(generated_crds(old)[crd]))
    new_fields = field_paths(schema(generated_crds(new)[crd]))
    added = sorted(new_fields.keys() - old_fields.keys())
    assert path not in old_fields, f"{path} is already in {crd} of {BASELINE}"
    if path not in new_fields:
        pytest.fail(
            f"the chart's {crd} has no {path}, so nothing shows that an upgrade brings new "
            f"fields; fields new since {BASELINE}: {added or 'none'}"
        )
    return example(new_fields[path])


# --- the cluster ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bare_cluster() -> Iterator[Cluster]:
    with control_plane("trainforge-test-crd-upgrade-") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def bare_kubectl(bare_cluster: Cluster) -> Kubectl:
    return make_kubectl(bare_cluster.kubeconfig)


def trainforge_crds(kubectl: Kubectl) -> dict[str, dict[str, Any]]:
    out = json.loads(kubectl("get", "crd", "-o", "json").stdout)["items"]
    return {c["metadata"]["name"]: c for c in out if c["spec"]["group"] == "trainforge.io"}


@pytest.fixture(scope="module")
def baseline_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", BASELINE, "helm/trainforge"], capture_output=True
    )
    if archive.returncode != 0:
        pytest.fail(
            f"the baseline chart (helm/trainforge at commit {BASELINE}, main before the CRDs "
            f"became templates) is not in this checkout: {archive.stderr.decode().strip()}. "
            f"Fetch the commit (`git fetch origin {BASELINE}`) or run from a full clone."
        )
    dest = tmp_path_factory.mktemp("baseline")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest / "helm" / "trainforge"


def documented(section: str, marker: str) -> str:
    """The first sh block after the heading `section` of docs/install.md that contains
    `marker`."""
    text = INSTALL_DOC.read_text()
    assert f"\n{section}\n" in text, f"docs/install.md has no section {section!r}"
    blocks = re.findall(r"^```sh\n(.*?)^```", text.split(f"\n{section}\n", 1)[1], re.M | re.S)
    found = [b for b in blocks if marker in b]
    assert found, f"docs/install.md has no sh block with {marker!r} in {section!r}"
    return found[0]


def run_documented(cluster: Cluster, helm: Path, commands: str, extra: str = "") -> None:
    """Runs a block of docs/install.md as a user would: bash in the repository, with this
    cluster's kubeconfig and the test's helm first on the PATH. `extra` is appended to its
    last command."""
    env = {
        "KUBECONFIG": str(cluster.kubeconfig),
        "PATH": f"{helm.parent}:{os.environ['PATH']}",
        "HOME": str(cluster.kubeconfig.parent),
    }
    script = commands.rstrip("\n") + (f" {extra}" if extra else "")
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{script}\nfailed:\n{result.stderr}{result.stdout}"


def helm_in(cluster: Cluster, helm: Path, *args: str, check: bool = True) -> str:
    result = run_helm(
        helm, *args, f"--namespace={SYSTEM}", kubeconfig=cluster.kubeconfig, check=check
    )
    return result.stdout + result.stderr


# --- jobs ----------------------------------------------------------------------------------------


def job(name: str, **spec: Any) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "trainforge.io/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": name, "namespace": JOBS_NAMESPACE},
            "spec": {"image": "example.com/trainer:1", **spec},
        }
    )


JOBS = {"gang": {"workers": 2}, "solo": {"workers": 1}}


@dataclass(frozen=True)
class Snapshot:
    """What must not change for running jobs: their objects, pods and status."""

    jobs: dict[str, tuple[str, int, dict[str, Any]]]  # name: (uid, generation, status)
    pods: dict[str, str]  # name: uid, live pods only

    @classmethod
    def take(cls, kubectl: Kubectl) -> Snapshot:
        tjs = json.loads(kubectl("get", "tj", "-n", JOBS_NAMESPACE, "-o", "json").stdout)
        pods = json.loads(kubectl("get", "pods", "-n", JOBS_NAMESPACE, "-o", "json").stdout)
        return cls(
            jobs={
                j["metadata"]["name"]: (
                    j["metadata"]["uid"],
                    j["metadata"]["generation"],
                    j.get("status", {}),
                )
                for j in tjs["items"]
                if j["metadata"]["name"] in JOBS
            },
            pods={
                p["metadata"]["name"]: p["metadata"]["uid"]
                for p in pods["items"]
                if not p["metadata"].get("deletionTimestamp")
                and p["metadata"]["labels"].get("trainforge.io/job-name") in JOBS
            },
        )

    def running(self) -> bool:
        return len(self.pods) == sum(s["workers"] for s in JOBS.values()) and all(
            status.get("phase") == "Running" for _, _, status in self.jobs.values()
        )


@dataclass
class OldRelease:
    operator: Operator
    before: Snapshot


@pytest.fixture(scope="module")
def old_release(
    bare_cluster: Cluster,
    bare_kubectl: Kubectl,
    helm: Path,
    baseline_chart: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OldRelease]:
    """BASELINE's chart installed (its crds/ creates the old CRDs) and an operator running its
    jobs."""
    kubectl = bare_kubectl
    assert not trainforge_crds(kubectl), "the cluster must start without trainforge's CRDs"
    run_helm(
        helm,
        "install",
        RELEASE,
        str(baseline_chart),
        f"--namespace={SYSTEM}",
        "--create-namespace",
        kubeconfig=bare_cluster.kubeconfig,
    )
    kubectl("create", "namespace", JOBS_NAMESPACE)
    wait_for(
        lambda: kubectl("get", "sa", "default", "-n", JOBS_NAMESPACE, check=False).returncode == 0,
        "the default ServiceAccount of the jobs' namespace",
    )
    tmp = tmp_path_factory.mktemp("crd-upgrade-operator")
    operator = start_operator(
        bare_cluster.kubeconfig,
        tmp / "operator.log",
        f"--namespace={JOBS_NAMESPACE}",
        "--log-format=plain",
    )
    try:
        for name, spec in JOBS.items():
            kubectl("apply", "-f", "-", input=job(name, **spec))
        before = wait_for(
            lambda: (s := Snapshot.take(kubectl)).running() and s, "the jobs to run", timeout=90
        )
        yield OldRelease(operator, before)  # type: ignore[arg-type]
    except AssertionError as e:
        raise AssertionError(f"{e}\noperator log (end):\n{operator.logs()[-4000:]}") from None
    finally:
        operator.stop()
    assert "Traceback" not in operator.logs(), operator.logs()[-5000:]


# --- the tests -----------------------------------------------------------------------------------


def test_a_fresh_install_creates_the_crds_and_uninstall_keeps_them(
    bare_cluster: Cluster, bare_kubectl: Kubectl, helm: Path
) -> None:
    """The chart on a cluster that has never seen trainforge. (Runs first: the module's other
    tests start from BASELINE's chart on a cluster without the CRDs, so it deletes them.)"""
    assert not trainforge_crds(bare_kubectl)
    names = sorted(generated_crds(CHART))
    try:
        helm_in(bare_cluster, helm, "install", "fresh", str(CHART), "--create-namespace")
        bare_kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in names)
        )
        # The example runtime, whose kind is one of those CRDs, as docs/platform.md says:
        # enabled on an upgrade once they exist.
        helm_in(
            bare_cluster,
            helm,
            "upgrade",
            "fresh",
            str(CHART),
            "--reset-then-reuse-values",
            "--set=exampleRuntime.enabled=true",
        )
        bare_kubectl("get", "clustertrainingruntime", "rdma-fabric")
        annotations = {
            name: crd["metadata"]["annotations"]
            for name, crd in trainforge_crds(bare_kubectl).items()
        }
        for name in names:
            assert annotations[name]["helm.sh/resource-policy"] == "keep", annotations
            assert annotations[name]["meta.helm.sh/release-name"] == "fresh", annotations

        out = helm_in(bare_cluster, helm, "uninstall", "fresh", "--wait")
        assert "These resources were kept due to the resource policy" in out, out
        assert sorted(trainforge_crds(bare_kubectl)) == names
    finally:
        helm_in(bare_cluster, helm, "uninstall", "fresh", "--wait", check=False)
        bare_kubectl("delete", "crd", "--ignore-not-found", *names)


def test_plain_upgrade_refuses_to_adopt_the_old_crds_and_changes_nothing(
    bare_cluster: Cluster,
    bare_kubectl: Kubectl,
    helm: Path,
    baseline_chart: Path,
    old_release: OldRelease,
) -> None:
    crds = trainforge_crds(bare_kubectl)
    out = helm_in(bare_cluster, helm, "upgrade", RELEASE, str(CHART), check=False)
    assert "exists and cannot be imported into the current release" in out, out
    assert "invalid ownership metadata" in out, out
    assert trainforge_crds(bare_kubectl) == crds
    assert Snapshot.take(bare_kubectl) == old_release.before
    # The old schema is still in place: it refuses the new field.
    value = new_field_value(baseline_chart, CHART)
    refused = bare_kubectl(
        "apply", "-f", "-", input=job("uses-new-field", **{NEW_FIELD: value}), check=False
    )
    assert refused.returncode != 0 and f"spec.{NEW_FIELD}" in refused.stderr, refused


def test_documented_upgrade_updates_the_crds_and_keeps_the_jobs_running(
    bare_cluster: Cluster,
    bare_kubectl: Kubectl,
    helm: Path,
    baseline_chart: Path,
    old_release: OldRelease,
) -> None:
    kubectl, operator = bare_kubectl, old_release.operator
    run_documented(bare_cluster, helm, documented(ADOPT, "meta.helm.sh/release-name="))
    run_documented(bare_cluster, helm, documented(UPGRADE, f"helm upgrade {RELEASE} "))

    live = trainforge_crds(kubectl)
    for name, crd in generated_crds(CHART).items():
        assert schema(live[name]) == schema(crd), f"{name}: the upgrade left the old schema"
        assert live[name]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"

    # The operator reconciles every job a few more times under the new schema …
    seen = reconciles(operator)
    wait_for(lambda: reconciles(operator) >= seen + 2 * len(JOBS), "reconciles after the upgrade")
    # … and they keep their pods and their status.
    assert Snapshot.take(kubectl) == old_release.before

    value = new_field_value(baseline_chart, CHART)
    kubectl("apply", "-f", "-", input=job("uses-new-field", **{NEW_FIELD: value}))
    stored = json.loads(
        kubectl("get", "tj", "uses-new-field", "-n", JOBS_NAMESPACE, "-o", "json").stdout
    )
    kept = stored["spec"][NEW_FIELD]  # with the schema's defaults filled in
    assert value.items() <= kept.items() if isinstance(value, dict) else kept == value, kept


def test_rollback_upgrades_and_uninstall_keep_the_crds_and_the_jobs(
    bare_cluster: Cluster, bare_kubectl: Kubectl, helm: Path, old_release: OldRelease
) -> None:
    kubectl = bare_kubectl
    upgraded = {name: schema(crd) for name, crd in trainforge_crds(kubectl).items()}
    upgrade = documented(UPGRADE, f"helm upgrade {RELEASE} ")

    def unchanged(step: str) -> None:
        crds = {name: schema(crd) for name, crd in trainforge_crds(kubectl).items()}
        assert crds == upgraded, f"after {step} the CRDs are not the upgraded ones"
        now = Snapshot.take(kubectl)
        assert (now.pods, now.jobs.keys()) == (
            old_release.before.pods,
            old_release.before.jobs.keys(),
        ), f"after {step}"

    # Back to BASELINE's revision, which has no CRD templates: Helm neither deletes the CRDs
    # nor puts the old schema back.
    helm_in(bare_cluster, helm, "rollback", RELEASE, "1", "--wait")
    unchanged("helm rollback")
    # The CRDs still carry the release's ownership, so the upgrade takes them back as they are.
    run_documented(bare_cluster, helm, upgrade)
    unchanged("upgrading again")
    run_documented(bare_cluster, helm, upgrade, extra="--set=crds.install=false")
    unchanged("an upgrade with crds.install=false")
    run_documented(bare_cluster, helm, upgrade, extra="--set=crds.install=true")

    out = helm_in(bare_cluster, helm, "uninstall", RELEASE, "--wait")
    assert "These resources were kept due to the resource policy" in out, out
    unchanged("helm uninstall")
    # The same release name and namespace take the kept CRDs over again.
    helm_in(bare_cluster, helm, "install", RELEASE, str(CHART))
    unchanged("installing again")
