"""TrainingRuntimes: the pure merge of a job over its runtime (precedence, defaults, locks), and
the runner that reads the runtime once, snapshots it, and retries while it is missing."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakeapi import FakeApi, lookup

import trainforge_contract as contract
from trainforge import workqueue
from trainforge.api import InvalidSpec, parse_training_job
from trainforge.reconcile.core import Key
from trainforge.reconcile.runner import ChildRecord, TrainingJobRunner, child_record
from trainforge.reconcile.runtime import RuntimeProblem, RuntimeSource, effective_spec, resolve
from trainforge.reconcile.trainingjob import PodView, pod_view
from trainforge.render.common import RenderSettings

REPO = Path(__file__).resolve().parents[2]
RDMA_TEMPLATE: dict[str, Any] = {
    "image": "registry.example/trainer:2",
    "env": [{"name": "NCCL_ALGO", "value": "Ring"}, {"name": "TEAM", "value": "platform"}],
    "trainer": {"recipe": "gpt", "precision": "bf16", "optimizer": {"lr": 0.001}},
    "resources": {"gpusPerWorker": 8, "requests": {"cpu": "32", "memory": "256Gi"}},
    "network": {
        "rdma": {
            "networks": [{"name": "rail-0"}, {"name": "rail-1"}],
            "resources": {"rdma/rdma_shared_device_a": 1},
            "nccl": {"ibHCA": "mlx5_0,mlx5_1", "gidIndex": 3},
        }
    },
    "checkpoint": {"volumeClaimTemplate": {"size": "500Gi", "storageClassName": "fast"}},
    "scheduling": {
        "priorityClassName": "training",
        "tolerations": [{"key": "fabric", "operator": "Exists"}],
    },
    "podTemplate": {"metadata": {"labels": {"fabric": "ib"}}},
}

# What the API server stores for a job that sets only workers, runtimeRef and trainer: the
# schema defaults filled in (crds/trainingjobs.trainforge.io.yaml).
SERVER_DEFAULTS: dict[str, Any] = {
    "workers": 1,
    "resources": {"gpusPerWorker": 0, "gpuResource": "nvidia.com/gpu", "sharedMemory": "1Gi"},
    "failurePolicy": {"maxRestarts": 3},
    "suspend": False,
    "scheduling": {"spreadWorkers": False, "gang": {"policy": "None"}},
}


def runtime(locked: list[str] | None = None, **template: Any) -> RuntimeSource:
    spec = {"template": {**RDMA_TEMPLATE, **template}, "locked": locked or []}
    return RuntimeSource("ClusterTrainingRuntime", "rdma", 1, spec)


def job(**spec: Any) -> dict[str, Any]:
    return {
        **copy.deepcopy(SERVER_DEFAULTS),
        "runtimeRef": {"name": "rdma", "kind": "ClusterTrainingRuntime"},
        **spec,
    }


# --- the merge -----------------------------------------------------------------------------


def test_a_job_that_sets_only_its_intent_gets_everything_else_from_the_runtime() -> None:
    spec = effective_spec(job(workers=4, trainer={"maxSteps": 100}), runtime())
    assert spec.workers == 4
    assert spec.image == "registry.example/trainer:2"
    assert spec.resources.gpus_per_worker == 8  # the job's defaulted 0 did not override it
    assert spec.network and spec.network.rdma
    assert [n.name for n in spec.network.rdma.networks] == ["rail-0", "rail-1"]
    assert spec.checkpoint and spec.checkpoint.volume_claim_template
    assert spec.checkpoint.volume_claim_template.storage_class_name == "fast"
    assert spec.scheduling.priority_class_name == "training"
    # trainer merges key by key, nested objects too
    assert spec.trainer == {
        "recipe": "gpt",
        "precision": "bf16",
        "optimizer": {"lr": 0.001},
        "maxSteps": 100,
    }
    assert spec.runtime_ref is None  # resolved: what the operator renders has no reference


@pytest.mark.parametrize(
    ("override", "check"),
    [
        ({"image": "mine:1"}, lambda s: s.image == "mine:1"),
        (
            {"resources": {**SERVER_DEFAULTS["resources"], "gpusPerWorker": 4}},
            lambda s: (
                s.resources.gpus_per_worker == 4
                and s.resources.requests == {"cpu": "32", "memory": "256Gi"}
            ),
        ),
        (
            {"env": [{"name": "TEAM", "value": "nlp"}]},
            lambda s: (
                [(e.name, e.value) for e in s.env] == [("NCCL_ALGO", "Ring"), ("TEAM", "nlp")]
            ),
        ),
        (
            {"trainer": {"precision": "fp16", "optimizer": {"lr": 0.01}}},
            lambda s: (
                s.trainer == {"recipe": "gpt", "precision": "fp16", "optimizer": {"lr": 0.01}}
            ),
        ),
        (
            {"network": {"rdma": {"networks": [{"name": "rail-9"}]}}},
            lambda s: (
                [n.name for n in s.network.rdma.networks] == ["rail-9"]
                and s.network.rdma.nccl.gid_index == 3
            ),
        ),
        (
            {"checkpoint": {"claimName": "mine", "everySteps": 50}},
            lambda s: (
                s.checkpoint.claim_name == "mine"
                and s.checkpoint.volume_claim_template is None
                and s.checkpoint.every_steps == 50
            ),
        ),
        (
            {"checkpoint": {"everySteps": 50, "mountPath": "/checkpoints", "keepLast": 3}},
            lambda s: (
                s.checkpoint.volume_claim_template.size == "500Gi"
                and s.checkpoint.every_steps == 50
            ),
        ),
        (
            {
                "scheduling": {
                    **SERVER_DEFAULTS["scheduling"],
                    "tolerations": [{"key": "team", "operator": "Exists"}],
                }
            },
            lambda s: [t["key"] for t in s.scheduling.tolerations] == ["fabric", "team"],
        ),
        (
            {"podTemplate": {"metadata": {"labels": {"team": "nlp"}}}},
            lambda s: s.pod_template.metadata.labels == {"fabric": "ib", "team": "nlp"},
        ),
        (
            {"failurePolicy": {"maxRestarts": 10}},
            lambda s: s.failure_policy.max_restarts == 10,
        ),
    ],
    ids=[
        "image",
        "gpus-keep-the-runtime-requests",
        "env-by-name",
        "trainer-key-by-key",
        "networks-replaced-nccl-kept",
        "own-claim-replaces-the-runtime-claim",
        "cadence-only-keeps-the-runtime-claim",
        "tolerations-appended",
        "pod-labels-added",
        "failure-policy",
    ],
)
def test_what_the_job_sets_wins(override: dict[str, Any], check: Any) -> None:
    assert check(effective_spec(job(**override), runtime()))


def test_a_job_value_equal_to_its_schema_default_takes_the_runtime_value() -> None:
    """The server stores gpusPerWorker: 0 for a job that never wrote it; so 0 cannot undo the
    runtime's GPUs (docs/platform.md says so)."""
    spec = effective_spec(job(), runtime(failurePolicy={"maxRestarts": 7}))
    assert spec.resources.gpus_per_worker == 8
    assert spec.failure_policy.max_restarts == 7


