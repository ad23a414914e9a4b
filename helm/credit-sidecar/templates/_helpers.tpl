{{/*
Helpers of the credit-sidecar chart.

Most helpers take a "context": anything with .Values (this chart's values), .Release and
.Capabilities. Inside this chart that is the root context `.`; a parent chart passes
  (dict "Values" (index .Values "credit-sidecar") "Release" .Release "Capabilities" .Capabilities)
because its own .Values holds this chart's values (defaults included) under the dependency's
name. .Capabilities (the cluster's Kubernetes version) is the same for the parent and this
chart; helpers that parents call never touch .Chart or .Template, which would be the parent's.
The public ones, for parent charts, are:

  credit-sidecar.native          "true" when the container goes into initContainers as a native
                                 sidecar (sidecar.native, or auto: Kubernetes >= 1.29), else ""
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

{{/*
"true" when the cluster's Kubernetes version is at least .version ("1.29"), else "". Takes
(dict "ctx" <context> "version" "1.29"). The "-0" lets provider builds such as 1.29.3-eks-1a2b
(pre-releases to semver) count as 1.29.3.
*/}}
{{- define "credit-sidecar.kubeAtLeast" -}}
{{- $capabilities := get .ctx "Capabilities" }}
{{- if not $capabilities }}
{{- fail "credit-sidecar: the context passed to the chart's helpers has no Capabilities (the cluster's Kubernetes version); a parent chart builds it as (dict \"Values\" (index .Values \"credit-sidecar\") \"Release\" .Release \"Capabilities\" .Capabilities)" }}
{{- end }}
{{- if semverCompare (printf ">=%s-0" .version) $capabilities.KubeVersion.Version }}true{{ end }}
{{- end }}

{{/*
Whether an injected sidecar is a native one (initContainers with restartPolicy: Always):
sidecar.native true or false, or auto: from Kubernetes 1.29, where the SidecarContainers feature
is on by default (beta; GA in 1.33). On 1.28 the field exists behind an alpha feature gate that
is off by default; an API server with the gate off drops restartPolicy, and the sidecar becomes
an init container that never exits, so the pod never starts. true is refused before 1.28, which
has no such field at all.
*/}}
{{- define "credit-sidecar.native" -}}
{{- $native := .Values.sidecar.native }}
{{- if eq (toString $native) "auto" }}
{{- include "credit-sidecar.kubeAtLeast" (dict "ctx" . "version" "1.29") }}
{{- else if $native }}
{{- if not (include "credit-sidecar.kubeAtLeast" (dict "ctx" . "version" "1.28")) }}
{{- fail (printf "credit-sidecar: sidecar.native is true, but Kubernetes %s has no native sidecars (init containers got restartPolicy in 1.28, on by default from 1.29): set sidecar.native to auto or false" .Capabilities.KubeVersion.Version) }}
{{- end -}}
true
{{- end }}
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
The sqlite URL used when no database is configured: a file on the data volume at
/var/lib/credit-sidecar (the root filesystem is read-only).
*/}}
{{- define "credit-sidecar.sqliteUrl" -}}
sqlite:///var/lib/credit-sidecar/credit-sidecar.db?mode=rwc
{{- end }}

{{/*
"true" when the ledger is a SQLite file in the pod: no database configured (the default file
above), or a sqlite: database.url. A database.existingSecret is taken to hold a PostgreSQL URL.
*/}}
{{- define "credit-sidecar.sqliteLedger" -}}
{{- $db := .Values.database }}
{{- if or (not (or $db.url $db.existingSecret)) (hasPrefix "sqlite:" $db.url) }}true{{ end }}
{{- end }}

{{/*
"true" when the standalone release must never run two pods at once, and so runs as a StatefulSet
of at most one replica: the embedded engine (credit state inside one process) or a SQLite ledger
(one file on one volume).
*/}}
{{- define "credit-sidecar.singleton" -}}
{{- if or (not (or .Values.redis.url .Values.redis.existingSecret)) (include "credit-sidecar.sqliteLedger" .) }}true{{ end }}
{{- end }}

