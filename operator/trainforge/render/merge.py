"""The podTemplate merge: a small, predictable subset of Kubernetes strategic merge patch.

- objects merge recursively, the overlay's scalars replace the base's;
- lists of objects with a merge key (the same keys strategic merge uses for PodSpec: name for
  containers, env, volumes…, mountPath for volumeMounts, containerPort for ports) merge item
  by item, new items are appended;
- other lists of objects (tolerations, topologySpreadConstraints, …) are appended;
- lists of scalars (command, args) are replaced.
"""

from __future__ import annotations

import copy
from typing import Any

MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "imagePullSecrets": "name",
    "resourceClaims": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ports": "containerPort",
    "hostAliases": "ip",
}


def merge(base: Any, overlay: Any) -> Any:
    """`overlay` merged onto `base`; neither argument is modified."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = dict(base)
        for key, value in overlay.items():
            merged[key] = (
                _merge_field(key, base[key], value) if key in base else copy.deepcopy(value)
            )
        return merged
    return copy.deepcopy(overlay)


def _merge_field(key: str, base: Any, overlay: Any) -> Any:
    if not (isinstance(base, list) and isinstance(overlay, list)):
        return merge(base, overlay)
    if not all(isinstance(item, dict) for item in [*base, *overlay]):
        return copy.deepcopy(overlay)
    merge_key = MERGE_KEYS.get(key)
    if merge_key is None:
        return copy.deepcopy(base) + copy.deepcopy(overlay)
    merged = [copy.deepcopy(item) for item in base]
    positions = {item.get(merge_key): index for index, item in enumerate(merged)}
    for item in overlay:
        index = positions.get(item.get(merge_key))
        if index is None:
            merged.append(copy.deepcopy(item))
        else:
            merged[index] = merge(merged[index], item)
    return merged
