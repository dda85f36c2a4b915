"""Writing an owner's children, for every kind: a name is never adopted, a refusal is reported.

A child's name may already be taken by an object its owner does not control (a pod or Service
someone made by hand, a leftover of another tool): that is a NameConflict, never adopted. A
child the API server refuses is reported with the server's own message: by validation (400,
422: an invalid podTemplate overlay, say) or by an admission plugin (403: Pod Security, a
ResourceQuota, a LimitRange, a webhook, an unknown priorityClass or serviceAccount), named in
the message. Both repeat until a person changes something, so the runners report them as a
Stalled condition and an Event, and back off (workqueue.Backoff) instead of retrying in a loop.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from trainforge import kube

Problem = tuple[str, str]  # (condition reason, message)

NAME_CONFLICT = "NameConflict"
CHILD_REJECTED = "ChildRejected"
ADMISSION_REJECTED = "AdmissionRejected"
# What the API server answers to a request that fails the same way until something changes.
REFUSED_STATUSES = (400, 403, 422)

# (pattern in the API server's message, the admission step it names); k8s wording, stable
# since the plugins were written (plugin/pkg/admission/* and the webhook dispatchers).
_ADMISSION = [
    (re.compile(r"violates PodSecurity"), "the PodSecurity admission plugin"),
    (re.compile(r"exceeded quota:|failed quota:"), "the ResourceQuota admission plugin"),
    (
        re.compile(r"usage per (Container|Pod|PersistentVolumeClaim)|limit to request ratio"),
        "the LimitRanger admission plugin",
    ),
    (re.compile(r"no PriorityClass with name"), "the Priority admission plugin"),
    (re.compile(r"error looking up service account"), "the ServiceAccount admission plugin"),
    (re.compile(r'admission webhook ("[^"]*")'), "admission webhook {0}"),
    (re.compile(r"ValidatingAdmissionPolicy ('[^']*')"), "ValidatingAdmissionPolicy {0}"),
    (re.compile(r'User "[^"]*" cannot'), "authorization (RBAC of the operator's account)"),
]


def admission_step(message: str) -> str:
    """Which admission step refused a request, from the API server's message ('' if none)."""
    for pattern, name in _ADMISSION:
        found = pattern.search(message)
        if found:
            return name.format(*found.groups())
    return ""


def refusal(what: str, message: str, fix: str) -> Problem:
    """The condition for `what` ("Pod ns/name") refused by the API server with `message`."""
    step = admission_step(message)
    if step:
        return ADMISSION_REJECTED, f"{step} refused {what}: {message}; {fix}"
    return CHILD_REJECTED, f"the API server rejected {what}: {message}; {fix}"


def controlled_by(obj: dict[str, Any], uid: str) -> bool:
    owners = obj.get("metadata", {}).get("ownerReferences", [])
    return any(o.get("uid") == uid and o.get("controller") for o in owners)


Lookup = Callable[[kube.Ref], dict[str, Any] | None]


def write_child(
    api: kube.Api,
    manifest: dict[str, Any],
    owner: dict[str, Any],
    fix: str,
    *,
    update: bool,
    known: bool,
    lookup: Lookup | None = None,
) -> Problem | None:
    """Create (`update=False`: an existing child is left as it is) or server-side apply
    (`update=True`) one child of `owner`; returns what stopped it, if anything.

    `known`: the owner's watch shows the child as its own, so no ownership check is needed.
    Otherwise a server-side apply first looks the name up (an apply would take the object
    over), and a create that finds the name taken (409) looks up who holds it, with
    `lookup` (a GET, unless the caller's watch already tells).
    """
    kind, meta = manifest["kind"], manifest["metadata"]
    ref = kube.Ref(manifest["apiVersion"], kind, meta["namespace"], meta["name"])
    lookup = lookup or api.get
    try:
        if update:
            if not known and (problem := _taken(ref, owner, lookup)):
                return problem
            api.apply(manifest)
        elif not api.create(manifest) and not known:
            return _taken(ref, owner, lookup)
    except kube.KubeError as e:
        if e.status not in REFUSED_STATUSES:
            raise
        return refusal(f"{kind} {ref.namespace}/{ref.name}", e.message, fix)
    return None


def _taken(ref: kube.Ref, owner: dict[str, Any], lookup: Lookup) -> Problem | None:
    existing = lookup(ref)
    if existing is None or controlled_by(existing, owner["metadata"]["uid"]):
        return None
    kind = owner["kind"]
    return (
        NAME_CONFLICT,
        f"{ref.kind} {ref.namespace}/{ref.name} already exists and is not controlled by this "
        f"{kind}; delete it or choose another name (children of a deleted {kind} of the "
        "same name disappear on their own)",
    )