def test_a_locked_field_the_job_changes_is_refused_naming_field_runtime_and_fix() -> None:
    rt = runtime(locked=["network", "scheduling.priorityClassName"])
    with pytest.raises(RuntimeProblem) as raised:
        resolve(job(network={"rdma": {"networks": [{"name": "rail-9"}]}}), rt)
    assert raised.value.reason == "RuntimeLocked"
    (message,) = raised.value.messages
    assert message.startswith("spec.network: ClusterTrainingRuntime rdma locks network")
    assert "remove spec.network from the TrainingJob" in message
    with pytest.raises(RuntimeProblem, match=r"spec.scheduling.priorityClassName: .* locks"):
        resolve(job(scheduling={"priorityClassName": "urgent"}), rt)


def test_a_locked_field_the_job_repeats_or_leaves_alone_is_fine() -> None:
    rt = runtime(locked=["network", "image", "scheduling.priorityClassName"])
    same = job(
        image=RDMA_TEMPLATE["image"],
        network={"rdma": {"nccl": {"gidIndex": 3}}},
        scheduling={**SERVER_DEFAULTS["scheduling"], "nodeSelector": {"zone": "a"}},
    )
    spec = effective_spec(same, rt)
    assert spec.scheduling.node_selector == {"zone": "a"}  # not locked: the job may set it


def test_a_lock_on_a_field_the_runtime_leaves_unset_keeps_jobs_from_setting_it() -> None:
    with pytest.raises(RuntimeProblem, match=r"spec.command: .* locks command"):
        resolve(job(command=["python", "x.py"]), runtime(locked=["command"]))


def test_a_missing_runtime_names_itself_and_the_fix() -> None:
    with pytest.raises(RuntimeProblem) as raised:
        resolve(job(), RuntimeSource("TrainingRuntime", "gone"))
    assert raised.value.reason == "RuntimeNotFound"
    assert raised.value.messages == [
        "spec.runtimeRef: TrainingRuntime gone does not exist; create it (docs/platform.md) or "
        "fix the name; the job starts once it exists"
    ]


