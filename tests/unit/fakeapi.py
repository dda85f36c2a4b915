"""An in-memory stand-in for kube.py (the kube.Api protocol), for the runners' unit tests.

It keeps objects by (kind, namespace, name), answers as the API server does for what the
runners rely on (409 on a taken name, 404 on a missing one, merge-patch of status with nulls
removing keys), records every write, and fails a request on demand. The cluster tests, with
a real API server, stay the proof of behaviour; this makes the runners' error paths and
memories fast to test.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from typing import Any

from trainforge import kube

ObjKey = tuple[str, str, str]  # (kind, namespace, name)


class FakeApi:
    def __init__(self) -> None:
        self.objects: dict[ObjKey, dict[str, Any]] = {}
        self.calls: list[tuple[str, str, str]] = []  # (verb, kind, name)
        self.events: list[tuple[str, str, str]] = []  # (type, reason, message)
        # (verb, kind) -> the error the next matching requests raise (until removed).
        self.fail: dict[tuple[str, str], kube.KubeError] = {}
        self._uids = itertools.count(1)
        self._versions = itertools.count(1)

    def add(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Put `obj` in the store as someone else would (a uid is assigned)."""
        obj = copy.deepcopy(obj)
        obj["metadata"].setdefault("uid", f"uid-{next(self._uids)}")
        meta = obj["metadata"]
        self.objects[(obj["kind"], meta["namespace"], meta["name"])] = obj
        return obj

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for (k, _, _), obj in sorted(self.objects.items()) if k == kind]

    def writes(self, verb: str, kind: str) -> int:
        return sum(1 for v, k, _ in self.calls if (v, k) == (verb, kind))

    def _call(self, verb: str, kind: str, name: str) -> None:
        self.calls.append((verb, kind, name))
        error = self.fail.get((verb, kind))
        if error is not None:
            raise error

    # --- kube.Api -------------------------------------------------------------------------

    def create(self, manifest: dict[str, Any]) -> bool:
        meta = manifest["metadata"]
        self._call("create", manifest["kind"], meta["name"])
        if (manifest["kind"], meta["namespace"], meta["name"]) in self.objects:
            return False
        self.add(manifest)
        return True

    def get(self, ref: kube.Ref) -> dict[str, Any] | None:
        self._call("get", ref.kind, ref.name)
        found = self.objects.get((ref.kind, ref.namespace, ref.name))
        return copy.deepcopy(found) if found is not None else None

    def delete(self, ref: kube.Ref, uid: str | None = None) -> bool:
        self._call("delete", ref.kind, ref.name)
        key = (ref.kind, ref.namespace, ref.name)
        found = self.objects.get(key)
        if found is None or (uid and found["metadata"]["uid"] != uid):
            return False
        del self.objects[key]
        return True

    def patch_status(self, ref: kube.Ref, status: dict[str, Any]) -> dict[str, Any]:
        self._call("patch_status", ref.kind, ref.name)
        found = self.objects.get((ref.kind, ref.namespace, ref.name))
        if found is None:
            raise kube.KubeError(404, "NotFound", f"{ref.kind} {ref.name} not found")
        merged = {**found.get("status", {}), **status}
        found["status"] = {k: v for k, v in merged.items() if v is not None}
        found["metadata"]["resourceVersion"] = str(next(self._versions))  # every write: a new one
        return copy.deepcopy(found)

    def patch(self, ref: kube.Ref, body: dict[str, Any]) -> dict[str, Any]:
        self._call("patch", ref.kind, ref.name)
        found = self.objects.get((ref.kind, ref.namespace, ref.name))
        if found is None:
            raise kube.KubeError(404, "NotFound", f"{ref.kind} {ref.name} not found")
        for key, value in body.items():
            found[key] = {**found.get(key, {}), **value}
        return copy.deepcopy(found)

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        self._call("apply", manifest["kind"], meta["name"])
        key = (manifest["kind"], meta["namespace"], meta["name"])
        uid = self.objects[key]["metadata"]["uid"] if key in self.objects else None
        obj = self.add(manifest)
        if uid:
            obj["metadata"]["uid"] = uid
        return copy.deepcopy(obj)

    def exists(self, ref: kube.Ref) -> bool | None:
        return self.get(ref) is not None

    def emit_event(self, regarding: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))


def lookup(api: FakeApi, kind: str) -> Callable[[tuple[str, str]], dict[str, Any] | None]:
    """A watch that is always up to date: the object of `kind` named by the key."""

    def find(key: tuple[str, str]) -> dict[str, Any] | None:
        found = api.objects.get((kind, *key))
        return copy.deepcopy(found) if found is not None else None

    return find
