{{/* Names, labels and the values derived from the watch scope. */}}

{{- define "trainforge.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: "trainforge" alone when the release is called that. */}}
{{- define "trainforge.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "trainforge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "trainforge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Not app.kubernetes.io/managed-by: trainforge. That value marks the operator's own
children (TrainingJob pods), and the operator watches pods by it. */}}
{{- define "trainforge.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "trainforge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: trainforge
{{- end -}}

{{- define "trainforge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "trainforge.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "trainforge.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "trainforge.trainerImage" -}}
{{- printf "%s:%s" .Values.trainerImage.repository (default .Chart.AppVersion .Values.trainerImage.tag) -}}
{{- end -}}

{{/* True (non-empty) when the operator watches every namespace. */}}
{{- define "trainforge.clusterwide" -}}
{{- if eq .Values.watch.scope "all" }}true{{ end -}}
{{- end -}}

{{/* The watched namespaces as a JSON list (empty with scope all). */}}
{{- define "trainforge.watchedNamespaces" -}}
{{- if and .Values.watch.namespaces (ne .Values.watch.scope "list") -}}
{{- fail (printf "watch.namespaces is set but watch.scope is %q: set watch.scope=list to watch only those namespaces, or remove watch.namespaces" .Values.watch.scope) -}}
{{- end -}}
{{- if eq .Values.watch.scope "release" -}}
{{- list .Release.Namespace | toJson -}}
{{- else if eq .Values.watch.scope "list" -}}
{{- .Values.watch.namespaces | uniq | toJson -}}
{{- else -}}
{{- list | toJson -}}
{{- end -}}
{{- end -}}

{{/* HA: more than one replica; they elect a leader on a Lease and only the leader reconciles. */}}
{{- define "trainforge.ha" -}}
{{- if gt (int .Values.replicaCount) 1 }}true{{ end -}}
{{- end -}}

{{/* The Lease of the leader election: in the release namespace, named after the release. */}}
{{- define "trainforge.leaseName" -}}
{{- include "trainforge.fullname" . -}}
{{- end -}}

{{/* Labels of the CRDs: the chart's, without the operator component. */}}
{{- define "trainforge.crdLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "trainforge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: trainforge
{{- end -}}
