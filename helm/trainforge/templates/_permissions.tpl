{{/*
The operator's API permissions: the one list both the ClusterRole (scope all) and the
per-namespace Roles render. Least privilege: every verb below is a call the operator makes;
the comment on each rule names the caller. tests/helm/test_install.py compares the list with
the calls a real operator run makes (and `kubectl auth can-i`); docs/install.md explains it.

Deliberately NOT granted (cluster-wide reads a namespaced install should not need):
- customresourcedefinitions and namespaces (list/watch): kopf uses them to notice new CRDs
  and namespaces at runtime; when forbidden it logs a warning and serves the resources and
  namespaces it found at startup.
- kopf's own Events: the operator disables kopf's event posting and records its own.
*/}}
{{- define "trainforge.rules" -}}
# TrainingJobs: kopf lists + watches them (indexes and event handlers; InferenceServices
# with model.fromTrainingJob read their job from the same index); the operator deletes a
# finished job after ttlSecondsAfterFinished.
- apiGroups: [trainforge.io]
  resources: [trainingjobs]
  verbs: [list, watch, delete]
# The operator is the only writer of TrainingJob status (merge patch).
- apiGroups: [trainforge.io]
  resources: [trainingjobs/status]
  verbs: [patch]
# InferenceServices: kopf lists + watches them (indexes and event handler).
- apiGroups: [trainforge.io]
  resources: [inferenceservices]
  verbs: [list, watch]
- apiGroups: [trainforge.io]
  resources: [inferenceservices/status]
  verbs: [patch]
# Children carry ownerReferences with blockOwnerDeletion, which the
# OwnerReferencesPermissionEnforcement admission plugin (OpenShift, hardened clusters)
# allows only to clients that may update the owner's finalizers.
- apiGroups: [trainforge.io]
  resources: [trainingjobs/finalizers, inferenceservices/finalizers]
  verbs: [update]
# Worker pods: kopf lists + watches them (by label); the operator creates the gang and
# deletes it on restart, suspend, failure and deadline. Pods are never patched (immutable).
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, create, delete]
# Services: the TrainingJob's headless Service (create); the InferenceService's Service,
# applied like its Deployment (next rules). Neither is ever deleted by the operator: garbage
# collection removes them with their owner.
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch]
# The checkpoint PVC of spec.checkpoint.volumeClaimTemplate (create), and the existence
# check of a TrainingJob's checkpoint.claimName or an InferenceService's model claim (get),
# which turns a missing claim into a Stalled condition.
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, create]
# Events shown by `kubectl describe` (gang restarted, job failed or succeeded, Deployment
# created or updated).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# InferenceService children. kopf lists + watches them (by label); the operator
# server-side applies them (patch, and create when the apply makes a new object) and reads
# one before taking over its name (get). The Deployment always exists while its owner does;
# the HPA (spec.autoscaling) and PDB (more than one replica) are deleted when the spec no
# longer asks for them.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
# Gang scheduling: the PodGroup of scheduling.gang.policy Volcano / Coscheduling.
- apiGroups: [scheduling.volcano.sh]
  resources: [podgroups]
  verbs: [create]
- apiGroups: [scheduling.x-k8s.io]
  resources: [podgroups]
  verbs: [create]
# Existence check of spec.network.rdma.networks (Multus NetworkAttachmentDefinitions): a
# missing one becomes a Stalled condition instead of pods stuck in ContainerCreating.
- apiGroups: [k8s.cni.cncf.io]
  resources: [network-attachment-definitions]
  verbs: [get]
{{- if include "trainforge.ha" . }}
{{- $peerings := ternary "clusterkopfpeerings" "kopfpeerings" (eq (include "trainforge.clusterwide" .) "true") }}
# HA (replicaCount > 1): kopf watches the peering objects and writes its keep-alive into
# the one it uses (and no other).
- apiGroups: [kopf.dev]
  resources: [{{ $peerings }}]
  verbs: [list, watch]
- apiGroups: [kopf.dev]
  resources: [{{ $peerings }}]
  resourceNames: [{{ include "trainforge.peeringName" . | quote }}]
  verbs: [patch]
{{- end }}
{{- end -}}
