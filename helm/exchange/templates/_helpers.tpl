{{/*
Names, labels and small shared helpers.

Most helpers take a context dict:
  root  the chart's top-level context ($)
  name  the service name as in .Values.services (e.g. "market-data")
  svc   that service's values merged over serviceDefaults (exchange.svc)
*/}}

{{/* Chart name (nameOverride wins). */}}
{{- define "exchange.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-wide name prefix: the release name, or <release>-<chart> when it does not contain the chart name. */}}
{{- define "exchange.fullname" -}}
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

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "exchange.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Object name of one component: <fullname>-<name>. Context: {root, name}. */}}
{{- define "exchange.componentName" -}}
{{- printf "%s-%s" (include "exchange.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* In-cluster DNS name of a component's Service. Context: {root, name}. */}}
{{- define "exchange.host" -}}
{{- printf "%s.%s.svc.%s" (include "exchange.componentName" .) .root.Release.Namespace .root.Values.clusterDomain -}}
{{- end -}}

{{/* Selector labels of a component (every track of it). Context: {root, name}. */}}
{{- define "exchange.selectorLabels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{/* Labels of every object of a component. Context: {root, name}. */}}
{{- define "exchange.labels" -}}
{{ include "exchange.selectorLabels" . }}
app.kubernetes.io/part-of: {{ include "exchange.name" .root }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ include "exchange.chart" .root }}
{{- with .root.Values.global.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Deep merge: copies .src into .dst (a dict, mutated). Maps merge recursively;
everything else (lists, scalars, false, 0, null) replaces. Renders nothing.
*/}}
{{- define "exchange.deepMerge" -}}
{{- $dst := .dst -}}
{{- range $k, $v := .src -}}
{{- if and (kindIs "map" $v) (kindIs "map" (get $dst $k)) -}}
{{- include "exchange.deepMerge" (dict "dst" (get $dst $k) "src" $v) -}}
{{- else if kindIs "invalid" $v -}}
{{- $_ := set $dst $k $v -}}
{{- else -}}
{{- $_ := set $dst $k (deepCopy $v) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A service's values merged over serviceDefaults, as YAML. Context: {root, name}. */}}
{{- define "exchange.svc" -}}
{{- $own := index .root.Values.services .name | default dict -}}
{{- $svc := deepCopy .root.Values.serviceDefaults -}}
{{- include "exchange.deepMerge" (dict "dst" $svc "src" $own) -}}
{{- toYaml $svc -}}
{{- end -}}

{{/* "true" when service .name exists and is enabled. Context: {root, name}. */}}
{{- define "exchange.enabled" -}}
{{- $own := index .root.Values.services .name -}}
{{- if $own -}}
{{- if hasKey $own "enabled" -}}
{{- if $own.enabled }}true{{ end -}}
{{- else if .root.Values.serviceDefaults.enabled -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The upstreams a service really calls: its `upstreams` list, without upbit-sim
when the ingestor reads the live Upbit. Fails on a disabled or unknown upstream.
Renders a YAML list. Context: {root, name}.
*/}}
{{- define "exchange.upstreams" -}}
{{- $root := .root -}}
{{- $svc := include "exchange.svc" . | fromYaml -}}
{{- $out := list -}}
{{- range $svc.upstreams -}}
{{- if and (eq . "upbit-sim") $svc.upbit (eq (toString $svc.upbit.source) "live") -}}
{{- else -}}
{{- if not (include "exchange.enabled" (dict "root" $root "name" .)) -}}
{{- fail (printf "services.%s calls %s, which is not enabled (services.%s.enabled)" $.name . .) -}}
{{- end -}}
{{- $out = append $out . -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* Names of enabled services that call .name, as a YAML list. Context: {root, name}. */}}
{{- define "exchange.callers" -}}
{{- $root := .root -}}
{{- $target := .name -}}
{{- $out := list -}}
{{- range $caller, $_ := $root.Values.services -}}
{{- if include "exchange.enabled" (dict "root" $root "name" $caller) -}}
{{- if has $target (include "exchange.upstreams" (dict "root" $root "name" $caller) | fromYamlArray) -}}
{{- $out = append $out $caller -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* Enabled services whose values satisfy a flag: "database" or "redis". Context: {root, flag}. */}}
{{- define "exchange.usersOf" -}}
{{- $root := .root -}}
{{- $flag := .flag -}}
{{- $out := list -}}
{{- range $name, $_ := $root.Values.services -}}
{{- $ctx := dict "root" $root "name" $name -}}
{{- if include "exchange.enabled" $ctx -}}
{{- $svc := include "exchange.svc" $ctx | fromYaml -}}
{{- if and (eq $flag "database") $svc.database.role -}}
{{- $out = append $out $name -}}
{{- else if and (eq $flag "redis") $svc.redis.enabled -}}
{{- $out = append $out $name -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/*
The Deployments (tracks) of a service under its strategy, as YAML {tracks: [...]}.
Each track: suffix (Deployment name suffix), track (the exchange.dev/track label,
which is the Deployment's selector and the DestinationRule subset's labels),
version, tag, replicas, color (blue/green only), subset (the subset name, empty
for rolling), role, extraEnv (the candidate's and each color's own, e.g. a
candidate told to fail for the release gate's rollback demo). A candidate's
replicas may be 0: scaled down after a failed analysis (scripts/canary records it),
it keeps its Deployment and subset but gets no route, HPA or PDB.

The primary track keeps one name, one selector and one subset label across every
strategy (as Flagger's primary does): <component>, exchange.dev/track=primary. It is
the rolling Deployment, the canary's stable track and the blue color, so switching
strategy never deletes the Deployment that serves: the candidate (<component>-canary)
and green (<component>-green) are the only Deployments that come and go.
Context: {root, name, svc}.
*/}}
{{- define "exchange.tracks" -}}
{{- $svc := .svc -}}
{{- $root := .root -}}
{{- $tracks := list -}}
{{- $need := printf "global.image.tag is required: the immutable image tag to deploy (the git commit scripts/build-images pushes; scripts/deploy sets it), or a tag per track" -}}
{{- if eq $svc.strategy "rolling" -}}
{{- $tracks = append $tracks (dict "suffix" "" "track" "primary" "version" $svc.rolling.version "tag" ($svc.rolling.tag | default $root.Values.global.image.tag | required $need) "replicas" $svc.replicas "subset" "" "role" "") -}}
{{- else if eq $svc.strategy "canary" -}}
{{- $c := $svc.canary -}}
{{- $tracks = append $tracks (dict "suffix" "" "track" "primary" "version" $c.stable.version "tag" ($c.stable.tag | default $root.Values.global.image.tag | required $need) "replicas" (default $svc.replicas $c.stable.replicas) "subset" "stable" "role" "stable") -}}
{{- if $c.candidate.enabled -}}
{{- /* 0 is a count here, not "unset": a candidate scaled down after a failed analysis. */ -}}
{{- $replicas := ternary $svc.replicas $c.candidate.replicas (kindIs "invalid" $c.candidate.replicas) -}}
{{- $tracks = append $tracks (dict "suffix" "canary" "track" "canary" "version" $c.candidate.version "tag" ($c.candidate.tag | default $root.Values.global.image.tag | required $need) "replicas" (int $replicas) "subset" "canary" "role" "candidate" "extraEnv" $c.candidate.extraEnv) -}}
{{- end -}}
{{- else if eq $svc.strategy "bluegreen" -}}
{{- $b := $svc.bluegreen -}}
{{- if not (has $b.live (list "blue" "green")) -}}
{{- fail (printf "services.%s.bluegreen.live must be blue or green, not %v" .name $b.live) -}}
{{- end -}}
{{- range $color := list "blue" "green" -}}
{{- $c := index $b.colors $color -}}
{{- $primary := eq $color "blue" -}}
{{- $tracks = append $tracks (dict "suffix" (ternary "" $color $primary) "track" (ternary "primary" $color $primary) "color" $color "version" $c.version "tag" ($c.tag | default $root.Values.global.image.tag | required $need) "replicas" (default $svc.replicas $c.replicas) "subset" $color "role" (ternary "live" "idle" (eq $color $b.live)) "extraEnv" $c.extraEnv) -}}
{{- end -}}
{{- else -}}
{{- fail (printf "services.%s.strategy must be rolling, canary or bluegreen, not %v" .name $svc.strategy) -}}
{{- end -}}
{{- toYaml (dict "tracks" $tracks) -}}
{{- end -}}

{{/* The selector labels of one track (on top of exchange.selectorLabels). Context: a track. */}}
{{- define "exchange.trackSelector" -}}
exchange.dev/track: {{ .track }}
{{- end -}}

{{/* Port name for a port role: grpc, http, metrics -> http-metrics. */}}
{{- define "exchange.portName" -}}
{{- if eq . "metrics" -}}http-metrics{{- else -}}{{ . }}{{- end -}}
{{- end -}}

{{/* appProtocol for a port role. */}}
{{- define "exchange.appProtocol" -}}
{{- if eq . "grpc" -}}grpc{{- else -}}http{{- end -}}
{{- end -}}

{{/* The main (routed) port role of a service: grpc or http. Context: svc. */}}
{{- define "exchange.mainPort" -}}
{{- if hasKey .ports "grpc" -}}grpc{{- else -}}http{{- end -}}
{{- end -}}

{{/*
Postgres host, port, database and password Secret (bundled, CloudNativePG or
external), as YAML. roleSecrets: each service's password is in a Secret of its own,
<secret>-<service>, key `password` (CloudNativePG sets the role's password from it);
otherwise in `secret`, key <service>-password.
*/}}
{{- define "exchange.database" -}}
{{- if and .Values.postgresql.enabled (eq (include "exchange.postgresql.mode" .) "cloudnative-pg") -}}
host: {{ include "exchange.host" (dict "root" . "name" "postgresql-rw") }}
port: 5432
database: {{ .Values.postgresql.database }}
secret: {{ .Values.postgresql.auth.existingSecret | default (include "exchange.componentName" (dict "root" . "name" "postgresql")) }}
params: ""
roleSecrets: true
{{- else if .Values.postgresql.enabled -}}
host: {{ include "exchange.host" (dict "root" . "name" "postgresql") }}
port: {{ .Values.postgresql.port }}
database: {{ .Values.postgresql.database }}
secret: {{ .Values.postgresql.auth.existingSecret | default (include "exchange.componentName" (dict "root" . "name" "postgresql")) }}
params: ""
{{- else -}}
host: {{ required "externalDatabase.host is required when postgresql.enabled is false" .Values.externalDatabase.host }}
port: {{ .Values.externalDatabase.port }}
database: {{ .Values.externalDatabase.database }}
secret: {{ required "externalDatabase.existingSecret is required when postgresql.enabled is false" .Values.externalDatabase.existingSecret }}
params: {{ .Values.externalDatabase.params | quote }}
{{- end -}}
{{- end -}}

{{/*
Redis host, port and password Secret (bundled or external), as YAML. acl: true for
the bundled Redis, where each service logs in as its own ACL user (named after the
service, password key <service>-password); an external Redis takes one password
(key redis-password) for the default user, or none.
*/}}
{{- define "exchange.redis" -}}
{{- if .Values.redis.enabled -}}
host: {{ include "exchange.host" (dict "root" . "name" "redis") }}
port: {{ .Values.redis.port }}
secret: {{ .Values.redis.auth.existingSecret | default (include "exchange.componentName" (dict "root" . "name" "redis")) | quote }}
acl: true
scheme: redis
query: ""
ports: [{{ .Values.redis.port }}]
{{- else -}}
{{- $x := .Values.externalRedis -}}
host: {{ required "externalRedis.host is required when redis.enabled is false" $x.host }}
secret: {{ $x.existingSecret | quote }}
acl: false
{{- if ($x.sentinel).enabled }}
{{- /* fred's URL form: the client asks the Sentinels at host:port for the primary of masterSet, and again after a failover. */}}
port: {{ $x.sentinel.port }}
scheme: redis-sentinel
query: {{ printf "?sentinelServiceName=%s" (required "externalRedis.sentinel.masterSet is required with externalRedis.sentinel.enabled" $x.sentinel.masterSet) | quote }}
ports: [{{ $x.sentinel.port }}, {{ $x.port }}]
{{- else }}
port: {{ $x.port }}
scheme: redis
query: ""
ports: [{{ $x.port }}]
{{- end }}
{{- end -}}
{{- end -}}

{{/* The labels that select the bundled Postgres' pods: the StatefulSet's, or the CloudNativePG Cluster's instances. Context: root. */}}
{{- define "exchange.postgresql.podLabels" -}}
{{- if eq (include "exchange.postgresql.mode" .) "cloudnative-pg" -}}
cnpg.io/cluster: {{ include "exchange.componentName" (dict "root" . "name" "postgresql") }}
{{- else -}}
{{ include "exchange.selectorLabels" (dict "root" . "name" "postgresql") }}
{{- end -}}
{{- end -}}

{{/* How the bundled Postgres runs: statefulset (one pod) or cloudnative-pg (a CloudNativePG Cluster). Context: root. */}}
{{- define "exchange.postgresql.mode" -}}
{{- $m := .Values.postgresql.mode | default "statefulset" -}}
{{- if not (has $m (list "statefulset" "cloudnative-pg")) -}}
{{- fail (printf "postgresql.mode must be statefulset or cloudnative-pg, not %v" $m) -}}
{{- end -}}
{{- $m -}}
{{- end -}}

{{/* The bundled Redis container's env var holding a service's ACL password. Context: the service name. */}}
{{- define "exchange.redis.passwordEnv" -}}
{{- printf "REDIS_PASSWORD_%s" (. | upper | replace "-" "_") -}}
{{- end -}}

{{/*
The checksum/secrets annotation of a pod template: a SHA-256 over the values of the
Secret keys its containers read (.refs: "secret/key" strings), so that a change of
one of them rolls exactly the pods that read it, and an unchanged Secret changes
nothing. Each Secret comes from the cluster (exchange.lookupSecret) and its uid salts
the hash: the annotation, readable by whoever may read Deployments, is then no test
for guessing a weak password. Renders the whole annotation line, or nothing when
lookup finds none of the Secrets (helm template, Argo CD: no cluster), so such
renders are stable; nothing either with global.rollOnSecretChange off.
Context: {root, refs}.
*/}}
{{- define "exchange.secretsChecksum" -}}
{{- $root := .root -}}
{{- if and $root.Values.global.rollOnSecretChange .refs -}}
{{- $found := false -}}
{{- $lines := list -}}
{{- range $ref := .refs | uniq | sortAlpha -}}
{{- $name := index (splitList "/" $ref) 0 -}}
{{- $key := index (splitList "/" $ref) 1 -}}
{{- $s := include "exchange.lookupSecret" (dict "root" $root "name" $name) | fromYaml -}}
{{- if $s -}}
{{- $found = true -}}
{{- $lines = append $lines (printf "%s %s %s" $ref $s.uid (get ($s.data | default dict) $key)) -}}
{{- else -}}
{{- $lines = append $lines (printf "%s absent" $ref) -}}
{{- end -}}
{{- end -}}
{{- if $found -}}
checksum/secrets: {{ join "\n" $lines | sha256sum }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The Secret keys an env list reads (valueFrom.secretKeyRef), as a YAML list of "secret/key". Context: the env list. */}}
{{- define "exchange.envSecretRefs" -}}
{{- $out := list -}}
{{- range . -}}
{{- with (.valueFrom).secretKeyRef -}}
{{- $out = append $out (printf "%s/%s" .name .key) -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* "true" when a monitoring.* toggle (true|false|auto) is on; auto = the Prometheus operator API exists. */}}
{{- define "exchange.monitoringOn" -}}
{{- $v := toString .value -}}
{{- if or (eq $v "true") (and (eq $v "auto") (.root.Capabilities.APIVersions.Has "monitoring.coreos.com/v1")) -}}true{{- end -}}
{{- end -}}
