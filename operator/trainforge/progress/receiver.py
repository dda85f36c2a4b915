"""The operator's progress endpoint: POST contract.PROGRESS_PATH from rank 0 of a running job.

Who is speaking is decided by the API server, never by the request: the bearer token is a
projected ServiceAccount token with audience contract.PROGRESS_AUDIENCE, bound to the pod; a
TokenReview returns the bound pod's name and uid, and the pod (from the operator's watch)
names the job through its controller ownerReference and labels. The body names no job, so a
pod can only ever report for its own. Only the leader accepts (others answer 503 and the
trainer retries); the record is untrusted and goes through the termination message's
sanitiser.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from aiohttp import web

import trainforge_contract as contract
from trainforge import kube, metrics
from trainforge.progress.store import ProgressStore
from trainforge.reconcile.trainingjob import sanitised_progress

logger = logging.getLogger(__name__)

Key = tuple[str, str]
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
# A token's verdict is reused this long. A deleted pod's token is refused by the pod lookup
# (the watch) at once; TokenReview only adds expiry, and tokens live 10 minutes.
REVIEW_CACHE_SECONDS = 60.0


@dataclass(frozen=True)
class PodIdentity:
    """A worker pod as the watch shows it (the progress index of handlers.py)."""

    uid: str
    job: str
    owner_uid: str
    attempt: int
    service: str = ""  # the InferenceService of a server pod


def pod_identity(pod: dict[str, Any]) -> PodIdentity:
    meta = pod["metadata"]
    labels = meta.get("labels", {})
    owner = next((o["uid"] for o in meta.get("ownerReferences", []) if o.get("controller")), "")
    return PodIdentity(
        uid=meta.get("uid", ""),
        job=labels.get(contract.LABEL_JOB_NAME, ""),
        owner_uid=owner,
        attempt=int(labels.get(contract.LABEL_RESTART_ATTEMPT, "0")),
        service=labels.get(contract.LABEL_INFERENCE_SERVICE, ""),
    )


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def bound_pod(review: dict[str, Any]) -> tuple[str, str, str]:
    """(namespace, pod name, pod uid) of a TokenReview status, or Refused(401)."""
    if not review.get("authenticated"):
        raise Refused(401, f"token not accepted: {review.get('error') or 'not authenticated'}")
    user = review.get("user", {})
    extra = user.get("extra", {})
    username = user.get("username", "")
    names, uids = extra.get(POD_NAME_EXTRA, []), extra.get(POD_UID_EXTRA, [])
    if not username.startswith(SERVICE_ACCOUNT_PREFIX) or len(names) != 1 or len(uids) != 1:
        raise Refused(401, "the token is not a ServiceAccount token bound to a pod")
    namespace = username.removeprefix(SERVICE_ACCOUNT_PREFIX).split(":", 1)[0]
    return namespace, names[0], uids[0]


class ProgressReceiver:
    def __init__(
        self,
        store: ProgressStore,
        pods: Callable[[Key], PodIdentity | None],
        jobs: Callable[[Key], dict[str, Any] | None],
        enqueue: Callable[[Key, float], None],
        leading: Callable[[], bool],
        executor: Executor,
        services: Callable[[Key], dict[str, Any] | None] = lambda key: None,
        enqueue_service: Callable[[Key, float], None] = lambda key, delay: None,
    ) -> None:
        self._store = store
        self._pods = pods
        self._jobs = jobs
        self._enqueue = enqueue
        self._services = services
        self._enqueue_service = enqueue_service
        # sha256(token) -> (bound pod, time.monotonic() of the review): one TokenReview per
        # token per REVIEW_CACHE_SECONDS, not one per push.
        self._reviews: dict[str, tuple[tuple[str, str, str], float]] = {}
        self._leading = leading
        self._executor = executor

    def app(self) -> web.Application:
        app = web.Application(client_max_size=contract.PROGRESS_MAX_BODY)
        app.router.add_post(contract.PROGRESS_PATH, self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        try:
            message = await self._accept(request)
        except Refused as e:
            metrics.PROGRESS_REPORTS.labels(str(e.status)).inc()
            return web.json_response({"error": str(e)}, status=e.status)
        metrics.PROGRESS_REPORTS.labels("200").inc()
        return web.json_response({"accepted": message})

    async def _accept(self, request: web.Request) -> str:
        if not self._leading():
            raise Refused(503, "not the leader; retry")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Refused(401, "missing 'Authorization: Bearer <projected token>'")
        if (request.content_length or 0) > contract.PROGRESS_MAX_BODY:
            raise Refused(413, f"body larger than {contract.PROGRESS_MAX_BODY} bytes")
        body = await request.content.read(contract.PROGRESS_MAX_BODY + 1)
        if len(body) > contract.PROGRESS_MAX_BODY:
            raise Refused(413, f"body larger than {contract.PROGRESS_MAX_BODY} bytes")
        namespace, pod_name, pod_uid = await self._review(token)
        pod = self._pods((namespace, pod_name))
        if pod is not None and pod.uid == pod_uid and pod.service and not pod.job:
            return self._accept_served(namespace, pod_name, pod, body)
        if pod is None or pod.uid != pod_uid or not pod.job:
            raise Refused(403, f"pod {namespace}/{pod_name} is not a TrainingJob worker")
        job = self._jobs((namespace, pod.job))
        if job is None or job["metadata"]["uid"] != pod.owner_uid:
            raise Refused(403, f"pod {namespace}/{pod_name} is not a worker of a known job")
        record = sanitised_progress(body.decode("utf-8", "replace"))
        if record is None:
            raise Refused(400, "not a progress record: a JSON object with an integer step")
        delay = self._store.put(pod.owner_uid, (pod.attempt, record), time.monotonic())
        self._enqueue((namespace, pod.job), delay)
        return f"TrainingJob {namespace}/{pod.job}"

    async def _review(self, token: str) -> tuple[str, str, str]:
        """(namespace, pod, pod uid) the token is bound to, from a TokenReview (cached)."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        cached = self._reviews.get(digest)
        if cached is not None and now - cached[1] < REVIEW_CACHE_SECONDS:
            return cached[0]
        loop = asyncio.get_running_loop()
        try:
            review = await loop.run_in_executor(
                self._executor, kube.token_review, token, [contract.PROGRESS_AUDIENCE]
            )
        except kube.KubeError as e:
            logger.warning("progress: TokenReview failed: %s", e)
            raise Refused(503, "cannot verify the token now; retry") from None
        bound = bound_pod(review)
        # Expired entries go on every write: the cache holds at most one review per token
        # seen in the last REVIEW_CACHE_SECONDS.
        self._reviews = {
            k: v for k, v in self._reviews.items() if now - v[1] < REVIEW_CACHE_SECONDS
        }
        self._reviews[digest] = (bound, now)
        return bound

    def _accept_served(self, namespace: str, pod_name: str, pod: PodIdentity, body: bytes) -> str:
        """A server pod of an InferenceService reports the step it serves."""
        service = self._services((namespace, pod.service))
        if service is None:
            raise Refused(403, f"pod {namespace}/{pod_name} serves no known InferenceService")
        try:
            record = json.loads(body)
        except (ValueError, RecursionError):
            record = None
        if not isinstance(record, dict) or not _step(record.get(contract.SERVED_STEP_KEY)):
            raise Refused(400, f'expected {{"{contract.SERVED_STEP_KEY}": <step>}}')
        skipped = record.get(contract.SKIPPED_STEP_KEY)
        uid = service["metadata"]["uid"]
        delay = self._store.put_served(
            uid,
            pod_name,
            record[contract.SERVED_STEP_KEY],
            skipped if _step(skipped) else None,
            time.monotonic(),
        )
        self._enqueue_service((namespace, pod.service), delay)
        return f"InferenceService {namespace}/{pod.service}"


def _step(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 2**53


async def serve(receiver: ProgressReceiver, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(receiver.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