def test_an_invalid_runtime_or_an_invalid_result_names_the_runtime() -> None:
    bad = RuntimeSource("ClusterTrainingRuntime", "rdma", 1, {"template": {"workers": 3}})
    with pytest.raises(RuntimeProblem) as raised:
        resolve(job(), bad)
    assert raised.value.reason == "InvalidRuntime"
    assert "ClusterTrainingRuntime rdma is invalid: spec.template.workers" in str(
        raised.value.messages
    )
    with pytest.raises(InvalidSpec) as invalid:
        effective_spec(job(procsPerWorker=16), runtime())
    assert not isinstance(invalid.value, RuntimeProblem)
    (message,) = invalid.value.messages
    assert "procsPerWorker (16) must not exceed resources.gpusPerWorker (8)" in message
    assert message.endswith("(in the spec resolved with ClusterTrainingRuntime rdma)")


def test_without_a_claim_from_job_or_runtime_the_checkpoint_is_invalid() -> None:
    rt = runtime(checkpoint={"everySteps": 100})
    with pytest.raises(InvalidSpec, match=r"spec.checkpoint: set exactly one"):
        effective_spec(job(), rt)


def test_a_job_with_a_runtime_ref_needs_no_claim_of_its_own() -> None:
    manifest = {
        "apiVersion": contract.API_VERSION,
        "kind": "TrainingJob",
        "metadata": {"name": "j"},
        "spec": {"runtimeRef": {"name": "rdma"}, "checkpoint": {"everySteps": 10}},
    }
    assert parse_training_job(manifest).spec.runtime_ref is not None
    del manifest["spec"]["runtimeRef"]  # type: ignore[attr-defined]
    with pytest.raises(InvalidSpec, match=r"spec.checkpoint: set exactly one"):
        parse_training_job(manifest)


# --- the runner ----------------------------------------------------------------------------

KEY = ("ml", "llm")
CLUSTER_RUNTIME = ("ClusterTrainingRuntime", "", "rdma")


def runtime_object(template: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": contract.API_VERSION,
        "kind": "ClusterTrainingRuntime",
        "metadata": {"name": "rdma", "namespace": "", "generation": generation},
        "spec": {"template": template},
    }


class World:
    def __init__(self, spec: dict[str, Any], settings: RenderSettings | None = None) -> None:
        self.api = FakeApi()
        self.api.add(
            {
                "apiVersion": contract.API_VERSION,
                "kind": "TrainingJob",
                "metadata": {
                    "name": "llm",
                    "namespace": "ml",
                    "generation": 1,
                    "creationTimestamp": "2026-11-30T04:00:00Z",
                },
                "spec": spec,
            }
        )
        self.runner = TrainingJobRunner(
            jobs=lookup(self.api, "TrainingJob"),
            pods=self.pods,
            children=self.children,
            settings=settings or RenderSettings(),
            api=self.api,
        )

    def pods(self, key: Key) -> list[tuple[str, PodView]]:
        return [
            (p["metadata"]["ownerReferences"][0]["uid"], pod_view(p))
            for p in self.api.of_kind("Pod")
        ]

    def children(self, key: Key) -> list[ChildRecord]:
        return [child_record(o) for o in self.api.of_kind("Service")]

    @property
    def job(self) -> dict[str, Any]:
        return self.api.objects[("TrainingJob", *KEY)]

    def condition(self, type_: str) -> dict[str, Any]:
        return next(c for c in self.job["status"]["conditions"] if c["type"] == type_)

    def images(self) -> set[str]:
        return {c["image"] for p in self.api.of_kind("Pod") for c in p["spec"]["containers"]}


SMALL = {"image": "trainer:2", "resources": {"gpusPerWorker": 2}}


