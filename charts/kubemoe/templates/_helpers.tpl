{{/* Chart name, overridable. */}}
{{- define "kubemoe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, or the release name alone when it already contains the chart name. */}}
{{- define "kubemoe.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart-version label value. */}}
{{- define "kubemoe.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels for every object of the release. */}}
{{- define "kubemoe.labels" -}}
helm.sh/chart: {{ include "kubemoe.chart" . }}
{{ include "kubemoe.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubemoe
{{- end }}

{{/* Labels the Deployment selects its pods by (immutable: never add to these in an upgrade). */}}
{{- define "kubemoe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubemoe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The operator's ServiceAccount. */}}
{{- define "kubemoe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubemoe.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image: repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "kubemoe.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The MoA router pods' image: the operator image unless routerImage is set. */}}
{{- define "kubemoe.routerImage" -}}
{{- default (include "kubemoe.image" .) .Values.routerImage }}
{{- end }}

{{/* The coordination.k8s.io Lease the replicas elect a leader through (in the release namespace). */}}
{{- define "kubemoe.leaseName" -}}
{{- default (include "kubemoe.fullname" .) .Values.operator.leaseName }}
{{- end }}

{{/* Whether a catalog override ConfigMap is rendered. */}}
{{- define "kubemoe.hasCatalog" -}}
{{- if or .Values.catalog.models .Values.catalog.instances }}true{{- end }}
{{- end }}

{{/*
The operator's permissions, shared by the ClusterRole (all namespaces) and the per-namespace Roles
(watchNamespaces). Each rule is a verb the operator uses; `kubectl auth can-i` tests pin them.
*/}}
{{- define "kubemoe.namespacedRules" -}}
# The custom resources (kopf watches them; the operator patches its own metadata through kopf) and their status.
- apiGroups: [kubemoe.io]
  resources: [moemodels, moapipelines]
  verbs: [get, list, watch, patch]
- apiGroups: [kubemoe.io]
  resources: [moemodels/status, moapipelines/status]
  verbs: [get, patch]
# Children: server-side apply (patch) creates and updates them; pruning deletes those no longer desired.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services, configmaps]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [leaderworkerset.x-k8s.io]
  resources: [leaderworkersets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [get, list, watch, create, patch, delete]
# The parent Gateways of those routes: their listeners and addresses give status.gatewayEndpoint.
- apiGroups: [gateway.networking.k8s.io]
  resources: [gateways]
  verbs: [get]
- apiGroups: [monitoring.coreos.com]
  resources: [prometheusrules, servicemonitors]
  verbs: [get, list, watch, create, patch, delete]
# Observing why a pod is not running (unschedulable, image pull).
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
# Events for decisions and failures.
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
{{- end }}
