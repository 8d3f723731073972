{{/*
Names, labels, images and the environment every component shares. One home for each fact: the listen ports,
the secret keys and the non-secret configuration are defined here once and used by the Deployments, the
ConfigMaps and the migration Job.
*/}}

{{/* The chart name, overridable with nameOverride. */}}
{{- define "tenantry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The object-name prefix: "<release>-<chart>", or the release name when it already contains the chart name. */}}
{{- define "tenantry.fullname" -}}
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

{{/* The name of one component's objects: include "tenantry.componentName" (dict "ctx" $ "component" "gateway"). */}}
{{- define "tenantry.componentName" -}}
{{- printf "%s-%s" (include "tenantry.fullname" .ctx | trunc 48 | trimSuffix "-") .component }}
{{- end }}

{{- define "tenantry.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of one component (immutable in a Deployment: never add version labels here). */}}
{{- define "tenantry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tenantry.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Common labels of one component's objects. */}}
{{- define "tenantry.labels" -}}
helm.sh/chart: {{ include "tenantry.chart" .ctx }}
{{ include "tenantry.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: tenantry
{{- end }}

{{/* "repository:tag" of a component image; the tag defaults to the chart's appVersion. */}}
{{- define "tenantry.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag | toString) }}
{{- end }}

{{- define "tenantry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tenantry.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret every pod reads: the operator's existingSecret, else the one this chart creates. */}}
{{- define "tenantry.secretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else }}
{{- include "tenantry.fullname" . }}
{{- end }}
{{- end }}

{{/* The Secret the pre-install/pre-upgrade migration Job reads (created as a hook just before it). */}}
{{- define "tenantry.migrationSecretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else }}
{{- include "tenantry.componentName" (dict "ctx" . "component" "migrate") }}
{{- end }}
{{- end }}

{{/* Listen ports of the containers; the images' defaults and the probes use the same numbers. */}}
{{- define "tenantry.tenantServicePort" -}}8001{{- end }}
{{- define "tenantry.gatewayPort" -}}8080{{- end }}
{{- define "tenantry.notesPort" -}}8002{{- end }}

{{- define "tenantry.tenantServiceUrl" -}}
{{- printf "http://%s:%v" (include "tenantry.componentName" (dict "ctx" . "component" "tenant-service")) .Values.tenantService.service.port }}
{{- end }}

{{- define "tenantry.gatewayUrl" -}}
{{- printf "http://%s:%v" (include "tenantry.componentName" (dict "ctx" . "component" "gateway")) .Values.gateway.service.port }}
{{- end }}

{{/*
Secret data, keyed by environment variable, of the inline `secrets` values. Checks that a working set is given
and fails with a message naming the missing value otherwise.
*/}}
{{- define "tenantry.secretData" -}}
{{- $s := .Values.secrets }}
{{- $hint := "set it under secrets, or name a Secret holding every key with existingSecret" }}
{{- if not (or $s.adminToken $s.adminTokens) }}
{{- fail (printf "secrets.adminToken (or secrets.adminTokens) is required: %s" $hint) }}
{{- end }}
{{- if not $s.gatewayServiceToken }}
{{- fail (printf "secrets.gatewayServiceToken is required (the gateway's own service token, scope directory:read): %s" $hint) }}
{{- end }}
{{- if and .Values.notes.enabled (not $s.serviceToken) }}
{{- fail (printf "secrets.serviceToken is required when notes.enabled is true: %s" $hint) }}
{{- end }}
{{- if eq $s.serviceToken $s.gatewayServiceToken }}
{{- fail "secrets.serviceToken and secrets.gatewayServiceToken must differ: each app gets its own token and scopes" }}
{{- end }}
{{- $data := dict
  "ENCRYPTION_KEYS" (required (printf "secrets.encryptionKeys is required: %s" $hint) $s.encryptionKeys)
  "API_KEY_HASH_SECRET" (required (printf "secrets.apiKeyHashSecret is required: %s" $hint) $s.apiKeyHashSecret)
  "JWT_SIGNING_KEYS" (required (printf "secrets.jwtSigningKeys is required: %s" $hint) $s.jwtSigningKeys)
  "DATABASE_URL" (required (printf "secrets.databaseUrl is required: %s" $hint) $s.databaseUrl)
  "REDIS_URL" (required (printf "secrets.redisUrl is required: %s" $hint) $s.redisUrl)
}}
{{- range $key, $value := dict "ADMIN_TOKEN" $s.adminToken "ADMIN_TOKENS" $s.adminTokens "SERVICE_TOKEN" $s.serviceToken "SERVICE_TOKENS" $s.serviceTokens "GATEWAY_SERVICE_TOKEN" $s.gatewayServiceToken "TENANT_DATABASE_URL" $s.tenantDatabaseUrl "AWS_ACCESS_KEY_ID" $s.awsAccessKeyId "AWS_SECRET_ACCESS_KEY" $s.awsSecretAccessKey }}
{{- if $value }}
{{- $_ := set $data $key $value }}
{{- end }}
{{- end }}
{{- range $i, $server := .Values.extraDatabaseServers }}
{{- if $server.url }}
{{- $_ := set $data (include "tenantry.extraDatabaseServerKey" $i) $server.url }}
{{- end }}
{{- end }}
{{- range $key, $value := $data }}
{{ $key }}: {{ $value | b64enc | quote }}
{{- end }}
{{- end }}

{{/* Refuses inline secrets next to existingSecret: one source of truth. */}}
{{- define "tenantry.checkSecrets" -}}
{{- if .Values.existingSecret }}
{{- range $key, $value := .Values.secrets }}
{{- if $value }}
{{- fail (printf "secrets.%s is set together with existingSecret %q: put it in that Secret instead" $key $.Values.existingSecret) }}
{{- end }}
{{- end }}
{{- end }}
{{- $names := list }}
{{- range $i, $server := .Values.extraDatabaseServers }}
{{- if has $server.name $names }}
{{- fail (printf "extraDatabaseServers: the name %q is given twice" $server.name) }}
{{- end }}
{{- $names = append $names $server.name }}
{{- if and $server.url $.Values.existingSecret }}
{{- fail (printf "extraDatabaseServers[%d] (%s) has an inline url, but with existingSecret %q the chart keeps no Secret: put the url in a Secret and give its existingSecret and key" $i $server.name $.Values.existingSecret) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The key of the chart's Secret holding the url of the extraDatabaseServers entry at this index. */}}
{{- define "tenantry.extraDatabaseServerKey" -}}
{{- printf "EXTRA_DATABASE_SERVER_%d" (int .) }}
{{- end }}

{{/*
EXTRA_DATABASE_SERVERS, with no url in the pod spec: each server's url is read from its Secret into a variable of
its own, and EXTRA_DATABASE_SERVERS joins them as "name=$(VAR);..." (Kubernetes expands references to variables
defined before it in the same container). include "tenantry.extraDatabaseServersEnv" (dict "ctx" $ "name" <the
chart's Secret>).
*/}}
{{- define "tenantry.extraDatabaseServersEnv" -}}
{{- $entries := list }}
{{- range $i, $server := .ctx.Values.extraDatabaseServers }}
{{- $variable := printf "TENANTRY_DATABASE_SERVER_URL_%d" $i }}
- name: {{ $variable }}
  valueFrom:
    secretKeyRef:
      name: {{ $server.existingSecret | default $.name }}
      key: {{ $server.key | default (include "tenantry.extraDatabaseServerKey" $i) }}
{{- $entries = append $entries (printf "%s=$(%s)" $server.name $variable) }}
{{- end }}
{{- if $entries }}
- name: EXTRA_DATABASE_SERVERS
  value: {{ join ";" $entries | quote }}
{{- end }}
{{- end }}

{{/*
env entries reading keys of the Secret: include "tenantry.secretEnv" (dict "name" <secret> "required" (list ...) "optional" (list ...)).
Optional keys may be absent from the Secret (the process then uses its default).
*/}}
{{- define "tenantry.secretEnv" -}}
{{- $name := .name }}
{{- range .required }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ . }}
{{- end }}
{{- range .optional }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ . }}
      optional: true
{{- end }}
{{- end }}

{{/* Secret keys of the tenant-service and its migration Job: include (dict "ctx" $ "name" <secret>). */}}
{{- define "tenantry.tenantServiceSecretEnv" -}}
{{- include "tenantry.secretEnv" (dict "name" .name "required" (list "DATABASE_URL" "ENCRYPTION_KEYS" "API_KEY_HASH_SECRET" "REDIS_URL") "optional" (list "TENANT_DATABASE_URL" "ADMIN_TOKEN" "ADMIN_TOKENS" "SERVICE_TOKEN" "SERVICE_TOKENS" "GATEWAY_SERVICE_TOKEN")) }}
{{- include "tenantry.extraDatabaseServersEnv" . }}
{{- end }}

{{/*
Keys of the backup store's credentials (tenant-service only): from backups.s3.existingSecret when named, else from
the platform's Secret. Optional: without them the process uses its cloud identity, and a file store needs none.
*/}}
{{- define "tenantry.backupStoreSecretEnv" -}}
{{- $name := .Values.backups.s3.existingSecret | default (include "tenantry.secretName" .) }}
{{- include "tenantry.secretEnv" (dict "name" $name "optional" (list "AWS_ACCESS_KEY_ID" "AWS_SECRET_ACCESS_KEY")) }}
{{- end }}

{{/*
The directory of a file:// backup store ("" for an s3:// one), and checks that its volume can be shared by the
tenant-service pods.
*/}}
{{- define "tenantry.backupDir" -}}
{{- $b := .Values.backups }}
{{- if hasPrefix "file://" $b.storeUrl }}
{{- if not $b.persistence.enabled }}
{{- fail (printf "backups.storeUrl %q is a directory but backups.persistence.enabled is false: the backups would be lost with the pod; enable persistence or use an s3:// storeUrl" $b.storeUrl) }}
{{- end }}
{{- if and (gt (int .Values.tenantService.replicas) 1) (not $b.persistence.existingClaim) (not (has "ReadWriteMany" $b.persistence.accessModes)) }}
{{- fail (printf "tenantService.replicas (%d) pods share the file store of backups.storeUrl: add ReadWriteMany to backups.persistence.accessModes, name a ReadWriteMany backups.persistence.existingClaim, or use an s3:// storeUrl" (int .Values.tenantService.replicas)) }}
{{- end }}
{{- trimPrefix "file://" $b.storeUrl }}
{{- end }}
{{- end }}

{{/* The PersistentVolumeClaim of a file:// backup store: the operator's existingClaim, else the chart's. */}}
{{- define "tenantry.backupClaimName" -}}
{{- .Values.backups.persistence.existingClaim | default (include "tenantry.componentName" (dict "ctx" . "component" "backups")) }}
{{- end }}

{{/* Non-secret configuration of the tenant-service, keyed by environment variable (ConfigMap and Job). */}}
{{- define "tenantry.tenantServiceConfig" -}}
{{- $c := .Values.tenantService.config }}
BASE_DOMAIN: {{ .Values.config.baseDomain | quote }}
LOG_FORMAT: {{ .Values.config.logFormat | quote }}
LOG_LEVEL: {{ .Values.config.logLevel | quote }}
CUTOVER_HOLD_SECONDS: {{ .Values.config.cutoverHoldSeconds | toString | quote }}
{{- with $c.tenantDbHost }}
TENANT_DB_HOST: {{ . | quote }}
{{- end }}
{{- if $c.tenantDbPort }}
TENANT_DB_PORT: {{ $c.tenantDbPort | toString | quote }}
{{- end }}
TEMPLATE_DATABASE: {{ $c.templateDatabase | quote }}
TENANT_DB_PREFIX: {{ $c.tenantDbPrefix | quote }}
{{- with $c.tenantMigrationsDir }}
TENANT_MIGRATIONS_DIR: {{ . | quote }}
{{- end }}
TENANT_SERVICE_REDIS_TIMEOUT: {{ $c.redisTimeout | toString | quote }}
UPSTREAM_ALLOWLIST: {{ join "," $c.upstreamAllowlist | quote }}
{{- $scopes := list }}
{{- range $name, $granted := $c.serviceTokenScopes }}
{{- $scopes = append $scopes (printf "%s=%s" $name (join "+" $granted)) }}
{{- end }}
SERVICE_TOKEN_SCOPES: {{ join "," $scopes | quote }}
DEFAULT_PLAN: {{ $c.defaultPlan | quote }}
DELETE_RETENTION_SECONDS: {{ $c.deleteRetentionSeconds | int64 | toString | quote }}
API_KEY_GRACE_SECONDS: {{ $c.apiKeyGraceSeconds | int64 | toString | quote }}
RECONCILE_INTERVAL_SECONDS: {{ $c.reconcileIntervalSeconds | toString | quote }}
CREATE_DATABASE_ATTEMPTS: {{ $c.createDatabaseAttempts | int64 | toString | quote }}
DB_POOL_SIZE: {{ $c.dbPoolSize | int64 | toString | quote }}
DB_CONNECT_TIMEOUT: {{ $c.dbConnectTimeout | toString | quote }}
DB_STATEMENT_TIMEOUT_MS: {{ $c.dbStatementTimeoutMs | int64 | toString | quote }}
TENANT_SERVICE_MAX_REQUEST_BODY_BYTES: {{ $c.maxRequestBodyBytes | int64 | toString | quote }}
OPERATION_WORKERS: {{ $c.operationWorkers | int64 | toString | quote }}
OPERATION_POLL_SECONDS: {{ $c.operationPollSeconds | toString | quote }}
DEFAULT_SERVER_CAPACITY: {{ $c.defaultServerCapacity | int64 | toString | quote }}
MOVE_KEEP_SECONDS: {{ $c.moveKeepSeconds | int64 | toString | quote }}
DRAIN_CONCURRENCY: {{ $c.drainConcurrency | int64 | toString | quote }}
MOVE_CATCH_UP_SECONDS: {{ $c.moveCatchUpSeconds | toString | quote }}
USAGE_SIZE_SAMPLE_SECONDS: {{ $c.usageSizeSampleSeconds | toString | quote }}
USAGE_HOURLY_RETENTION_DAYS: {{ $c.usageHourlyRetentionDays | int64 | toString | quote }}
USAGE_DAILY_RETENTION_DAYS: {{ $c.usageDailyRetentionDays | int64 | toString | quote }}
WEBHOOK_CONCURRENCY: {{ $c.webhookConcurrency | int64 | toString | quote }}
WEBHOOK_ENDPOINT_CONCURRENCY: {{ $c.webhookEndpointConcurrency | int64 | toString | quote }}
WEBHOOK_TIMEOUT_SECONDS: {{ $c.webhookTimeoutSeconds | toString | quote }}
WEBHOOK_POLL_SECONDS: {{ $c.webhookPollSeconds | toString | quote }}
WEBHOOK_BACKOFF_BASE_SECONDS: {{ $c.webhookBackoffBaseSeconds | toString | quote }}
WEBHOOK_BACKOFF_MAX_SECONDS: {{ $c.webhookBackoffMaxSeconds | toString | quote }}
WEBHOOK_RETRY_HOURS: {{ $c.webhookRetryHours | toString | quote }}
WEBHOOK_RETENTION_DAYS: {{ $c.webhookRetentionDays | toString | quote }}
WEBHOOK_DISABLE_AFTER_HOURS: {{ $c.webhookDisableAfterHours | toString | quote }}
SIGNUP_ENABLED: {{ $c.signupEnabled | toString | quote }}
SIGNUP_PER_HOUR: {{ $c.signupPerHour | int64 | toString | quote }}
LOGIN_MAX_FAILURES: {{ $c.loginMaxFailures | int64 | toString | quote }}
LOGIN_MAX_ADDRESS_FAILURES: {{ $c.loginMaxAddressFailures | int64 | toString | quote }}
LOGIN_FAILURE_WINDOW_SECONDS: {{ $c.loginFailureWindowSeconds | int64 | toString | quote }}
REFRESH_TOKEN_TTL_SECONDS: {{ $c.refreshTokenTtlSeconds | int64 | toString | quote }}
SESSION_MAX_SECONDS: {{ $c.sessionMaxSeconds | int64 | toString | quote }}
INVITATION_TTL_SECONDS: {{ $c.invitationTtlSeconds | int64 | toString | quote }}
PASSWORD_HASH_TIME_COST: {{ $c.passwordHashTimeCost | int64 | toString | quote }}
PASSWORD_HASH_MEMORY_KIB: {{ $c.passwordHashMemoryKib | int64 | toString | quote }}
PASSWORD_HASH_PARALLELISM: {{ $c.passwordHashParallelism | int64 | toString | quote }}
PASSWORD_HASH_CONCURRENCY: {{ $c.passwordHashConcurrency | int64 | toString | quote }}
CONSOLE_ENABLED: {{ $c.consoleEnabled | toString | quote }}
CONSOLE_SESSION_IDLE_SECONDS: {{ $c.consoleSessionIdleSeconds | int64 | toString | quote }}
CONSOLE_SESSION_MAX_SECONDS: {{ $c.consoleSessionMaxSeconds | int64 | toString | quote }}
CONSOLE_SECURE_COOKIES: {{ $c.consoleSecureCookies | toString | quote }}
BACKUP_STORE_URL: {{ .Values.backups.storeUrl | quote }}
BACKUP_SCHEDULE_INTERVAL_SECONDS: {{ .Values.backups.scheduleIntervalSeconds | toString | quote }}
{{- with .Values.backups.pgBinDir }}
PG_BIN_DIR: {{ . | quote }}
{{- end }}
S3_ENDPOINT_URL: {{ .Values.backups.s3.endpointUrl | quote }}
S3_REGION: {{ .Values.backups.s3.region | quote }}
{{- end }}

{{/* The hardened security context of every container. */}}
{{- define "tenantry.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext }}
{{- end }}

{{/* Pod-level settings shared by every workload. */}}
{{- define "tenantry.podSpecCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}