def test_missing_runtime_is_stalled_and_retried_then_the_job_starts_when_it_appears() -> None:
    world = World(job(workers=2))
    with pytest.raises(workqueue.Backoff, match="ClusterTrainingRuntime rdma does not exist"):
        world.runner.reconcile(KEY)
    stalled = world.condition("Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "RuntimeNotFound")
    assert world.api.of_kind("Pod") == []
    world.api.add(runtime_object(SMALL))
    world.runner.reconcile(KEY)
    assert len(world.api.of_kind("Pod")) == 2
    assert world.images() == {"trainer:2"}
    assert world.condition("Stalled")["status"] == "False"


def test_the_runtime_is_snapshotted_so_a_later_edit_does_not_change_the_job() -> None:
    world = World(job(workers=2))
    world.api.add(runtime_object(SMALL))
    world.runner.reconcile(KEY)
    status = world.job["status"]
    assert status["runtime"]["spec"]["template"]["image"] == "trainer:2"
    assert status["effectiveSpec"]["image"] == "trainer:2"
    assert status["effectiveSpec"]["resources"]["gpusPerWorker"] == 2
    reads = world.api.writes("get", "ClusterTrainingRuntime")
    world.api.add(runtime_object({**SMALL, "image": "trainer:3"}, generation=2))
    for _ in range(3):
        world.runner.reconcile(KEY)
    assert world.api.writes("get", "ClusterTrainingRuntime") == reads  # read once, at start
    assert world.api.writes("delete", "Pod") == 0
    assert world.images() == {"trainer:2"}
    assert world.job["status"]["runtime"]["generation"] == 1


def test_a_refused_job_edit_keeps_the_snapshot_so_the_fix_does_not_restart_the_gang() -> None:
    world = World(job(workers=1))
    locked = {**runtime_object(SMALL), "spec": {"template": SMALL, "locked": ["image"]}}
    world.api.add(locked)
    world.runner.reconcile(KEY)
    edited = copy.deepcopy(locked)
    edited["spec"]["template"]["image"] = "trainer:3"
    edited["metadata"]["generation"] = 2
    world.api.add(edited)
    world.job["spec"]["image"] = "mine:1"  # refused: the runtime locks image
    world.job["metadata"]["generation"] = 2
    world.runner.reconcile(KEY)
    assert world.condition("Stalled")["reason"] == "RuntimeLocked"
    assert world.job["status"]["runtime"]["generation"] == 1
    del world.job["spec"]["image"]  # the fix the message names
    world.job["metadata"]["generation"] = 3
    world.runner.reconcile(KEY)
    assert world.condition("Stalled")["status"] == "False"
    assert world.api.writes("delete", "Pod") == 0
    assert world.images() == {"trainer:2"}


def test_a_suspended_job_picks_up_the_runtime_edit_when_it_resumes() -> None:
    world = World(job(workers=1))
    world.api.add(runtime_object(SMALL))
    world.runner.reconcile(KEY)
    world.api.add(runtime_object({**SMALL, "image": "trainer:3"}, generation=2))
    world.job["spec"]["suspend"] = True
    world.job["metadata"]["generation"] = 2
    world.runner.reconcile(KEY)
    world.runner.reconcile(KEY)
    assert world.api.of_kind("Pod") == []
    world.job["spec"]["suspend"] = False
    world.job["metadata"]["generation"] = 3
    world.runner.reconcile(KEY)
    assert world.images() == {"trainer:3"}
    assert world.job["status"]["runtime"]["generation"] == 2


def test_the_default_runtime_applies_to_jobs_without_a_runtime_ref() -> None:
    spec = copy.deepcopy(SERVER_DEFAULTS)
    world = World(spec, RenderSettings(default_runtime="rdma"))
    with pytest.raises(workqueue.Backoff, match="the operator's default runtime: "):
        world.runner.reconcile(KEY)
    world.api.add(runtime_object(SMALL))
    world.runner.reconcile(KEY)
    assert world.images() == {"trainer:2"}
    assert world.job["status"]["runtime"]["name"] == "rdma"


def test_jobs_without_a_runtime_have_no_runtime_status() -> None:
    world = World({**copy.deepcopy(SERVER_DEFAULTS), "image": "trainer:1"})
    world.runner.reconcile(KEY)
    assert "runtime" not in world.job["status"]
    assert "effectiveSpec" not in world.job["status"]
    assert world.api.writes("get", "ClusterTrainingRuntime") == 0


# --- trainforge local run --------------------------------------------------------------------


def test_a_local_run_resolves_the_runtime_from_the_same_file(tmp_path: Path) -> None:
    from trainforge.local.run import load_manifest

    example = (REPO / "examples" / "trainingjob-runtime.yaml").read_text()
    runtime_doc = {
        "apiVersion": contract.API_VERSION,
        "kind": "ClusterTrainingRuntime",
        "metadata": {"name": "rdma-fabric"},
        "spec": {"template": {"image": "trainer:2", "trainer": {"recipe": "mlp"}}},
    }
    alone = tmp_path / "job.yaml"
    alone.write_text(example)
    with pytest.raises(SystemExit, match="ClusterTrainingRuntime rdma-fabric is not in this file"):
        load_manifest(alone)
    both = tmp_path / "both.yaml"
    both.write_text(example + "---\n" + yaml.safe_dump(runtime_doc))
    spec = load_manifest(both)["spec"]
    assert spec["image"] == "trainer:2"
    assert spec["trainer"]["recipe"] == "gpt"  # the job's wins
    assert "runtimeRef" not in spec
