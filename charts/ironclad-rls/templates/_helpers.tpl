{{/* Names, labels and the checks that values.schema.json cannot express. */}}

{{- define "ironclad-rls.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ironclad-rls.fullname" -}}
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

{{- define "ironclad-rls.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "ironclad-rls.labels" -}}
helm.sh/chart: {{ include "ironclad-rls.chart" . }}
app.kubernetes.io/name: {{ include "ironclad-rls.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ironclad-rls
{{- end -}}

{{/* Selector of the RLS pods. */}}
{{- define "ironclad-rls.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ironclad-rls.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: rls
{{- end -}}

{{/* Selector of the demo Redis pod. */}}
{{- define "ironclad-rls.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ include "ironclad-rls.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: demo-redis
{{- end -}}

{{- define "ironclad-rls.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ironclad-rls.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag, or repository@digest when a digest is given. */}}
{{- define "ironclad-rls.imageRef" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .default .image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The port of a listen address: the text after the last colon ("0.0.0.0:8081", "[::]:8081"). */}}
{{- define "ironclad-rls.port" -}}
{{- splitList ":" . | last -}}
{{- end -}}

{{- define "ironclad-rls.limitsConfigMap" -}}
{{- default (printf "%s-limits" (include "ironclad-rls.fullname" .)) .Values.limits.existingConfigMap -}}
{{- end -}}

{{/* The Secret with the Redis password, and its key; empty when there is no password. */}}
{{- define "ironclad-rls.redisAuthSecret" -}}
{{- if .Values.redis.auth.existingSecret -}}
{{- .Values.redis.auth.existingSecret -}}
{{- else if or .Values.redis.auth.password .Values.demoRedis.enabled -}}
{{- printf "%s-redis-auth" (include "ironclad-rls.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "ironclad-rls.redisAuthKey" -}}
{{- if .Values.redis.auth.existingSecret -}}
{{- .Values.redis.auth.existingSecretKey -}}
{{- else -}}
password
{{- end -}}
{{- end -}}

{{- define "ironclad-rls.demoRedisName" -}}
{{- printf "%s-redis" (include "ironclad-rls.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The Redis URL the RLS uses: redis.url, or the demo Redis. */}}
{{- define "ironclad-rls.redisUrl" -}}
{{- if .Values.redis.url -}}
{{- .Values.redis.url -}}
{{- else if .Values.demoRedis.enabled -}}
{{- printf "redis://%s.%s.svc:6379" (include "ironclad-rls.demoRedisName" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* Whole seconds of a duration written like 5s, 1500ms, 2m or 1h (humantime's simple forms). */}}
{{- define "ironclad-rls.durationSeconds" -}}
{{- $d := toString . -}}
{{- $n := regexFind "^[0-9]+" $d | int -}}
{{- $unit := regexReplaceAll "^[0-9]+" $d "" -}}
{{- if eq $unit "ms" -}}{{ div (add $n 999) 1000 }}
{{- else if eq $unit "m" -}}{{ mul $n 60 }}
{{- else if eq $unit "h" -}}{{ mul $n 3600 }}
{{- else -}}{{ $n }}
{{- end -}}
{{- end -}}

{{/*
Checks across values that the schema cannot express; each fails the install with the reason.
*/}}
{{- define "ironclad-rls.validate" -}}
{{- $shared := or .Values.redis.url .Values.redis.clusterUrls .Values.redis.sentinel.master .Values.demoRedis.enabled -}}
{{- if and (not $shared) (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled) -}}
{{- fail "more than one replica needs shared counters: set redis.url, redis.clusterUrls, redis.sentinel or demoRedis.enabled (counters in memory are per pod, so N replicas would admit N times each limit)" -}}
{{- end -}}
{{- if and .Values.redis.url .Values.redis.clusterUrls -}}
{{- fail "redis.url and redis.clusterUrls exclude each other" -}}
{{- end -}}
{{- if and .Values.demoRedis.enabled (or .Values.redis.url .Values.redis.clusterUrls .Values.redis.sentinel.master) -}}
{{- fail "demoRedis.enabled brings its own Redis: leave redis.url, redis.clusterUrls and redis.sentinel empty" -}}
{{- end -}}
{{- if and .Values.redis.sentinel.master (or .Values.redis.url .Values.redis.clusterUrls) -}}
{{- fail "redis.sentinel excludes redis.url and redis.clusterUrls" -}}
{{- end -}}
{{- if and .Values.redis.sentinel.master (not .Values.redis.sentinel.addresses) -}}
{{- fail "redis.sentinel.master needs redis.sentinel.addresses (the sentinels, host:port)" -}}
{{- end -}}
{{- if and .Values.redis.auth.existingSecret .Values.redis.auth.password -}}
{{- fail "set redis.auth.existingSecret or redis.auth.password, not both" -}}
{{- end -}}
{{- if and (not .Values.limits.existingConfigMap) (not .Values.limits.files) -}}
{{- fail "no limits: set limits.files or limits.existingConfigMap" -}}
{{- end -}}
{{- $drain := include "ironclad-rls.durationSeconds" .Values.settings.drainTimeout | int -}}
{{- if le (int .Values.terminationGracePeriodSeconds) $drain -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed settings.drainTimeout (%s): the kubelet kills the pod at the end of the grace period" (int .Values.terminationGracePeriodSeconds) .Values.settings.drainTimeout) -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" -}}
{{- end -}}
{{- end -}}

{{/* The hardened container securityContext every container gets. */}}
{{- define "ironclad-rls.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .gid }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The hardened pod securityContext. */}}
{{- define "ironclad-rls.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .gid }}
fsGroup: {{ .gid }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}
