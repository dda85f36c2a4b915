"""kopf wiring only: watch events become keys in a work queue; reconcile/ does the work.

No kopf state lives on the objects: there are no on.create/on.update handlers (so no
last-handled-configuration or progress annotations) and no timers (which would force a
finalizer and block deletion whenever the operator is down). Drift and time-based rules
(deadlines, TTLs) are covered by the queue's requeue-after and a periodic resync.

Every handler here is `async` and quick (a projection of the object, or a key into a queue):
kopf runs a sync handler in a thread pool, and that hand-off per handler per watch event cost
more CPU than the handlers themselves (bench/REPORT.md). The reconcile itself runs in the
work queue's own threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
from prometheus_client import start_http_server

import trainforge_contract as contract
from trainforge import kube
from trainforge.leader import LeaderElector, LeaseConfig
from trainforge.progress.policy import WRITE_INTERVAL_SECONDS
from trainforge.progress.receiver import PodIdentity, ProgressReceiver, pod_identity, serve
from trainforge.progress.store import ProgressStore
from trainforge.reconcile.inferenceservice import ChildView, child_view
from trainforge.reconcile.inferenceservice_runner import InferenceServiceRunner
from trainforge.reconcile.pods import cannot_start
from trainforge.reconcile.runner import ChildRecord, Key, TrainingJobRunner, child_record
from trainforge.reconcile.trainingjob import PodView, pod_view
from trainforge.settings import Settings
from trainforge.workqueue import WorkQueue

logger = logging.getLogger(__name__)

POD_EVENT_DELAY_SECONDS = 0.2
WORKER_LABELS = {
    contract.LABEL_MANAGED_BY: contract.MANAGED_BY,
    contract.LABEL_JOB_NAME: kopf.PRESENT,
}


@kopf.index(contract.GROUP, contract.VERSION, "trainingjobs")
async def trainingjobs(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Key, Any]:
    return {(namespace, name): dict(body)}


@kopf.index("", "v1", "pods", labels=WORKER_LABELS)
async def trainingjob_pods(
    namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, tuple[str, PodView]]:
    owner = next(
        (
            o["uid"]
            for o in body.get("metadata", {}).get("ownerReferences", [])
            if o.get("controller")
        ),
        "",
    )
    return {(namespace, labels[contract.LABEL_JOB_NAME]): (owner, pod_view(dict(body)))}


def _job_child(namespace: str, labels: kopf.Labels, body: kopf.Body) -> dict[Key, ChildRecord]:
    return {(namespace, labels[contract.LABEL_JOB_NAME]): child_record(dict(body))}


@kopf.index("", "v1", "pods", labels=WORKER_LABELS)
async def progress_pods(
    namespace: str, name: str, body: kopf.Body, **_: Any
) -> dict[Key, PodIdentity]:
    """(namespace, pod name) -> who the pod is: the progress endpoint's pod lookup."""
    return {(namespace, name): pod_identity(dict(body))}


@kopf.index("", "v1", "services", labels=WORKER_LABELS)
async def trainingjob_services(
    namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, ChildRecord]:
    return _job_child(namespace, labels, body)


@kopf.index("", "v1", "persistentvolumeclaims", labels=WORKER_LABELS)
async def trainingjob_claims(
    namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, ChildRecord]:
    return _job_child(namespace, labels, body)


@kopf.on.event(contract.GROUP, contract.VERSION, "trainingjobs")
async def trainingjob_changed(
    type: str,
    namespace: str,
    name: str,
    uid: str,
    meta: kopf.Meta,
    memo: kopf.Memo,
    inferenceservices_by_job: kopf.Index[Key, str],
    **_: Any,
) -> None:
    if type == "DELETED":
        memo.trainingjob_runner.forget(uid)
        memo.progress_store.forget(uid)
    if not memo.trainingjob_runner.own_write(uid, meta.get("resourceVersion")):
        memo.trainingjob_queue.add((namespace, name))
    # A job's status.checkpoint (or its existence) decides what its InferenceServices serve.
    # One handler for both kinds: kopf's cost is per handler per event.
    for service in inferenceservices_by_job.get((namespace, name), []):
        memo.inference_queue.add((namespace, service))


