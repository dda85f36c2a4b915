{{/*
The operator's API permissions. Least privilege: every verb below is a call the operator
makes; the comment on each rule names the caller. tests/helm/test_install.py compares them
with the calls a real operator run makes (and `kubectl auth can-i`); docs/install.md has the
same list as a table.

- trainforge.rules: in each watched namespace (or cluster-wide with watch.scope all), the
  one list both the ClusterRole and the per-namespace Roles render.
- trainforge.runtimeRules: ClusterTrainingRuntimes are cluster-scoped, so a ClusterRole
  whatever the watch scope.
- trainforge.leaderElectionRules: HA only (replicaCount > 1), in the release namespace only,
  whatever the watch scope.

Nothing cluster-scoped is needed in namespaced mode: the operator turns kopf's scanning of
namespaces and CRDs off, and records its own Events instead of kopf's.
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
# InferenceService pods are watched too: a server container that cannot start (image pull,
# crash loop) is reported in the service's status.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, create, delete]
# Services: the TrainingJob's headless Service (create); the InferenceService's Service,
# applied like its Deployment (next rules). Neither is ever deleted by the operator: garbage
# collection removes them with their owner.
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch]
# The checkpoint PVC of spec.checkpoint.volumeClaimTemplate (create; watched by label, so a
# deleted one is noticed), and the existence check of a TrainingJob's checkpoint.claimName
# or an InferenceService's model claim, and of who holds a taken name (get).
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, list, watch, create]
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
# Gang scheduling: the PodGroup of scheduling.gang.policy Volcano / Coscheduling (create;
# get when its name is already taken, to tell the job's own from someone else's).
- apiGroups: [scheduling.volcano.sh]
  resources: [podgroups]
  verbs: [get, create]
- apiGroups: [scheduling.x-k8s.io]
  resources: [podgroups]
  verbs: [get, create]
# A TrainingJob's spec.runtimeRef to a TrainingRuntime in its namespace: read once when the
# job starts (then snapshotted in its status); never listed or watched.
- apiGroups: [trainforge.io]
  resources: [trainingruntimes]
  verbs: [get]
{{- if .Values.kueue.enabled }}
# Gang policy Kueue (kueue.enabled): the job's Workload. Watched by label (list, watch); read
# fresh before the gang starts (get); created (create); spec.active follows spec.suspend
# (patch); replaced while queued when the job is edited (delete); Finished, and the quota
# handed back after an eviction (status patch), as Kueue's own job integrations do.
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads/status]
  verbs: [patch]
{{- end }}
# Existence check of spec.network.rdma.networks (Multus NetworkAttachmentDefinitions): a
# missing one becomes a Stalled condition instead of pods stuck in ContainerCreating.
- apiGroups: [k8s.cni.cncf.io]
  resources: [network-attachment-definitions]
  verbs: [get]
{{- end -}}

{{/* ClusterTrainingRuntimes (spec.runtimeRef, or operator.defaultRuntime): read once when a
job starts, like TrainingRuntimes. They are cluster-scoped: a ClusterRole whatever the watch
scope. */}}
{{- define "trainforge.runtimeRules" -}}
- apiGroups: [trainforge.io]
  resources: [clustertrainingruntimes]
  verbs: [get]
{{- end -}}

{{/* HA: the leader election Lease (operator/trainforge/leader.py) in the release namespace.
A replica reads the Lease (get) and renews or takes it over with a resourceVersion-guarded
PUT (update): both are limited to the release's Lease by name. The first replica creates
it (create): RBAC cannot limit create by resourceNames, as the name is not part of the URL
of a POST, so create covers any Lease in the release namespace. */}}
{{- define "trainforge.leaderElectionRules" -}}
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  resourceNames: [{{ include "trainforge.leaseName" . | quote }}]
  verbs: [get, update]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [create]
{{- end -}}


{{/* Gang policy Kueue (kueue.enabled): the admission names ResourceFlavors, whose node labels
and tolerations the workers get, and a job's PriorityClass value becomes its Workload's
priority. Both kinds are cluster-scoped, so this is a ClusterRole whatever the watch scope;
get is the only verb. */}}
{{- define "trainforge.kueueRules" -}}
- apiGroups: [kueue.x-k8s.io]
  resources: [resourceflavors]
  verbs: [get]
- apiGroups: [scheduling.k8s.io]
  resources: [priorityclasses]
  verbs: [get]
{{- end -}}


{{/* Live progress (progress.enabled): the operator checks each worker's projected token with a
TokenReview. TokenReviews are cluster-scoped (a ClusterRole whatever the watch scope); create
is the only verb they have, and it reveals nothing but the verdict on a token the caller
already holds. */}}
{{- define "trainforge.progressRules" -}}
- apiGroups: [authentication.k8s.io]
  resources: [tokenreviews]
  verbs: [create]
{{- end -}}