{{/*
The PersistentVolumeClaim mounted at /var/lib/credit-sidecar, or "" for an emptyDir. Only a SQLite
ledger needs one (PostgreSQL holds the ledger elsewhere, and the embedded engine restores its
state from the ledger at start). Standalone: persistence.existingClaim or the chart's own claim
(templates/persistentvolumeclaim.yaml). Injected as a sidecar: only persistence.existingClaim
(the chart cannot give each of a parent's pods a volume). Takes a context with .mode.
*/}}
{{- define "credit-sidecar.dataClaim" -}}
{{- $p := .Values.persistence }}
{{- if and (include "credit-sidecar.sqliteLedger" .) $p.enabled }}
{{- if $p.existingClaim }}
{{- $p.existingClaim }}
{{- else if eq .mode "standalone" }}
{{- printf "%s-data" (include "credit-sidecar.fullname" .) }}
{{- end }}
{{- end }}
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
{{- if .Values.webhooks.secretName }}
{{- $_ := set $settings "webhook_secret_file" "/etc/credit-sidecar/webhook-secret/secret" }}
{{- end }}
{{- /* The outage journal (also on with fail_open_categories, whose holds are rows in its file)
lives on the data volume unless journal_path says otherwise. */}}
{{- if and (or $settings.journal_categories $settings.fail_open_categories) (not $settings.journal_path) }}
{{- $_ := set $settings "journal_path" "/var/lib/credit-sidecar/journal.db" }}
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
{{- range $hook := list "preStop" "postStart" }}
{{- $handler := get $v.lifecycle $hook }}
{{- /* Nested: Helm before 3.8 (Go < 1.18) evaluates every argument of `and`. */}}
{{- if kindIs "map" $handler }}
{{- if and (hasKey $handler "sleep") (not (include "credit-sidecar.kubeAtLeast" (dict "ctx" $ "version" "1.30"))) }}
{{- fail (printf "credit-sidecar: lifecycle.%s.sleep needs Kubernetes >= 1.30 (the sleep action), and this cluster is %s; the image has no shell for an exec sleep. Remove it: after SIGTERM the sidecar keeps taking calls for config.shutdown_drain_ms while its health says NOT_SERVING, which gives clients the same time to move away" $hook $.Capabilities.KubeVersion.Version) }}
{{- end }}
{{- end }}
{{- end }}
{{- $sqlite := include "credit-sidecar.sqliteLedger" . }}
{{- if and (hasPrefix "sqlite:" $v.database.url) (not (regexMatch "^sqlite:(//)?/var/lib/credit-sidecar/[^/?]" $v.database.url)) }}
{{- fail "credit-sidecar: database.url names a SQLite file outside /var/lib/credit-sidecar/, the one directory on the ledger's volume (the root filesystem is read-only and /tmp is an emptyDir): use sqlite:///var/lib/credit-sidecar/<file>.db?mode=rwc, or PostgreSQL" }}
{{- end }}
{{- if and $sqlite (not (include "credit-sidecar.dataClaim" .)) (not $v.persistence.acknowledgeStateLoss) }}
{{- if eq .mode "standalone" }}
{{- fail "credit-sidecar: persistence.enabled is false, so the SQLite ledger (every credit, hold and charge) would live on an emptyDir and be lost whenever the pod is deleted, rescheduled or upgraded. Set persistence.enabled=true (a PersistentVolumeClaim), or keep the ledger in PostgreSQL (database.existingSecret, with redis.existingSecret for the Redis engine), or set persistence.acknowledgeStateLoss=true to accept losing it" }}
{{- else }}
{{- fail "credit-sidecar: the injected sidecar's SQLite ledger (every credit, hold and charge) would live on an emptyDir of the parent's pod and be lost whenever that pod is deleted, rescheduled or upgraded. Use Redis and PostgreSQL (redis.existingSecret, database.existingSecret), or mount a claim with persistence.existingClaim (for a single pod), or set persistence.acknowledgeStateLoss=true to accept losing it" }}
{{- end }}
{{- end }}
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
{{- fail (printf "credit-sidecar: replicaCount is %d, but several replicas need the Redis engine (redis.url or redis.existingSecret) and a shared PostgreSQL database (database.url or database.existingSecret): the embedded engine keeps credit state inside one process, and a SQLite ledger is one file on one ReadWriteOnce volume, so either runs as a StatefulSet of one pod" (int $v.replicaCount)) }}
{{- end }}
{{- if and $v.updateStrategy (include "credit-sidecar.singleton" .) }}
{{- fail "credit-sidecar: updateStrategy is for the Deployment of the Redis engine with PostgreSQL; the embedded engine and a SQLite ledger run as a StatefulSet of one pod, which starts a new pod only after the old one has stopped: leave updateStrategy empty" }}
{{- end }}
{{- if and (get $v.config "webhook_urls") (not $v.webhooks.secretName) }}
{{- fail "credit-sidecar: config.webhook_urls needs webhooks.secretName: a Secret you manage whose key webhooks.secretKey holds the webhooks' signing key (README, \"Alerts\")" }}
{{- end }}
{{- if and $v.webhooks.secretName (not (get $v.config "webhook_urls")) }}
{{- fail "credit-sidecar: webhooks.secretName does nothing without config.webhook_urls" }}
{{- end }}
{{- $graceMs := add (int64 (default 10000 (get $v.config "shutdown_grace_ms"))) (int64 (default 0 (get $v.config "shutdown_drain_ms"))) }}
{{- if le (mul (int64 $v.terminationGracePeriodSeconds) 1000) $graceMs }}
{{- fail (printf "credit-sidecar: terminationGracePeriodSeconds (%d s) must be longer than config.shutdown_drain_ms + config.shutdown_grace_ms (%d ms), or the kubelet kills the sidecar before it has drained calls and flushed settlement" (int64 $v.terminationGracePeriodSeconds) $graceMs) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A probe handler. .kind: "live" (startup and liveness) or "ready". auto: gRPC probes reach the pod
IP, so they only work in standalone mode without TLS, and only from Kubernetes 1.27, where they
are GA (beta from 1.24, behind the GRPCContainerProbe feature gate, which a cluster may have
turned off); otherwise HTTP on the metrics port, which answers the same two questions
(/livez = the `liveness` service, /readyz = the server "") on every version. The image has no
shell and no grpc_health_probe, so there is no exec fallback.
*/}}
{{- define "credit-sidecar.probeHandler" -}}
{{- $v := .ctx.Values }}
{{- $http := or (eq .ctx.mode "sidecar") $v.tls.enabled (not (include "credit-sidecar.kubeAtLeast" (dict "ctx" .ctx "version" "1.27"))) }}
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
  {{- if $sidecar }}
  {{- if include "credit-sidecar.native" . }}
  restartPolicy: Always
  {{- end }}
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
{{- if $v.webhooks.secretName }}
{{- $list = append $list (dict "name" "credit-sidecar-webhook-secret" "path" "/etc/credit-sidecar/webhook-secret" "secret" $v.webhooks.secretName "items" (list (dict "key" $v.webhooks.secretKey "path" "secret"))) }}
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
  {{- $claim := include "credit-sidecar.dataClaim" . }}
  {{- if $claim }}
  persistentVolumeClaim:
    claimName: {{ $claim }}
  {{- else if $v.dataVolume.sizeLimit }}
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

{{/* ---- For parent charts: context (dict "Values" (index .Values "credit-sidecar") "Release" .Release "Capabilities" .Capabilities) ---- */}}

{{- define "credit-sidecar.container" -}}
{{- include "credit-sidecar.containerFor" (dict "Values" .Values "Release" .Release "Capabilities" (get . "Capabilities") "mode" "sidecar") }}
{{- end }}

{{- define "credit-sidecar.volumes" -}}
{{- include "credit-sidecar.volumesFor" (dict "Values" .Values "Release" .Release "Capabilities" (get . "Capabilities") "mode" "sidecar") }}
{{- end }}

{{- define "credit-sidecar.podAnnotations" -}}
{{- include "credit-sidecar.podAnnotationsFor" (dict "Values" .Values "Release" .Release "Capabilities" (get . "Capabilities") "mode" "sidecar") }}
{{- end }}

{{/* An IntOrString from its string form: "1" → 1, "50%" → "50%". */}}
{{- define "credit-sidecar.intOrString" -}}
{{- if regexMatch "^[0-9]+$" . }}{{ . }}{{ else }}{{ . | quote }}{{ end }}
{{- end }}