@kopf.on.event("", "v1", "services", labels=WORKER_LABELS, id="trainingjob-services-changed")
@kopf.on.event(
    "", "v1", "persistentvolumeclaims", labels=WORKER_LABELS, id="trainingjob-claims-changed"
)
@kopf.on.event("", "v1", "pods", labels=WORKER_LABELS)
async def trainingjob_pod_changed(
    namespace: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    # Pods of a gang change together (scheduled, started, ended within milliseconds): a short
    # delay folds their events into one reconcile and one status write.
    memo.trainingjob_queue.add_after(
        (namespace, labels[contract.LABEL_JOB_NAME]), POD_EVENT_DELAY_SECONDS
    )


def watch_kueue_workloads() -> None:
    """`run --kueue`: an admission or eviction is a change of a job's Workload."""
    kopf.on.event(
        "kueue.x-k8s.io", "v1beta2", "workloads", labels=WORKER_LABELS, id="trainingjob-workloads"
    )(trainingjob_pod_changed)


# --- InferenceServices --------------------------------------------------------------------

INFERENCE_LABELS = {
    contract.LABEL_MANAGED_BY: contract.MANAGED_BY,
    contract.LABEL_INFERENCE_SERVICE: kopf.PRESENT,
}
# Every child kind of an InferenceService as (group, version, plural).
INFERENCE_CHILDREN = (
    ("apps", "v1", "deployments"),
    ("", "v1", "services"),
    ("autoscaling", "v2", "horizontalpodautoscalers"),
    ("policy", "v1", "poddisruptionbudgets"),
)


@kopf.index(contract.GROUP, contract.VERSION, "inferenceservices")
async def inferenceservices(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Key, Any]:
    return {(namespace, name): dict(body)}


@kopf.index(contract.GROUP, contract.VERSION, "inferenceservices")
async def inferenceservices_by_job(
    namespace: str, name: str, spec: kopf.Spec, **_: Any
) -> dict[Key, str]:
    """(namespace, TrainingJob name) -> the InferenceServices serving its checkpoints."""
    job = spec.get("model", {}).get("fromTrainingJob")
    # An empty mapping (not None, which kopf ignores) drops the entry of a changed reference.
    return {(namespace, job): name} if job else {}


def _inference_child(namespace: str, labels: kopf.Labels, body: kopf.Body) -> dict[Key, ChildView]:
    return {(namespace, labels[contract.LABEL_INFERENCE_SERVICE]): child_view(dict(body))}


@kopf.index(*INFERENCE_CHILDREN[0], labels=INFERENCE_LABELS)
async def inference_deployments(
    namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, ChildView]:
    return _inference_child(namespace, labels, body)


@kopf.index(*INFERENCE_CHILDREN[1], labels=INFERENCE_LABELS)
async def inference_services(
    namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, ChildView]:
    return _inference_child(namespace, labels, body)


@kopf.index(*INFERENCE_CHILDREN[2], labels=INFERENCE_LABELS)
async def inference_autoscalers(
    namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, ChildView]:
    return _inference_child(namespace, labels, body)


@kopf.index(*INFERENCE_CHILDREN[3], labels=INFERENCE_LABELS)
async def inference_disruption_budgets(
    namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, ChildView]:
    return _inference_child(namespace, labels, body)


@kopf.index("", "v1", "pods", labels=INFERENCE_LABELS)
async def serving_pods(
    namespace: str, name: str, body: kopf.Body, **_: Any
) -> dict[Key, PodIdentity]:
    """(namespace, pod name) -> the server pod: the progress endpoint's served-step lookup."""
    return {(namespace, name): pod_identity(dict(body))}


@kopf.index("", "v1", "pods", labels=INFERENCE_LABELS)
async def inference_pods_cannot_start(
    namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, tuple[str, str]]:
    """Server pods whose container cannot start (an empty mapping drops a recovered pod)."""
    problem = cannot_start(dict(body))
    return {(namespace, labels[contract.LABEL_INFERENCE_SERVICE]): problem} if problem else {}


@kopf.on.event("", "v1", "pods", labels=INFERENCE_LABELS)
async def inference_pod_changed(
    namespace: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    memo.inference_queue.add_after(
        (namespace, labels[contract.LABEL_INFERENCE_SERVICE]), POD_EVENT_DELAY_SECONDS
    )


@kopf.on.event(contract.GROUP, contract.VERSION, "inferenceservices")
async def inferenceservice_changed(
    type: str, namespace: str, name: str, uid: str, meta: kopf.Meta, memo: kopf.Memo, **_: Any
) -> None:
    if type == "DELETED":
        memo.inference_runner.forget(uid)
        memo.progress_store.forget(uid)
    if not memo.inference_runner.own_write(uid, meta.get("resourceVersion")):
        memo.inference_queue.add((namespace, name))


for _group, _version, _plural in INFERENCE_CHILDREN:

    @kopf.on.event(_group, _version, _plural, labels=INFERENCE_LABELS, id=f"{_plural}-changed")
    async def inference_child_changed(
        namespace: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any
    ) -> None:
        memo.inference_queue.add((namespace, labels[contract.LABEL_INFERENCE_SERVICE]))


@kopf.on.startup()
async def start(
    settings: kopf.OperatorSettings,
    memo: kopf.Memo,
    trainingjobs: kopf.Index[Key, Any],
    trainingjob_pods: kopf.Index[Key, tuple[str, PodView]],
    trainingjob_services: kopf.Index[Key, ChildRecord],
    trainingjob_claims: kopf.Index[Key, ChildRecord],
    inferenceservices: kopf.Index[Key, Any],
    inference_deployments: kopf.Index[Key, ChildView],
    inference_services: kopf.Index[Key, ChildView],
    inference_autoscalers: kopf.Index[Key, ChildView],
    inference_disruption_budgets: kopf.Index[Key, ChildView],
    inference_pods_cannot_start: kopf.Index[Key, tuple[str, str]],
    progress_pods: kopf.Index[Key, PodIdentity],
    serving_pods: kopf.Index[Key, PodIdentity],
    **_: Any,
) -> None:
    config: Settings = memo.settings
    configure_kopf(settings, config)
    kube.configure(pool_size=config.workers)
    if config.metrics_port:
        start_http_server(config.metrics_port, addr=config.listen_address)
    executor = ThreadPoolExecutor(config.workers, thread_name_prefix="reconcile")
    elector = None
    if config.lease_name:
        lease = LeaseConfig(
            config.lease_namespace,
            config.lease_name,
            config.identity,
            duration_seconds=config.lease_duration_seconds,
            retry_seconds=max(1.0, config.lease_duration_seconds / 5),
        )
        elector = LeaderElector(lease, on_elected=lambda: elected(memo))
    leading = elector.is_leader if elector else lambda: True
    memo.progress_store = ProgressStore(WRITE_INTERVAL_SECONDS)
    loop = asyncio.get_running_loop()
    runner = TrainingJobRunner(
        jobs=lambda key: next(iter(trainingjobs.get(key, [])), None),
        pods=lambda key: list(trainingjob_pods.get(key, [])),
        children=lambda key: [
            *trainingjob_services.get(key, []),
            *trainingjob_claims.get(key, []),
        ],
        settings=config.render,
        live=memo.progress_store.get,
        kueue=config.kueue,
    )

    async def reconcile(key: Any) -> float | None:
        return await loop.run_in_executor(executor, runner.reconcile, key)

    memo.trainingjob_runner = runner
    memo.trainingjob_index_keys = lambda: list(trainingjobs)
    memo.inference_index_keys = lambda: list(inferenceservices)
    memo.trainingjob_queue = WorkQueue(reconcile, config.workers, "trainingjobs", leading)
    memo.trainingjob_queue.start()
    memo.resync = asyncio.create_task(
        resync(memo.trainingjob_queue, trainingjobs, config.resync_seconds)
    )

    child_indexes = (
        inference_deployments,
        inference_services,
        inference_autoscalers,
        inference_disruption_budgets,
    )
    inference_runner = InferenceServiceRunner(
        services=lambda key: next(iter(inferenceservices.get(key, [])), None),
        jobs=lambda key: next(iter(trainingjobs.get(key, [])), None),
        children=lambda key: [child for index in child_indexes for child in index.get(key, [])],
        settings=config.render,
        pods_cannot_start=lambda key: list(inference_pods_cannot_start.get(key, [])),
        served=lambda uid: memo.progress_store.served_step(uid, time.monotonic()),
    )

    async def reconcile_inference(key: Any) -> float | None:
        return await loop.run_in_executor(executor, inference_runner.reconcile, key)

    memo.inference_runner = inference_runner
    memo.inference_queue = WorkQueue(
        reconcile_inference, config.workers, "inferenceservices", leading
    )
    memo.inference_queue.start()
    memo.inference_resync = asyncio.create_task(
        resync(memo.inference_queue, inferenceservices, config.resync_seconds)
    )
    if elector:
        memo.elector = asyncio.create_task(elector.run())
    if config.progress_port:
        receiver = ProgressReceiver(
            memo.progress_store,
            pods=lambda key: next(
                iter([*progress_pods.get(key, []), *serving_pods.get(key, [])]), None
            ),
            jobs=lambda key: next(iter(trainingjobs.get(key, [])), None),
            enqueue=memo.trainingjob_queue.add_after,
            leading=leading,
            executor=executor,
            services=lambda key: next(iter(inferenceservices.get(key, [])), None),
            enqueue_service=memo.inference_queue.add_after,
        )
        memo.progress_server = await serve(receiver, config.listen_address, config.progress_port)


def elected(memo: kopf.Memo) -> None:
    """This replica now leads: start from what the watches show, then reconcile everything."""
    memo.trainingjob_runner.forget_all()
    memo.inference_runner.forget_all()
    for key in memo.trainingjob_index_keys():
        memo.trainingjob_queue.add(key)
    for key in memo.inference_index_keys():
        memo.inference_queue.add(key)


async def resync(queue: WorkQueue, index: kopf.Index[Key, Any], every: float) -> None:
    """Reconcile every known job now and then: repairs drift no event announced."""
    while True:
        await asyncio.sleep(every)
        for key in list(index):
            queue.resync(key)


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    if "elector" in memo:
        memo.elector.cancel()
    if "progress_server" in memo:
        await memo.progress_server.cleanup()
    if "resync" in memo:
        memo.resync.cancel()
        await memo.trainingjob_queue.stop()
    if "inference_resync" in memo:
        memo.inference_resync.cancel()
        await memo.inference_queue.stop()


class NoDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's annotation storage, except that it builds no diff base. kopf builds one (a deep
    copy of the object) on every watch event for its on.create/on.update/on.field handlers;
    this operator has none, so nothing ever reads it, and the copies were ~12% of the
    operator's CPU in a burst of jobs (bench/REPORT.md). The prefix and key stay as set on day
    one, should such a handler ever be added (it would need the real `build` back)."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> None:  # type: ignore[override]
        return None


def configure_kopf(settings: kopf.OperatorSettings, config: Settings) -> None:
    # Fixed on day one: changing these later would re-trigger every object.
    settings.persistence.finalizer = f"{contract.GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=contract.GROUP)
    settings.persistence.diffbase_storage = NoDiffBaseStorage(
        prefix=contract.GROUP, key="last-handled-configuration"
    )
    # The operator records its own Events; kopf's log-to-Event posting would duplicate them.
    settings.posting.enabled = False
    # Watch only what the handlers name: scanning for CRDs and namespaces would need
    # cluster-wide list/watch permissions the chart does not grant in namespaced mode.
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60
