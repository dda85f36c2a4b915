"""kopf wiring only: watch events become keys in a work queue; reconcile/ does the work.

No kopf state lives on the objects: there are no on.create/on.update handlers (so no
last-handled-configuration or progress annotations) and no timers (which would force a
finalizer and block deletion whenever the operator is down). Drift and time-based rules
(deadlines, TTLs) are covered by the queue's requeue-after and a periodic resync.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
from prometheus_client import start_http_server

from trainforge import contract, kube
from trainforge.reconcile.runner import Key, TrainingJobRunner
from trainforge.reconcile.trainingjob import PodView, pod_view
from trainforge.settings import Settings
from trainforge.workqueue import WorkQueue

logger = logging.getLogger(__name__)

WORKER_LABELS = {
    contract.LABEL_MANAGED_BY: contract.MANAGED_BY,
    contract.LABEL_JOB_NAME: kopf.PRESENT,
}


@kopf.index(contract.GROUP, contract.VERSION, "trainingjobs")
def trainingjobs(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Key, Any]:
    return {(namespace, name): dict(body)}


@kopf.index("", "v1", "pods", labels=WORKER_LABELS)
def trainingjob_pods(
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


@kopf.on.event(contract.GROUP, contract.VERSION, "trainingjobs")
async def trainingjob_changed(
    type: str, namespace: str, name: str, uid: str, memo: kopf.Memo, **_: Any
) -> None:
    if type == "DELETED":
        memo.trainingjob_runner.forget(uid)
    memo.trainingjob_queue.add((namespace, name))


@kopf.on.event("", "v1", "pods", labels=WORKER_LABELS)
async def trainingjob_pod_changed(
    namespace: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    memo.trainingjob_queue.add((namespace, labels[contract.LABEL_JOB_NAME]))


@kopf.on.startup()
async def start(
    settings: kopf.OperatorSettings,
    memo: kopf.Memo,
    trainingjobs: kopf.Index[Key, Any],
    trainingjob_pods: kopf.Index[Key, tuple[str, PodView]],
    **_: Any,
) -> None:
    config: Settings = memo.settings
    configure_kopf(settings, config)
    kube.configure(pool_size=config.workers)
    if config.metrics_port:
        start_http_server(config.metrics_port, addr=config.listen_address)
    executor = ThreadPoolExecutor(config.workers, thread_name_prefix="reconcile")
    loop = asyncio.get_running_loop()
    runner = TrainingJobRunner(
        jobs=lambda key: next(iter(trainingjobs.get(key, [])), None),
        pods=lambda key: list(trainingjob_pods.get(key, [])),
        settings=config.render,
    )

    async def reconcile(key: Any) -> float | None:
        return await loop.run_in_executor(executor, runner.reconcile, key)

    memo.trainingjob_runner = runner
    memo.trainingjob_queue = WorkQueue(reconcile, config.workers, "trainingjobs")
    memo.trainingjob_queue.start()
    memo.resync = asyncio.create_task(
        resync(memo.trainingjob_queue, trainingjobs, config.resync_seconds)
    )


async def resync(queue: WorkQueue, index: kopf.Index[Key, Any], every: float) -> None:
    """Reconcile every known job now and then: repairs drift no event announced."""
    while True:
        await asyncio.sleep(every)
        for key in list(index):
            queue.add(key)


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    if "resync" in memo:
        memo.resync.cancel()
        await memo.trainingjob_queue.stop()


def configure_kopf(settings: kopf.OperatorSettings, config: Settings) -> None:
    # Fixed on day one: changing these later would re-trigger every object.
    settings.persistence.finalizer = f"{contract.GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=contract.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=contract.GROUP, key="last-handled-configuration"
    )
    # The operator records its own Events; kopf's log-to-Event posting would duplicate them.
    settings.posting.enabled = False
    settings.peering.name = config.peering_name or "trainforge"
    settings.peering.standalone = not config.peering_name
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60
