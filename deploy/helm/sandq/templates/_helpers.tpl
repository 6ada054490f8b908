{{/* Names. */}}
{{- define "sandq.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sandq.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The labels every object carries. */}}
{{- define "sandq.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "sandq.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/*
The selector of one component's pods (api or worker): the component label
keeps the API's budget and Service off the workers and the reverse.
*/}}
{{- define "sandq.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sandq.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "sandq.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "sandq.credentialsSecret" -}}
{{- default (printf "%s-credentials" (include "sandq.fullname" .)) .Values.credentials.existingSecret -}}
{{- end -}}

{{- define "sandq.authConfigMap" -}}
{{- default (printf "%s-auth" (include "sandq.fullname" .)) .Values.auth.existingConfigMap -}}
{{- end -}}

{{- define "sandq.egressConfigMap" -}}
{{- default (printf "%s-egress" (include "sandq.fullname" .)) .Values.egress.existingConfigMap -}}
{{- end -}}

{{- define "sandq.webhookSecret" -}}
{{- default (printf "%s-webhook" (include "sandq.fullname" .)) .Values.webhook.existingSecret -}}
{{- end -}}

{{- define "sandq.webhookEnabled" -}}
{{- if or .Values.webhook.existingSecret .Values.webhook.config -}}true{{- end -}}
{{- end -}}

{{/*
sandq.mebibytes turns a size given as a whole number of Mi, Gi or Ti into
mebibytes, or fails naming the value. Only binary units are taken: "G" is
1000^3 bytes to Kubernetes but 1024^3 to sandq, so a pod's request and the
worker's budget written with it would disagree.
*/}}
{{- define "sandq.mebibytes" -}}
{{- $s := toString .value -}}
{{- if not (regexMatch "^[0-9]+(Mi|Gi|Ti)$" $s) -}}
{{- fail (printf "%s: %q is not a whole number of Mi, Gi or Ti (such as 12Gi): other units mean different sizes to Kubernetes and to sandq" .name $s) -}}
{{- end -}}
{{- $n := regexFind "^[0-9]+" $s | atoi -}}
{{- if hasSuffix "Ti" $s -}}{{ mul $n 1048576 }}{{- else if hasSuffix "Gi" $s -}}{{ mul $n 1024 }}{{- else -}}{{ $n }}{{- end -}}
{{- end -}}

{{/* A variable from the credentials Secret. */}}
{{- define "sandq.secretEnv" -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ include "sandq.credentialsSecret" .root }}
      key: {{ .key }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end -}}

{{/*
sandq.commonEnv is the environment the API server and the workers share:
where Redis and the store are, and the limits both apply.
*/}}
{{- define "sandq.commonEnv" -}}
{{- $v := .Values -}}
{{- $existing := $v.credentials.existingSecret -}}
- name: SANDQ_REDIS_URL
  value: {{ $v.redis.url | quote }}
{{- with $v.redis.username }}
- name: SANDQ_REDIS_USERNAME
  value: {{ . | quote }}
{{- end }}
{{- if or $existing $v.redis.password }}
{{ include "sandq.secretEnv" (dict "root" . "env" "SANDQ_REDIS_PASSWORD" "key" "redis-password" "optional" $existing) }}
{{- end }}
{{- with $v.redis.sentinelUsername }}
- name: SANDQ_REDIS_SENTINEL_USERNAME
  value: {{ . | quote }}
{{- end }}
{{- if or $existing $v.redis.sentinelPassword }}
{{ include "sandq.secretEnv" (dict "root" . "env" "SANDQ_REDIS_SENTINEL_PASSWORD" "key" "redis-sentinel-password" "optional" $existing) }}
{{- end }}
{{- if $v.redis.tls.existingSecret }}
- name: SANDQ_REDIS_CA_FILE
  value: /etc/sandq/redis-tls/ca.crt
{{- if $v.redis.tls.clientCertificate }}
- name: SANDQ_REDIS_CERT_FILE
  value: /etc/sandq/redis-tls/tls.crt
- name: SANDQ_REDIS_KEY_FILE
  value: /etc/sandq/redis-tls/tls.key
{{- end }}
{{- end }}
{{- if $v.redis.waitReplicas }}
- name: SANDQ_REDIS_WAIT_REPLICAS
  value: {{ $v.redis.waitReplicas | quote }}
{{- end }}
{{- with $v.redis.waitTimeout }}
- name: SANDQ_REDIS_WAIT_TIMEOUT
  value: {{ . | quote }}
{{- end }}
- name: SANDQ_S3_ENDPOINT
  value: {{ $v.s3.endpoint | quote }}
{{- with $v.s3.publicEndpoint }}
- name: SANDQ_S3_PUBLIC_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: SANDQ_S3_SECURE
  value: {{ $v.s3.secure | quote }}
- name: SANDQ_S3_BUCKET
  value: {{ $v.s3.bucket | quote }}
- name: SANDQ_S3_REGION
  value: {{ $v.s3.region | quote }}
- name: SANDQ_QUEUE
  value: {{ $v.queue | quote }}
- name: SANDQ_LOG_LEVEL
  value: {{ $v.logLevel | quote }}
- name: SANDQ_DEFAULT_TIMEOUT
  value: {{ $v.limits.defaultTimeout | quote }}
- name: SANDQ_MAX_TIMEOUT
  value: {{ $v.limits.maxTimeout | quote }}
- name: SANDQ_DEFAULT_MEMORY
  value: {{ $v.limits.defaultMemory | quote }}
- name: SANDQ_MAX_MEMORY
  value: {{ $v.limits.maxMemory | quote }}
- name: SANDQ_DEFAULT_DISK
  value: {{ $v.limits.defaultDisk | quote }}
- name: SANDQ_MAX_DISK
  value: {{ $v.limits.maxDisk | quote }}
- name: SANDQ_DEFAULT_CPUS
  value: {{ $v.limits.defaultCpus | quote }}
{{- with $v.limits.maxCpus }}
- name: SANDQ_MAX_CPUS
  value: {{ . | quote }}
{{- end }}
- name: SANDQ_MAX_RETRY
  value: {{ $v.limits.maxRetry | quote }}
- name: SANDQ_RESULT_RETENTION
  value: {{ $v.limits.resultRetention | quote }}
- name: SANDQ_LINK_EXPIRY
  value: {{ $v.limits.linkExpiry | quote }}
{{- end -}}

{{/* The Redis TLS volume and its mount, when a Secret is named. */}}
{{- define "sandq.redisTLSVolume" -}}
{{- if .Values.redis.tls.existingSecret -}}
- name: redis-tls
  secret:
    secretName: {{ .Values.redis.tls.existingSecret }}
    items:
      - key: ca.crt
        path: ca.crt
      {{- if .Values.redis.tls.clientCertificate }}
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
      {{- end }}
{{- end }}
{{- end -}}

{{- define "sandq.redisTLSMount" -}}
{{- if .Values.redis.tls.existingSecret -}}
- name: redis-tls
  mountPath: /etc/sandq/redis-tls
  readOnly: true
{{- end }}
{{- end -}}

{{/*
sandq.validate refuses values that would render a fleet that cannot start,
naming the value, before anything reaches a cluster.
*/}}
{{- define "sandq.validate" -}}
{{- $v := .Values -}}
{{- if not $v.redis.url -}}
{{- fail "redis.url is required: a redis://, rediss://, redis+sentinel:// or redis+cluster:// URL (docs/configuration.md: Redis connection)" -}}
{{- end -}}
{{- if not (regexMatch "^rediss?(\\+sentinel|\\+cluster)?://" $v.redis.url) -}}
{{- fail (printf "redis.url %q: the scheme must be redis, rediss, redis+sentinel, rediss+sentinel, redis+cluster or rediss+cluster" $v.redis.url) -}}
{{- end -}}
{{- if regexMatch "^[^/]*//[^/@]*:[^/@]*@" $v.redis.url -}}
{{- fail "redis.url carries a password: give it as redis.password (or key redis-password of credentials.existingSecret), which stays in a Secret" -}}
{{- end -}}
{{- if and $v.redis.waitReplicas (contains "+cluster://" $v.redis.url) -}}
{{- fail "redis.waitReplicas is not available with Redis Cluster: a job's keys live on several primaries" -}}
{{- end -}}
{{- if and $v.redis.tls.clientCertificate (not $v.redis.tls.existingSecret) -}}
{{- fail "redis.tls.clientCertificate needs redis.tls.existingSecret, the Secret holding ca.crt, tls.crt and tls.key" -}}
{{- end -}}
{{- if not $v.s3.endpoint -}}
{{- fail "s3.endpoint is required: the store's host:port, without a scheme" -}}
{{- end -}}
{{- if contains "://" $v.s3.endpoint -}}
{{- fail (printf "s3.endpoint %q: give host:port without a scheme; s3.secure chooses https" $v.s3.endpoint) -}}
{{- end -}}
{{- if not $v.credentials.existingSecret -}}
{{- if and $v.worker.enabled (not (and $v.s3.worker.accessKey $v.s3.worker.secretKey)) -}}
{{- fail "s3.worker.accessKey and s3.worker.secretKey are required (or credentials.existingSecret): the workers' own S3 user" -}}
{{- end -}}
{{- if and $v.api.enabled (not (and $v.s3.api.accessKey $v.s3.api.secretKey)) -}}
{{- fail "s3.api.accessKey and s3.api.secretKey are required (or credentials.existingSecret): the API server's own S3 user" -}}
{{- end -}}
{{- end -}}
{{- $default := include "sandq.mebibytes" (dict "name" "limits.defaultMemory" "value" $v.limits.defaultMemory) | atoi -}}
{{- $max := include "sandq.mebibytes" (dict "name" "limits.maxMemory" "value" $v.limits.maxMemory) | atoi -}}
{{- if gt $default $max -}}
{{- fail (printf "limits.defaultMemory %s is over limits.maxMemory %s" $v.limits.defaultMemory $v.limits.maxMemory) -}}
{{- end -}}
{{- if $v.worker.enabled -}}
{{- $budget := include "sandq.mebibytes" (dict "name" "worker.memoryBudget" "value" $v.worker.memoryBudget) | atoi -}}
{{- $_ := include "sandq.mebibytes" (dict "name" "worker.memoryOverhead" "value" $v.worker.memoryOverhead) -}}
{{- if gt $max $budget -}}
{{- fail (printf "limits.maxMemory %s is over worker.memoryBudget %s: a job asking for the maximum could never start (the worker refuses to)" $v.limits.maxMemory $v.worker.memoryBudget) -}}
{{- end -}}
{{- if not (and (regexMatch "^[0-9]+$" (toString $v.worker.shutdownGraceSeconds)) (gt (int $v.worker.shutdownGraceSeconds) 0)) -}}
{{- fail (printf "worker.shutdownGraceSeconds %v: a whole number of seconds above 0" $v.worker.shutdownGraceSeconds) -}}
{{- end -}}
{{- if not (and (regexMatch "^[0-9]+$" (toString $v.worker.terminationExtraSeconds)) (ge (int $v.worker.terminationExtraSeconds) 10)) -}}
{{- fail (printf "worker.terminationExtraSeconds %v: at least 10, the time a worker needs after its grace to kill the sandboxes left and hand their jobs back" $v.worker.terminationExtraSeconds) -}}
{{- end -}}
{{- end -}}
{{- if and $v.api.enabled $v.api.pdb.enabled (le (int $v.api.replicas) (int $v.api.pdb.minAvailable)) -}}
{{- fail (printf "api.pdb.minAvailable %v is not less than api.replicas %v: no node running an API pod could ever be drained" $v.api.pdb.minAvailable $v.api.replicas) -}}
{{- end -}}
{{- end -}}
