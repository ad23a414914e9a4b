{{/*
The standalone pod template, shared by the Deployment (Redis engine with PostgreSQL) and the
StatefulSet (embedded engine, or a SQLite ledger). Takes the root context.
*/}}
{{- define "credit-sidecar.podTemplate" -}}
{{- $ctx := dict "Values" .Values "Release" .Release "Capabilities" .Capabilities "mode" "standalone" -}}
metadata:
  labels:
    {{- include "credit-sidecar.labels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    {{- include "credit-sidecar.podAnnotationsFor" $ctx | nindent 4 }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "credit-sidecar.serviceAccountName" . }}
  automountServiceAccountToken: false
  # Service links would add CREDIT_SIDECAR_SERVICE_HOST, CREDIT_SIDECAR_PORT, ... for a
  # Service named credit-sidecar: noise in the sidecar's own settings namespace.
  enableServiceLinks: false
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  containers:
    {{- include "credit-sidecar.containerFor" $ctx | nindent 4 }}
  volumes:
    {{- include "credit-sidecar.volumesFor" $ctx | nindent 4 }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
