"""The only module that talks to the Kubernetes API server.

Manifests are plain dicts (the renderers' output), so requests go through one generic REST
call instead of the client's typed models. Creates are idempotent (409 means the object is
already there: names are deterministic), deletes tolerate 404, status is merge-patched.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import kubernetes
import urllib3

import trainforge_contract as contract

logger = logging.getLogger(__name__)

# kind -> (plural, namespaced). The API paths of the kinds trainforge reads or writes.
RESOURCES: dict[str, tuple[str, bool]] = {
    "Pod": ("pods", True),
    "Service": ("services", True),
    "PersistentVolumeClaim": ("persistentvolumeclaims", True),
    "Event": ("events", True),
    "Lease": ("leases", True),
    "Deployment": ("deployments", True),
    "HorizontalPodAutoscaler": ("horizontalpodautoscalers", True),
    "PodDisruptionBudget": ("poddisruptionbudgets", True),
    "PodGroup": ("podgroups", True),
    "Workload": ("workloads", True),
    "ResourceFlavor": ("resourceflavors", False),
    "PriorityClass": ("priorityclasses", False),
    "NetworkAttachmentDefinition": ("network-attachment-definitions", True),
    "TrainingJob": ("trainingjobs", True),
    "InferenceService": ("inferenceservices", True),
    "TrainingRuntime": ("trainingruntimes", True),
    "ClusterTrainingRuntime": ("clustertrainingruntimes", False),
}


class KubeError(Exception):
    def __init__(
        self, status: int, reason: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        # Seconds the API server asked us to wait (Retry-After, sent with 429 and some 5xx).
        self.retry_after = retry_after


def retry_after(status: int, header: str | None) -> float | None:
    """The wait a 429 or 5xx answer asks for: its Retry-After seconds, else 1 s for a 429
    (the API server's priority-and-fairness default), else None."""
    if status != 429 and status < 500:
        return None
    try:
        return max(0.0, float(header)) if header else (1.0 if status == 429 else None)
    except ValueError:  # an HTTP-date: the API server never sends one; wait the default
        return 1.0 if status == 429 else None


@dataclass(frozen=True)
class Ref:
    api_version: str
    kind: str
    namespace: str
    name: str


class Api(Protocol):
    """What the runners need of the API server; this module implements it (pass `kube`),
    tests pass an in-memory fake (tests/unit/fakeapi.py)."""

    def create(self, manifest: dict[str, Any]) -> bool: ...
    def get(self, ref: Ref) -> dict[str, Any] | None: ...
    def delete(self, ref: Ref, uid: str | None = None) -> bool: ...
    def patch_status(self, ref: Ref, status: dict[str, Any]) -> dict[str, Any]: ...
    def patch(self, ref: Ref, body: dict[str, Any]) -> dict[str, Any]: ...
    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]: ...
    def exists(self, ref: Ref) -> bool | None: ...
    def emit_event(
        self, regarding: dict[str, Any], type_: str, reason: str, message: str
    ) -> None: ...


_client: kubernetes.client.ApiClient | None = None
_client_lock = threading.Lock()


def configure(pool_size: int = 16) -> kubernetes.client.ApiClient:
    """Credentials from the pod's ServiceAccount, else from KUBECONFIG / ~/.kube/config."""
    global _client
    with _client_lock:
        if _client is None:
            configuration = kubernetes.client.Configuration()
            try:
                kubernetes.config.load_incluster_config(client_configuration=configuration)
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config(client_configuration=configuration)
            # One connection per reconcile worker, so workers never wait for a socket.
            configuration.connection_pool_maxsize = pool_size
            _client = kubernetes.client.ApiClient(configuration)
        return _client


