"""What every kind's renderer shares: the owner's identity, owner references, child
metadata, the spec hash, env entries and the operator-wide render settings.

No kind owns this module, so no kind's renderer imports another kind's for shared code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import trainforge_contract as contract

# Tolerated by every GPU pod: the NVIDIA device plugin's documented node taint.
GPU_TAINT_KEY = "nvidia.com/gpu"

# The chart overrides it (`trainforge run --trainer-image`); this is the image built from
# trainer_image/ for this version.
DEFAULT_TRAINER_IMAGE = "ghcr.io/trainforge/trainer:0.1.0"


@dataclass(frozen=True)
class RenderSettings:
    """Operator-wide inputs of rendering (from the operator's configuration)."""

    default_image: str = DEFAULT_TRAINER_IMAGE
    """Trainer image for jobs without spec.image."""
    progress_url: str = ""
    """Where rank 0 pushes live progress (the operator's progress endpoint); empty: no push."""
    default_runtime: str = ""
    """ClusterTrainingRuntime for jobs without spec.runtimeRef; empty: none."""


@dataclass(frozen=True)
class OwnerRef:
    """Identity of the object the children belong to; each kind names its `kind`."""

    kind: ClassVar[str]

    name: str
    namespace: str
    uid: str

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> Self:
        metadata = obj["metadata"]
        return cls(name=metadata["name"], namespace=metadata["namespace"], uid=metadata["uid"])


def checkpoint_pvc_name(job_name: str) -> str:
    """The claim a TrainingJob's volumeClaimTemplate creates; an InferenceService serving
    from that job mounts it, so both kinds name it here."""
    return f"{job_name}-checkpoints"


def owner_reference(owner: OwnerRef) -> dict[str, Any]:
    return {
        "apiVersion": contract.API_VERSION,
        "kind": owner.kind,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_metadata(
    owner: OwnerRef,
    name: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": dict(labels),
        "annotations": dict(annotations or {}),
        "ownerReferences": [owner_reference(owner)],
    }


def spec_hash(manifest: Mapping[str, Any]) -> str:
    """Hash of everything in the manifest except the hash annotation itself."""
    metadata = dict(manifest.get("metadata", {}))
    annotations = {
        key: value
        for key, value in metadata.get("annotations", {}).items()
        if key != contract.ANNOTATION_SPEC_HASH
    }
    canonical = json.dumps(
        {**manifest, "metadata": {**metadata, "annotations": annotations}},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def with_hash(manifest: dict[str, Any]) -> dict[str, Any]:
    """`manifest` with its spec-hash annotation, so a stale child is told by one string."""
    metadata = manifest["metadata"]
    annotations = {
        **metadata.get("annotations", {}),
        contract.ANNOTATION_SPEC_HASH: spec_hash(manifest),
    }
    return {**manifest, "metadata": {**metadata, "annotations": annotations}}


def env_var(name: str, value: object) -> dict[str, Any]:
    return {"name": name, "value": str(value)}
