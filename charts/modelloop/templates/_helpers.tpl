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
# Exactly the calls the operator makes (tests/e2e/test_rbac.py compares these rules with the apiserver's
# audit log of a test session). Children are written with server-side apply: a `patch` request, which the
# apiserver also authorizes as `create` when the object does not exist yet.
# The three kinds: read (kopf watches them), and write their status (never their spec).
- apiGroups: ["modelloop.dev"]
  resources: ["modeltrainings", "modeldeployments", "driftmonitors"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["modelloop.dev"]
  resources: ["modeltrainings/status", "modeldeployments/status", "driftmonitors/status"]
  verbs: ["patch"]
# A DriftMonitor's retrain request annotates the ModelTraining it names; a run clears the dataset override; a
# ModelDeployment's promote or abort annotation is removed once acted upon.
- apiGroups: ["modelloop.dev"]
  resources: ["modeltrainings", "modeldeployments"]
  verbs: ["patch"]
# Training Jobs: watched, created by name, the oldest deleted past spec.historyLimit.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "watch", "create", "delete"]
# The server Deployments (the champion, and a challenger while one is analysed): watched (rollout progress),
# applied, and a challenger's deleted once it is promoted or rejected.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Services and NetworkPolicies: applied; the garbage collector removes them with their owner, and a challenger's
# are deleted with it.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["create", "patch", "delete"]
# HPA and PDB: applied, and deleted when the spec no longer calls for them (autoscaling off, one replica);
# listed once per namespace (the operator's own, by label) to know which exist.
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["list", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["list", "create", "patch", "delete"]
# The canary's HTTPRoute (spec.rollout.gateway): applied at each step, deleted like an HPA when the spec no
# longer names a Gateway, listed once per namespace to know which exist. Never read alone: the apply answers with
# the route.
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["list", "create", "patch", "delete"]
# Failure reasons of a failed training's pods.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# The ready server pods whose sketches a DriftMonitor merges.
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["list"]
# Each DriftMonitor's window baseline (per-pod sketches), kept across operator restarts and leader changes:
# read by name and applied.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch"]
# Storage credentials named by spec.storage.secretRef: get by name only (no list, no watch).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# modelloop's Events (events.k8s.io) and kopf's own warnings when a handler fails (core Events).
- apiGroups: ["events.k8s.io", ""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}

{{- define "modelloop.allowedImages" -}}
{{- $allowed := .Values.admissionPolicy.allowedImages -}}
{{- if not $allowed -}}
{{- $allowed = list (printf "%s:" .Values.runtimeImage.repository) (printf "%s@" .Values.runtimeImage.repository) -}}
{{- end -}}
{{- toJson $allowed -}}
{{- end -}}
