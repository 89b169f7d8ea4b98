{{- define "modelloop.name" -}}modelloop{{- end -}}
{{- define "modelloop.fullname" -}}
{{- if contains "modelloop" .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- else -}}{{ printf "%s-modelloop" .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}
{{- define "modelloop.labels" -}}
app.kubernetes.io/name: modelloop-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: modelloop
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
{{- define "modelloop.selectorLabels" -}}
app.kubernetes.io/name: modelloop-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "modelloop.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ default (include "modelloop.fullname" .) .Values.serviceAccount.name }}{{- else -}}{{ default "default" .Values.serviceAccount.name }}{{- end -}}
{{- end -}}
{{- define "modelloop.rules" -}}
# The three kinds: read, and write their status (never their spec).
- apiGroups: ["modelloop.dev"]
  resources: ["modeltrainings", "modeldeployments", "driftmonitors"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["modelloop.dev"]
  resources: ["modeltrainings/status", "modeldeployments/status", "driftmonitors/status"]
  verbs: ["get", "patch", "update"]
# DriftMonitor's retrain action annotates the ModelTraining it names.
- apiGroups: ["modelloop.dev"]
  resources: ["modeltrainings"]
  verbs: ["patch"]
# Children: training Jobs; server Deployment, Service, HPA, PDB (server-side apply = patch).
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# One NetworkPolicy per ModelDeployment, applied (server-side apply) and garbage-collected with it.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "patch"]
# Failure reasons of training pods; live sketches of ready server pods.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch"]
# Storage credentials named by spec.storage.secretRef: get by name only (no list, no watch).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
- apiGroups: ["events.k8s.io", ""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}

{{- define "modelloop.allowedImages" -}}
{{- $allowed := .Values.admissionPolicy.allowedImages -}}
{{- if not $allowed -}}
{{- $allowed = list (printf "%s:" .Values.runtimeImage.repository) (printf "%s@" .Values.runtimeImage.repository) -}}
{{- end -}}
{{- toJson $allowed -}}
{{- end -}}