def path(
    api_version: str,
    kind: str,
    namespace: str,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    plural, namespaced = RESOURCES[kind]
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    parts = [base]
    if namespaced:
        parts.append(f"namespaces/{namespace}")
    parts.append(plural)
    if name:
        parts.append(name)
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


# Per request: the API server answers within this, or the reconcile backs off and retries.
REQUEST_TIMEOUT = urllib3.Timeout(total=30)


def request(
    method: str,
    url_path: str,
    body: Any = None,
    content_type: str = "application/json",
    query: list[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    api = configure()
    # The client builds the URL and the headers (its auth refreshes an in-cluster token); the
    # body is plain JSON and goes straight to the connection pool, without the client's walk
    # of every manifest for models to serialise (there are none).
    method, url, headers, _, _ = api.param_serialize(
        method=method,
        resource_path=url_path,
        query_params=query or [],
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    response = api.rest_client.pool_manager.request(
        method,
        url,
        body=None if body is None else json.dumps(body, separators=(",", ":")).encode(),
        headers=headers,
        timeout=REQUEST_TIMEOUT,
    )
    data: bytes = response.data or b""
    if not 200 <= response.status < 300:
        wait = retry_after(response.status, response.headers.get("Retry-After"))
        text = data.decode(errors="replace")
        try:
            status = json.loads(text)
        except ValueError:
            raise KubeError(response.status, "", text, wait) from None
        raise KubeError(
            response.status, status.get("reason", ""), status.get("message", text), wait
        )
    return json.loads(data) if data else {}


def create(manifest: dict[str, Any]) -> bool:
    """Create `manifest`; False when an object of that name already exists."""
    meta = manifest["metadata"]
    try:
        request(
            "POST",
            path(manifest["apiVersion"], manifest["kind"], meta.get("namespace", "")),
            manifest,
            query=[("fieldManager", contract.MANAGED_BY)],
        )
        return True
    except KubeError as e:
        if e.status == 409:
            return False
        raise


def get(ref: Ref) -> dict[str, Any] | None:
    try:
        return request("GET", path(ref.api_version, ref.kind, ref.namespace, ref.name))
    except KubeError as e:
        if e.status == 404:
            return None
        raise


def delete(ref: Ref, uid: str | None = None) -> bool:
    """Delete the object (only the one with `uid`, when given); False when it was gone."""
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "DeleteOptions",
        "propagationPolicy": "Background",
    }
    if uid:
        body["preconditions"] = {"uid": uid}
    try:
        request("DELETE", path(ref.api_version, ref.kind, ref.namespace, ref.name), body)
        return True
    except KubeError as e:
        if e.status in (404, 409):  # gone, or replaced by a newer object of the same name
            return False
        raise


def patch_status(ref: Ref, status: dict[str, Any]) -> dict[str, Any]:
    """Merge-patch the status subresource; returns the updated object."""
    return request(
        "PATCH",
        path(ref.api_version, ref.kind, ref.namespace, ref.name, "status"),
        {"status": status},
        content_type="application/merge-patch+json",
    )


def patch(ref: Ref, body: dict[str, Any]) -> dict[str, Any]:
    """Merge-patch fields of the object that other controllers share (a Kueue Workload's
    spec.active), leaving the rest as they are; returns the updated object."""
    return request(
        "PATCH",
        path(ref.api_version, ref.kind, ref.namespace, ref.name),
        body,
        content_type="application/merge-patch+json",
    )


def apply(manifest: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply `manifest` (create or update) as the field manager "trainforge".

    For mutable children: fields the operator stops rendering are removed, fields others set
    (a Service's clusterIP, a Deployment's revision annotation) are kept. `force` takes over
    fields someone else changed by hand: the rendered manifest is the desired state.
    """
    meta = manifest["metadata"]
    return request(
        "PATCH",
        path(manifest["apiVersion"], manifest["kind"], meta.get("namespace", ""), meta["name"]),
        manifest,
        content_type="application/apply-patch+yaml",
        query=[("fieldManager", contract.MANAGED_BY), ("force", "true")],
    )


def exists(ref: Ref) -> bool | None:
    """Whether the object exists; None when we may not read it (403), so a missing
    permission is not reported as a missing object. A 404 (also when its CRD is not
    installed) means it does not exist, which is what the user needs to hear."""
    try:
        return get(ref) is not None
    except KubeError as e:
        if e.status == 403:
            return None
        raise


def emit_event(regarding: dict[str, Any], type_: str, reason: str, message: str) -> None:
    """A core/v1 Event on `regarding`, shown by `kubectl describe`. Best effort: a failure
    to record an event never fails a reconcile."""
    meta = regarding["metadata"]
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": regarding["apiVersion"],
            "kind": regarding["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": contract.MANAGED_BY},
        "reportingComponent": f"{contract.GROUP}/operator",
        "reportingInstance": "operator",
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        create(event)
    except KubeError as e:
        logger.warning(
            "could not record event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], e
        )


def token_review(token: str, audiences: list[str]) -> dict[str, Any]:
    """The API server's verdict on a bearer token (TokenReview status: authenticated, user
    with username and extra, error)."""
    review = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": audiences},
    }
    return request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", review).get("status", {})
