{{/*
Helpers of the credit-sidecar chart.

Most helpers take a "context": anything with .Values (this chart's values) and .Release. Inside
this chart that is the root context `.`; a parent chart passes
  (dict "Values" (index .Values "credit-sidecar") "Release" .Release)
because its own .Values holds this chart's values (defaults included) under the dependency's
name. Helpers that parents call never touch .Chart, .Capabilities or .Template, which would be
the parent's. The public ones, for parent charts, are:

  credit-sidecar.container       the sidecar container, one list item
  credit-sidecar.volumes         the volumes it mounts, list items
  credit-sidecar.podAnnotations  checksums that roll the pod when the sidecar's config changes

Names are built from the fixed name "credit-sidecar" (not .Chart.Name) so the parent's
references and this chart's objects agree.
*/}}

{{- define "credit-sidecar.name" -}}
{{- default "credit-sidecar" .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "credit-sidecar.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "credit-sidecar.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "credit-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of this chart's own objects (root context only). */}}
{{- define "credit-sidecar.labels" -}}
helm.sh/chart: {{ include "credit-sidecar.chart" . }}
{{ include "credit-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: credit-sidecar
{{- end }}

{{- define "credit-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "credit-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "credit-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "credit-sidecar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The release the default image tag points at. Parent charts cannot see this chart's .Chart, so it
is written here as well; .ci/chart checks it equals appVersion in Chart.yaml.
*/}}
{{- define "credit-sidecar.appVersion" -}}
0.1.0
{{- end }}

{{- define "credit-sidecar.image" -}}
{{- $tag := .Values.image.tag | default (include "credit-sidecar.appVersion" .) }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Object names (both contexts). */}}
{{- define "credit-sidecar.configMapName" -}}
{{- printf "%s-config" (include "credit-sidecar.fullname" .) }}
{{- end }}

{{- define "credit-sidecar.connectionsSecretName" -}}
{{- printf "%s-connections" (include "credit-sidecar.fullname" .) }}
{{- end }}

{{- define "credit-sidecar.authSecretName" -}}
{{- if .Values.auth.existingSecret }}
{{- .Values.auth.existingSecret }}
{{- else }}
{{- printf "%s-auth" (include "credit-sidecar.fullname" .) }}
{{- end }}
{{- end }}

{{/*
Where the tokens file comes from: "tokens", "existingSecret", "generated" or "" (authentication
off). Generated only for the standalone Deployment; the sidecar on loopback runs without.
Takes a context with .mode ("standalone" or "sidecar").
*/}}
{{- define "credit-sidecar.authSource" -}}
{{- $auth := .Values.auth }}
{{- if $auth.existingSecret }}existingSecret
{{- else if $auth.tokens }}tokens
{{- else if and (eq .mode "standalone") $auth.generateToken (not $auth.disabled) }}generated
{{- end }}
{{- end }}

{{/* The gRPC listen address: loopback as a sidecar, bindAddress standalone. */}}
{{- define "credit-sidecar.listen" -}}
{{- if eq .mode "sidecar" }}
{{- printf "127.0.0.1:%d" (int .Values.ports.grpc) }}
{{- else }}
{{- printf "%s:%d" .Values.bindAddress (int .Values.ports.grpc) }}
{{- end }}
{{- end }}

{{- define "credit-sidecar.isLoopback" -}}
{{- $host := regexReplaceAll ":[0-9]+$" . "" }}
{{- if or (hasPrefix "127." $host) (eq $host "[::1]") (eq $host "localhost") }}true{{ end }}
{{- end }}

{{/*
The sqlite URL used when no database is configured: a file on the data emptyDir (the root
filesystem is read-only).
*/}}
{{- define "credit-sidecar.sqliteUrl" -}}
sqlite:///var/lib/credit-sidecar/credit-sidecar.db?mode=rwc
{{- end }}

{{/*
config.toml: `config` and `rules` as TOML. Scalars and lists first, then maps as tables (TOML
puts every key after a [table] header into that table). Values are written with toJson: a JSON
string, number, boolean or array is also valid TOML, and numbers stay integers.
*/}}
{{- define "credit-sidecar.configToml" -}}
# credit-sidecar configuration, rendered by the Helm chart from `config` and `rules`.
# listen, metrics_listen, auth, TLS and Redis settings come from the container's environment.
{{- $settings := merge (dict) .Values.config .Values.rules }}
{{- if not (or .Values.database.url .Values.database.existingSecret) }}
{{- $_ := set $settings "database_url" (include "credit-sidecar.sqliteUrl" .) }}
{{- end }}
{{- range $key, $value := $settings }}
{{- if and (not (kindIs "map" $value)) (not (kindIs "invalid" $value)) }}
{{ $key }} = {{ toJson $value }}
{{- end }}
{{- end }}
{{- range $key, $value := $settings }}
{{- if kindIs "map" $value }}

[{{ $key }}]
{{- range $entry, $amount := $value }}
{{ toJson $entry }} = {{ toJson $amount }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The tokens file from auth.tokens (or the generated token passed as .generated). */}}
{{- define "credit-sidecar.tokensToml" -}}
# credit-sidecar bearer tokens, rendered by the Helm chart.
{{- if .generated }}

[[tokens]]
name = "admin"
token = {{ toJson .generated }}
scopes = ["authorize", "admin"]
{{- end }}
{{- range .Values.auth.tokens }}

[[tokens]]
name = {{ toJson .name }}
{{- if hasKey . "token" }}
token = {{ toJson .token }}
{{- end }}
{{- if hasKey . "sha256" }}
sha256 = {{ toJson .sha256 }}
{{- end }}
scopes = {{ toJson .scopes }}
{{- if hasKey . "accounts" }}
accounts = {{ toJson .accounts }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Checks that do not fit values.schema.json, run wherever the container is rendered (so a parent
chart gets them too). Takes a context with .mode.
*/}}
{{- define "credit-sidecar.validate" -}}
{{- $v := .Values }}
{{- $listen := include "credit-sidecar.listen" . }}
{{- $authSource := include "credit-sidecar.authSource" . }}
{{- if and $v.auth.tokens $v.auth.existingSecret }}
{{- fail "credit-sidecar: set auth.tokens or auth.existingSecret, not both" }}
{{- end }}
{{- if and $v.auth.disabled (or $v.auth.tokens $v.auth.existingSecret) }}
{{- fail "credit-sidecar: auth.disabled is true but auth.tokens or auth.existingSecret is set; choose one" }}
{{- end }}
{{- if and (not $authSource) (not $v.auth.disabled) (not (include "credit-sidecar.isLoopback" $listen)) }}
{{- fail (printf "credit-sidecar: the server listens on %s, which is not loopback, so it needs bearer tokens: set auth.tokens or auth.existingSecret (or auth.generateToken=true), or set auth.disabled=true to serve without authentication" $listen) }}
{{- end }}
{{- if and $v.tls.enabled (not $v.tls.secretName) }}
{{- fail "credit-sidecar: tls.enabled needs tls.secretName (a kubernetes.io/tls Secret with tls.crt and tls.key)" }}
{{- end }}
{{- if and $v.tls.clientAuth (not $v.tls.enabled) }}
{{- fail "credit-sidecar: tls.clientAuth (mTLS) needs tls.enabled" }}
{{- end }}
{{- if and $v.redis.url (or $v.redis.tls.secretName) (not (hasPrefix "rediss://" $v.redis.url)) }}
{{- fail "credit-sidecar: redis.tls.secretName is set, so redis.url must be rediss:// (TLS)" }}
{{- end }}
{{- if and $v.redis.url $v.redis.existingSecret }}
{{- fail "credit-sidecar: set redis.url or redis.existingSecret, not both" }}
{{- end }}
{{- if and $v.database.url $v.database.existingSecret }}
{{- fail "credit-sidecar: set database.url or database.existingSecret, not both" }}
{{- end }}
{{- if eq .mode "standalone" }}
{{- $redis := or $v.redis.url $v.redis.existingSecret }}
{{- $sharedDatabase := or $v.database.existingSecret (and $v.database.url (not (hasPrefix "sqlite:" $v.database.url))) }}
{{- if and (gt (int $v.replicaCount) 1) (not (and $redis $sharedDatabase)) }}
{{- fail (printf "credit-sidecar: replicaCount is %d, but several replicas need the Redis engine (redis.url or redis.existingSecret) and a shared PostgreSQL database (database.url or database.existingSecret): the embedded engine keeps credit state inside one process and SQLite inside one pod" (int $v.replicaCount)) }}
{{- end }}
{{- $graceMs := add (int64 (default 10000 (get $v.config "shutdown_grace_ms"))) (int64 (default 0 (get $v.config "shutdown_drain_ms"))) }}
{{- if le (mul (int64 $v.terminationGracePeriodSeconds) 1000) $graceMs }}
{{- fail (printf "credit-sidecar: terminationGracePeriodSeconds (%d s) must be longer than config.shutdown_drain_ms + config.shutdown_grace_ms (%d ms), or the kubelet kills the sidecar before it has drained calls and flushed settlement" (int64 $v.terminationGracePeriodSeconds) $graceMs) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A probe handler. .kind: "live" (startup and liveness) or "ready". gRPC probes reach the pod IP,
so they only work in standalone mode without TLS; otherwise HTTP on the metrics port.
*/}}
{{- define "credit-sidecar.probeHandler" -}}
{{- $v := .ctx.Values }}
{{- $http := or (eq .ctx.mode "sidecar") $v.tls.enabled }}
{{- if eq $v.probes.handler "http" }}{{ $http = true }}{{ end }}
{{- if eq $v.probes.handler "grpc" }}{{ $http = false }}{{ end }}
{{- if $http -}}
httpGet:
  path: {{ if eq .kind "live" }}/livez{{ else }}/readyz{{ end }}
  port: {{ int $v.ports.metrics }}
{{- else -}}
grpc:
  port: {{ int $v.ports.grpc }}
  service: {{ if eq .kind "live" }}liveness{{ else }}""{{ end }}
{{- end }}
{{- end }}

{{/*
The container, one list item. Takes a context with .mode; parents use credit-sidecar.container.
*/}}
{{- define "credit-sidecar.containerFor" -}}
{{- include "credit-sidecar.validate" . }}
{{- $v := .Values }}
{{- $sidecar := eq .mode "sidecar" }}
{{- $authSource := include "credit-sidecar.authSource" . -}}
- name: {{ if $sidecar }}{{ $v.sidecar.containerName }}{{ else }}credit-sidecar{{ end }}
  image: {{ include "credit-sidecar.image" . | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if and $sidecar $v.sidecar.native }}
  restartPolicy: Always
  {{- end }}
  args:
    - serve
    - --config
    - /etc/credit-sidecar/config.toml
  env:
    - name: CREDIT_SIDECAR_LISTEN
      value: {{ include "credit-sidecar.listen" . | quote }}
    - name: CREDIT_SIDECAR_METRICS_LISTEN
      value: {{ printf "%s:%d" $v.bindAddress (int $v.ports.metrics) | quote }}
    {{- if $authSource }}
    - name: CREDIT_SIDECAR_AUTH_TOKENS_FILE
      value: /etc/credit-sidecar/auth/tokens.toml
    {{- else if $v.auth.disabled }}
    - name: CREDIT_SIDECAR_AUTH_DISABLED
      value: "true"
    {{- end }}
    {{- if $v.tls.enabled }}
    - name: CREDIT_SIDECAR_TLS_CERT_FILE
      value: /etc/credit-sidecar/tls/tls.crt
    - name: CREDIT_SIDECAR_TLS_KEY_FILE
      value: /etc/credit-sidecar/tls/tls.key
    {{- if $v.tls.clientAuth }}
    - name: CREDIT_SIDECAR_TLS_CLIENT_CA_FILE
      value: /etc/credit-sidecar/tls/ca.crt
    {{- end }}
    {{- end }}
    {{- if or $v.redis.url $v.redis.existingSecret }}
    - name: REDIS_URL
      valueFrom:
        secretKeyRef:
          name: {{ $v.redis.existingSecret | default (include "credit-sidecar.connectionsSecretName" .) }}
          key: {{ if $v.redis.existingSecret }}{{ $v.redis.existingSecretKey }}{{ else }}redis-url{{ end }}
    {{- end }}
    {{- if or $v.database.url $v.database.existingSecret }}
    - name: DATABASE_URL
      valueFrom:
        secretKeyRef:
          name: {{ $v.database.existingSecret | default (include "credit-sidecar.connectionsSecretName" .) }}
          key: {{ if $v.database.existingSecret }}{{ $v.database.existingSecretKey }}{{ else }}database-url{{ end }}
    {{- end }}
    {{- if $v.redis.tls.secretName }}
    - name: CREDIT_SIDECAR_REDIS_CA_FILE
      value: /etc/credit-sidecar/redis-tls/ca.crt
    {{- if $v.redis.tls.clientCertificate }}
    - name: CREDIT_SIDECAR_REDIS_CLIENT_CERT_FILE
      value: /etc/credit-sidecar/redis-tls/tls.crt
    - name: CREDIT_SIDECAR_REDIS_CLIENT_KEY_FILE
      value: /etc/credit-sidecar/redis-tls/tls.key
    {{- end }}
    {{- end }}
    {{- if $v.redis.passwordSecret.name }}
    - name: CREDIT_SIDECAR_REDIS_PASSWORD_FILE
      value: /etc/credit-sidecar/redis-password/password
    {{- end }}
    {{- if $v.database.tls.caSecretName }}
    - name: CREDIT_SIDECAR_DATABASE_CA_FILE
      value: /etc/credit-sidecar/database-tls/ca.crt
    {{- end }}
    {{- if $v.database.passwordSecret.name }}
    - name: CREDIT_SIDECAR_DATABASE_PASSWORD_FILE
      value: /etc/credit-sidecar/database-password/password
    {{- end }}
    {{- with $v.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: {{ if $sidecar }}credit-grpc{{ else }}grpc{{ end }}
      containerPort: {{ int $v.ports.grpc }}
      protocol: TCP
    - name: {{ if $sidecar }}credit-metrics{{ else }}metrics{{ end }}
      containerPort: {{ int $v.ports.metrics }}
      protocol: TCP
  startupProbe:
    {{- include "credit-sidecar.probeHandler" (dict "ctx" . "kind" "live") | nindent 4 }}
    {{- toYaml $v.probes.startup | nindent 4 }}
  livenessProbe:
    {{- include "credit-sidecar.probeHandler" (dict "ctx" . "kind" "live") | nindent 4 }}
    {{- toYaml $v.probes.liveness | nindent 4 }}
  readinessProbe:
    {{- include "credit-sidecar.probeHandler" (dict "ctx" . "kind" "ready") | nindent 4 }}
    {{- toYaml $v.probes.readiness | nindent 4 }}
  {{- with $v.lifecycle }}
  lifecycle:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  resources:
    {{- toYaml $v.resources | nindent 4 }}
  securityContext:
    {{- toYaml $v.securityContext | nindent 4 }}
  volumeMounts:
    - name: credit-sidecar-config
      mountPath: /etc/credit-sidecar/config.toml
      subPath: config.toml
      readOnly: true
    - name: credit-sidecar-data
      mountPath: /var/lib/credit-sidecar
    - name: credit-sidecar-tmp
      mountPath: /tmp
    {{- if $authSource }}
    # A directory, not a subPath: Secret updates reach the file and the sidecar re-reads it.
    - name: credit-sidecar-auth
      mountPath: /etc/credit-sidecar/auth
      readOnly: true
    {{- end }}
    {{- if $v.tls.enabled }}
    - name: credit-sidecar-tls
      mountPath: /etc/credit-sidecar/tls
      readOnly: true
    {{- end }}
    {{- range $volume := include "credit-sidecar.storeSecrets" . | fromYamlArray }}
    - name: {{ $volume.name }}
      mountPath: {{ $volume.path }}
      readOnly: true
    {{- end }}
{{- end }}

{{/*
The Secrets with the stores' TLS material and passwords, as a YAML list of {name, path, secret,
items: [{key, path}]}: one place for the container's mounts and the pod's volumes.
*/}}
{{- define "credit-sidecar.storeSecrets" -}}
{{- $v := .Values }}
{{- $list := list }}
{{- if $v.redis.tls.secretName }}
{{- $items := list (dict "key" "ca.crt" "path" "ca.crt") }}
{{- if $v.redis.tls.clientCertificate }}
{{- $items = concat $items (list (dict "key" "tls.crt" "path" "tls.crt") (dict "key" "tls.key" "path" "tls.key")) }}
{{- end }}
{{- $list = append $list (dict "name" "credit-sidecar-redis-tls" "path" "/etc/credit-sidecar/redis-tls" "secret" $v.redis.tls.secretName "items" $items) }}
{{- end }}
{{- if $v.redis.passwordSecret.name }}
{{- $list = append $list (dict "name" "credit-sidecar-redis-password" "path" "/etc/credit-sidecar/redis-password" "secret" $v.redis.passwordSecret.name "items" (list (dict "key" $v.redis.passwordSecret.key "path" "password"))) }}
{{- end }}
{{- if $v.database.tls.caSecretName }}
{{- $list = append $list (dict "name" "credit-sidecar-database-tls" "path" "/etc/credit-sidecar/database-tls" "secret" $v.database.tls.caSecretName "items" (list (dict "key" "ca.crt" "path" "ca.crt"))) }}
{{- end }}
{{- if $v.database.passwordSecret.name }}
{{- $list = append $list (dict "name" "credit-sidecar-database-password" "path" "/etc/credit-sidecar/database-password" "secret" $v.database.passwordSecret.name "items" (list (dict "key" $v.database.passwordSecret.key "path" "password"))) }}
{{- end }}
{{- toYaml $list }}
{{- end }}

{{/* The volumes of credit-sidecar.containerFor, list items. Takes a context with .mode. */}}
{{- define "credit-sidecar.volumesFor" -}}
{{- $v := .Values }}
{{- $authSource := include "credit-sidecar.authSource" . -}}
- name: credit-sidecar-config
  configMap:
    name: {{ include "credit-sidecar.configMapName" . }}
- name: credit-sidecar-data
  {{- if $v.dataVolume.sizeLimit }}
  emptyDir:
    sizeLimit: {{ $v.dataVolume.sizeLimit }}
  {{- else }}
  emptyDir: {}
  {{- end }}
- name: credit-sidecar-tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if $authSource }}
- name: credit-sidecar-auth
  secret:
    secretName: {{ include "credit-sidecar.authSecretName" . }}
    items:
      - key: {{ if eq $authSource "existingSecret" }}{{ $v.auth.existingSecretKey }}{{ else }}tokens.toml{{ end }}
        path: tokens.toml
{{- end }}
{{- if $v.tls.enabled }}
- name: credit-sidecar-tls
  secret:
    secretName: {{ $v.tls.secretName }}
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
      {{- if $v.tls.clientAuth }}
      - key: ca.crt
        path: ca.crt
      {{- end }}
{{- end }}
{{- range $volume := include "credit-sidecar.storeSecrets" . | fromYamlArray }}
- name: {{ $volume.name }}
  secret:
    secretName: {{ $volume.secret }}
    items:
      {{- toYaml $volume.items | nindent 6 }}
{{- end }}
{{- end }}

{{/*
Pod annotations that roll the pod when what the sidecar reads only at start changes: the config
file and the chart-managed connection URLs. Not the tokens file: it is re-read live.
*/}}
{{- define "credit-sidecar.podAnnotationsFor" -}}
checksum/credit-sidecar-config: {{ include "credit-sidecar.configToml" . | sha256sum }}
{{- if or .Values.redis.url .Values.database.url }}
checksum/credit-sidecar-connections: {{ printf "%s|%s" .Values.redis.url .Values.database.url | sha256sum }}
{{- end }}
{{- end }}

{{/* ---- For parent charts: context (dict "Values" (index .Values "credit-sidecar") "Release" .Release) ---- */}}

{{- define "credit-sidecar.container" -}}
{{- include "credit-sidecar.containerFor" (dict "Values" .Values "Release" .Release "mode" "sidecar") }}
{{- end }}

{{- define "credit-sidecar.volumes" -}}
{{- include "credit-sidecar.volumesFor" (dict "Values" .Values "Release" .Release "mode" "sidecar") }}
{{- end }}

{{- define "credit-sidecar.podAnnotations" -}}
{{- include "credit-sidecar.podAnnotationsFor" (dict "Values" .Values "Release" .Release "mode" "sidecar") }}
{{- end }}

{{/* An IntOrString from its string form: "1" → 1, "50%" → "50%". */}}
{{- define "credit-sidecar.intOrString" -}}
{{- if regexMatch "^[0-9]+$" . }}{{ . }}{{ else }}{{ . | quote }}{{ end }}
{{- end }}
