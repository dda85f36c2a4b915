"""The runners (observe, plan, apply on the controller core) against an in-memory API.

What a user would notice: a gang is created once even while the watch lags, a refused child
becomes a Stalled condition with one Event and a backoff, an API error or a 429 backs the key
off (for at least the server's Retry-After), status is written only when it changed and a
removed field is removed, and a name someone else holds is never taken over.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fakeapi import FakeApi, lookup

import trainforge_contract as contract
from trainforge import kube, workqueue
from trainforge.reconcile.core import Key
from trainforge.reconcile.inferenceservice import ChildView, child_view
from trainforge.reconcile.inferenceservice_runner import InferenceServiceRunner
from trainforge.reconcile.runner import ChildRecord, TrainingJobRunner, child_record
from trainforge.reconcile.trainingjob import PodView, pod_view
from trainforge.render.common import RenderSettings

KEY = ("ml", "llm")


def trainingjob(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": contract.API_VERSION,
        "kind": "TrainingJob",
        "metadata": {
            "name": "llm",
            "namespace": "ml",
            "generation": 1,
            "creationTimestamp": "2026-11-23T11:00:00Z",
        },
        "spec": {"workers": 2, "image": "trainer:1", **spec},
    }


def controller_uid(obj: dict[str, Any]) -> str:
    owners = obj["metadata"].get("ownerReferences", [])
    return next((o["uid"] for o in owners if o.get("controller")), "")


class JobWorld:
    """A TrainingJob runner whose watch shows what the fake API holds, or lags behind it."""

    def __init__(self, api: FakeApi) -> None:
        self.api = api
        self.lagging = False  # the watch shows no children yet
        self.job = api.add(trainingjob())
        self.runner = TrainingJobRunner(
            jobs=lookup(api, "TrainingJob"),
            pods=self.pods,
            children=self.children,
            settings=RenderSettings(),
            api=api,
        )

    def pods(self, key: Key) -> list[tuple[str, PodView]]:
        if self.lagging:
            return []
        return [(controller_uid(p), pod_view(p)) for p in self.api.of_kind("Pod")]

    def children(self, key: Key) -> list[ChildRecord]:
        if self.lagging:
            return []
        return [child_record(o) for o in self.api.of_kind("Service")]

    def status(self) -> dict[str, Any]:
        return dict(self.api.objects[("TrainingJob", *KEY)].get("status", {}))


def test_a_new_job_gets_its_gang_once_even_while_the_watch_lags() -> None:
    world = JobWorld(FakeApi())
    world.lagging = True
    for _ in range(3):  # the watch has shown nothing yet: the expectations tell
        world.runner.reconcile(KEY)
    assert world.api.writes("create", "Pod") == 2
    assert world.api.writes("create", "Service") == 1
    assert world.status()["phase"] == "Pending"
    assert world.status()["workers"]["pending"] == 2
    # The pods the first pass created counted as Pending: the later passes wrote nothing.
    assert world.api.writes("patch_status", "TrainingJob") == 1
    world.lagging = False
    for worker in world.api.of_kind("Pod"):
        worker["status"] = {"phase": "Running"}
    world.runner.reconcile(KEY)
    world.runner.reconcile(KEY)
    assert world.status()["phase"] == "Running"
    # Two status writes from a new job to a running one: Pending, then Running.
    assert world.api.writes("patch_status", "TrainingJob") == 2


def test_a_gang_whose_workers_start_one_by_one_is_written_pending_then_running() -> None:
    world = JobWorld(FakeApi())
    world.runner.reconcile(KEY)
    first, second = world.api.of_kind("Pod")
    first["status"] = {"phase": "Running"}
    # Only the counts changed ("1/2 workers running"): the write waits a few seconds.
    wait = world.runner.reconcile(KEY)
    assert wait is not None and 0 < wait <= 10
    assert world.api.writes("patch_status", "TrainingJob") == 1
    second["status"] = {"phase": "Running"}
    world.runner.reconcile(KEY)
    assert world.status()["phase"] == "Running"
    assert world.status()["workers"]["running"] == 2
    assert world.api.writes("patch_status", "TrainingJob") == 2


def test_a_part_started_gang_shows_its_worker_counts_once_the_interval_passed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from trainforge.reconcile import runner as runner_module

    world = JobWorld(FakeApi())
    world.runner.reconcile(KEY)
    world.api.of_kind("Pod")[0]["status"] = {"phase": "Running"}
    world.runner.reconcile(KEY)
    assert world.status()["workers"]["running"] == 0  # postponed
    monkeypatch.setattr(runner_module, "COUNTS_WRITE_INTERVAL_SECONDS", 0.0)  # time passed
    world.runner.reconcile(KEY)
    assert world.status()["phase"] == "Pending"
    assert world.status()["workers"]["running"] == 1
    running = next(c for c in world.status()["conditions"] if c["type"] == "Running")
    assert running["message"] == "1/2 workers running"


def test_the_watch_event_of_our_own_status_write_is_told_from_anyone_elses() -> None:
    world = JobWorld(FakeApi())
    world.runner.reconcile(KEY)
    stored = world.api.objects[("TrainingJob", *KEY)]
    uid, written = stored["metadata"]["uid"], stored["metadata"]["resourceVersion"]
    # Its event needs no reconcile: the runner holds that status already.
    assert world.runner.own_write(uid, written)
    # A later version (the user changed the spec, someone labelled it) does.
    assert not world.runner.own_write(uid, written + "1")
    assert not world.runner.own_write(uid, None)
    world.runner.forget(uid)
    assert not world.runner.own_write(uid, written)


def test_a_refused_pod_is_a_stalled_condition_an_event_and_a_backoff() -> None:
    api = FakeApi()
    world = JobWorld(api)
    api.fail[("create", "Pod")] = kube.KubeError(
        403, "Forbidden", 'pods "llm-worker-0" is forbidden: exceeded quota: gpus'
    )
    assert world.runner.reconcile(KEY) == 0.0  # a new refusal is reported at once
    assert api.writes("create", "Pod") == 1  # the gang's creation stopped at the refusal
    with pytest.raises(workqueue.Backoff, match="exceeded quota"):
        world.runner.reconcile(KEY)
    stalled = next(c for c in world.status()["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True"
    assert "the ResourceQuota admission plugin refused Pod ml/llm-worker-0" in stalled["message"]
    with pytest.raises(workqueue.Backoff, match="exceeded quota"):
        world.runner.reconcile(KEY)
    assert [e[1] for e in api.events].count("AdmissionRejected") == 1  # one Event, not one a try
    del api.fail[("create", "Pod")]  # the quota was raised
    assert world.runner.reconcile(KEY) == 0.0  # that it is gone is reported at once too
    world.runner.reconcile(KEY)
    assert len(api.of_kind("Pod")) == 2
    stalled = next(c for c in world.status()["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "False"


def test_an_api_error_backs_off_and_a_429_waits_at_least_its_retry_after() -> None:
    api = FakeApi()
    world = JobWorld(api)
    api.fail[("create", "Service")] = kube.KubeError(500, "InternalError", "etcd timeout")
    with pytest.raises(workqueue.Backoff, match="etcd timeout") as error:
        world.runner.reconcile(KEY)
    assert error.value.not_before is None
    api.fail[("create", "Service")] = kube.KubeError(
        429, "TooManyRequests", "slow down", retry_after=7
    )
    with pytest.raises(workqueue.Backoff) as error:
        world.runner.reconcile(KEY)
    assert error.value.not_before == 7
    del api.fail[("create", "Service")]
    world.runner.reconcile(KEY)
    assert len(api.of_kind("Pod")) == 2


@pytest.mark.parametrize(
    ("status", "header", "wait"),
    [(429, "3", 3.0), (429, None, 1.0), (503, "2", 2.0), (500, None, None), (409, "5", None)],
)
def test_retry_after_is_read_from_429_and_5xx_answers(
    status: int, header: str | None, wait: float | None
) -> None:
    assert kube.retry_after(status, header) == wait


def test_a_removed_status_field_is_removed_and_forget_drops_the_memory() -> None:
    api = FakeApi()
    world = JobWorld(api)
    world.runner.reconcile(KEY)
    # Someone (an older operator version) left a field the plan does not write.
    api.objects[("TrainingJob", *KEY)]["status"]["legacyField"] = "x"
    world.runner.reconcile(KEY)  # our memory of the written status hides it
    assert "legacyField" in world.status()
    world.runner.forget(world.job["metadata"]["uid"])
    world.runner.reconcile(KEY)
    assert "legacyField" not in world.status()


def test_a_deleted_job_is_not_reconciled() -> None:
    api = FakeApi()
    world = JobWorld(api)
    del api.objects[("TrainingJob", *KEY)]
    assert world.runner.reconcile(KEY) is None
    assert api.calls == []


def inferenceservice() -> dict[str, Any]:
    return {
        "apiVersion": contract.API_VERSION,
        "kind": "InferenceService",
        "metadata": {"name": "llm", "namespace": "ml", "generation": 1},
        "spec": {"model": {"claimName": "weights"}, "image": "server:1"},
    }


class ServiceWorld:
    def __init__(self, api: FakeApi) -> None:
        self.api = api
        self.service = api.add(inferenceservice())
        api.add({"apiVersion": "v1", "kind": "PersistentVolumeClaim", **_meta("weights")})
        self.runner = InferenceServiceRunner(
            services=lookup(api, "InferenceService"),
            jobs=lookup(api, "TrainingJob"),
            children=self.children,
            settings=RenderSettings(),
            pods_cannot_start=lambda key: [],
            api=api,
        )

    def children(self, key: Key) -> list[ChildView]:
        kinds = ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget")
        return [child_view(copy.deepcopy(o)) for kind in kinds for o in self.api.of_kind(kind)]


def _meta(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ml"}}


def test_a_service_applies_its_children_once_and_announces_the_deployment_once() -> None:
    api = FakeApi()
    world = ServiceWorld(api)
    world.runner.reconcile(KEY)
    world.runner.reconcile(KEY)
    assert api.writes("apply", "Deployment") == 1
    assert api.writes("apply", "Service") == 1
    assert [e[1] for e in api.events] == ["Created"]


def test_a_service_never_takes_over_a_name_someone_else_holds() -> None:
    api = FakeApi()
    world = ServiceWorld(api)
    api.add({"apiVersion": "apps/v1", "kind": "Deployment", **_meta("llm")})
    assert world.runner.reconcile(KEY) == 0.0
    assert api.writes("apply", "Deployment") == 0
    with pytest.raises(workqueue.Backoff, match="not controlled by this InferenceService"):
        world.runner.reconcile(KEY)
    stalled = next(
        c
        for c in api.objects[("InferenceService", *KEY)]["status"]["conditions"]
        if c["type"] == "Stalled"
    )
    assert stalled["reason"] == "NameConflict"
    assert api.objects[("Deployment", *KEY)]["metadata"].get("ownerReferences") is None


def test_the_spec_is_parsed_once_per_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainforge.reconcile import runner as runner_module

    parsed: list[int] = []
    real = runner_module.parse_spec

    def counting(job: Any, runtime: Any) -> Any:
        parsed.append(job["metadata"]["generation"])
        return real(job, runtime)

    monkeypatch.setattr(runner_module, "parse_spec", counting)
    api = FakeApi()
    world = JobWorld(api)
    for _ in range(3):
        world.runner.reconcile(KEY)
    assert parsed == [1]
    stored = api.objects[("TrainingJob", *KEY)]
    stored["spec"]["workers"] = 3  # the user scales the job: a new generation
    stored["metadata"]["generation"] = 2
    world.runner.reconcile(KEY)
    assert parsed == [1, 2]
    assert world.status()["workers"]["total"] == 3
