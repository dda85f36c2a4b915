"""The controller core every kind's runner is built on.

A kind supplies only its observe/plan/apply (`Runner._reconcile`); the core holds what they
share: the per-object memory that bridges the lag of the watch caches behind our own writes
(the status this operator last wrote: it is the only writer of status), the metrics, the
status write that turns removed keys into nulls, and the error path (an API error backs the
key off in the work queue, honouring the API server's Retry-After).

The API client is injected (`kube.Api`; the kube module implements it), so the runners are
unit-tested with an in-memory fake (tests/unit/fakeapi.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import trainforge_contract as contract
from trainforge import kube, metrics, workqueue
from trainforge.api.common import InvalidSpec

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
# The latest watched object for a key (from a kopf index), None once it is deleted.
ObjectLookup = Callable[[Key], Mapping[str, Any] | None]


@dataclass
class Memory:
    """What one object's previous reconciles did that the watch may not show yet; each kind
    adds its own create expectations."""

    written_status: dict[str, Any] | None = None
    # metadata.resourceVersion of the object our last status write returned: a watch event
    # carrying exactly that version is our own write, with nothing new to reconcile.
    written_version: str | None = None
    # ((metadata.generation, the kind's other inputs), the spec parsed from them, or why it is
    # invalid): a spec changes only with them, so it is validated once per change, not on every
    # reconcile.
    spec: tuple[tuple[int, tuple[Any, ...]], Any] | None = None


M = TypeVar("M", bound=Memory)
S = TypeVar("S")


class Runner(Generic[M, S]):
    """Reconciles one kind, one key at a time per key (the work queue guarantees it)."""

    kind: ClassVar[str]

    def __init__(
        self,
        objects: ObjectLookup,
        new_memory: Callable[[], M],
        parse_spec: Callable[..., S],
        gauge: metrics.PhaseGauge,
        api: kube.Api,
    ) -> None:
        self._objects = objects
        self._new_memory = new_memory
        self._parse_spec = parse_spec
        self._gauge = gauge
        self.api = api
        self._memory: dict[str, M] = {}
        self._lock = threading.Lock()  # guards _memory's dict; one worker per key at a time

    def reconcile(self, key: Key) -> float | None:
        """One level-based pass over `key`; returns seconds until the next one."""
        body = self._objects(key)
        if body is None:  # deleted; `forget` already ran for its uid
            return None
        obj = dict(body)
        with self._lock:
            memory = self._memory.setdefault(obj["metadata"]["uid"], self._new_memory())
        if memory.written_status is not None:
            obj["status"] = memory.written_status
        started = time.perf_counter()
        metrics.RECONCILES.labels(self.kind).inc()
        try:
            return self._reconcile(obj, memory)
        except kube.KubeError as e:
            metrics.RECONCILE_ERRORS.labels(self.kind).inc()
            logger.warning("%s %s/%s: API error, will retry: %s", self.kind, *key, e)
            raise workqueue.Backoff(f"API error: {e}", not_before=e.retry_after) from None
        finally:
            metrics.RECONCILE_SECONDS.labels(self.kind).observe(time.perf_counter() - started)

    def _reconcile(self, obj: dict[str, Any], memory: M) -> float | None:
        """Observe, plan and apply `obj` (its status is the last one written)."""
        raise NotImplementedError

    def spec(self, obj: Mapping[str, Any], memory: M, *inputs: Any) -> S | InvalidSpec:
        """The object's spec, parsed once per generation and `inputs` (what else the kind
        resolves its spec from: a TrainingJob's runtime), or why it is invalid."""
        key = (int(obj["metadata"].get("generation", 0)), inputs)
        if memory.spec is None or memory.spec[0] != key:
            parsed: S | InvalidSpec
            try:
                parsed = self._parse_spec(obj, *inputs)
            except InvalidSpec as e:
                parsed = e
            memory.spec = (key, parsed)
        result: S | InvalidSpec = memory.spec[1]
        return result

    def ref(self, obj: Mapping[str, Any]) -> kube.Ref:
        meta = obj["metadata"]
        return kube.Ref(contract.API_VERSION, self.kind, meta["namespace"], meta["name"])

    def write_status(
        self,
        obj: Mapping[str, Any],
        old_status: Mapping[str, Any],
        status: dict[str, Any],
        memory: M,
    ) -> None:
        """Merge-patch the status when it changed (removed keys become nulls)."""
        if status != old_status:
            patch = {**{k: None for k in old_status if k not in status}, **status}
            updated = self.api.patch_status(self.ref(obj), patch)
            memory.written_status = updated.get("status", status)
            memory.written_version = updated.get("metadata", {}).get("resourceVersion")

    def own_write(self, uid: str, resource_version: str | None) -> bool:
        """Whether a watched version of the object is the one our last status write made (its
        event needs no reconcile: this runner already holds that status)."""
        with self._lock:
            memory = self._memory.get(uid)
        return (
            memory is not None
            and resource_version is not None
            and memory.written_version == resource_version
        )

    def forget_all(self) -> None:
        """Leadership changed hands: another replica may have written since our memories."""
        with self._lock:
            self._memory.clear()

    def forget(self, uid: str) -> None:
        """The object was deleted: drop what we remembered of it."""
        with self._lock:
            self._memory.pop(uid, None)
        self._gauge.forget(uid)
