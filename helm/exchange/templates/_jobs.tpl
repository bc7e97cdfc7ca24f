{{/*
Scheduled jobs: CronJobs running a service binary's job subcommand (e.g.
`market-data retention`) from the service's own image, with its database settings
(exchange.databaseEnv, as its Deployments). Each job is a component of its own,
<service>-<job>: its own ServiceAccount (mesh identity), pod labels no Service or
policy of the service selects, and a NetworkPolicy and a Sidecar (_sidecar.tpl)
allowing exactly its calls.

In the mesh the job keeps its sidecar (mTLS to Postgres and upbit-sim under STRICT,
callers named by AuthorizationPolicy) as a Kubernetes native sidecar
(sidecar.istio.io/nativeSidecar): the kubelet stops it when the job's container
exits, so the Job completes. A classic sidecar would run forever and the Job would
never finish.

Values: jobDefaults, merged under services.<name>.jobs.<job>.
*/}}

{{/* Enabled jobs of enabled services, as a YAML list of {name: <service>-<job>, service, job}. Context: root. */}}
{{- define "exchange.jobs" -}}
{{- $root := . -}}
{{- $out := list -}}
{{- range $service, $_ := $root.Values.services -}}
{{- $ctx := dict "root" $root "name" $service -}}
{{- if include "exchange.enabled" $ctx -}}
{{- $svc := include "exchange.svc" $ctx | fromYaml -}}
{{- range $job, $own := ($svc.jobs | default dict) -}}
{{- $j := include "exchange.job" (dict "root" $root "service" $service "job" $job) | fromYaml -}}
{{- if $j.enabled -}}
{{- $out = append $out (dict "name" (printf "%s-%s" $service $job) "service" $service "job" $job) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* One job's values: jobDefaults deep-merged with services.<service>.jobs.<job>, as YAML. Context: {root, service, job}. */}}
{{- define "exchange.job" -}}
{{- $svc := include "exchange.svc" (dict "root" .root "name" .service) | fromYaml -}}
{{- $j := deepCopy .root.Values.jobDefaults -}}
{{- include "exchange.deepMerge" (dict "dst" $j "src" (index $svc.jobs .job | default dict)) -}}
{{- toYaml $j -}}
{{- end -}}

{{/* The Upbit REST API the ingestor reads (upbit-sim, or api.upbit.com when live), as YAML {url, live}. Context: root. */}}
{{- define "exchange.upbitRest" -}}
{{- $ing := include "exchange.svc" (dict "root" . "name" "ingestor") | fromYaml -}}
{{- if and $ing.upbit (eq (toString $ing.upbit.source) "live") -}}
url: {{ $ing.upbit.restUrl | quote }}
live: true
{{- else -}}
{{- if not (include "exchange.enabled" (dict "root" . "name" "upbit-sim")) -}}
{{- fail "a job reads the Upbit REST API (upbitRest), the ingestor's feed is the simulator (services.ingestor.upbit.source: sim), but services.upbit-sim is not enabled" -}}
{{- end -}}
{{- $sim := include "exchange.svc" (dict "root" . "name" "upbit-sim") | fromYaml -}}
url: {{ printf "http://%s:%v" (include "exchange.host" (dict "root" . "name" "upbit-sim")) $sim.ports.http | quote }}
live: false
{{- end -}}
{{- end -}}

{{/* Jobs (component names) that call service .name: the Upbit readers call upbit-sim. Context: {root, name}. */}}
{{- define "exchange.jobCallers" -}}
{{- $root := .root -}}
{{- $out := list -}}
{{- if eq .name "upbit-sim" -}}
{{- range $j := include "exchange.jobs" $root | fromYamlArray -}}
{{- $job := include "exchange.job" (dict "root" $root "service" $j.service "job" $j.job) | fromYaml -}}
{{- if and $job.upbitRest (not (include "exchange.upbitRest" $root | fromYaml).live) -}}
{{- $out = append $out $j.name -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* Jobs (component names) that use a store: flag "database" or "redis". Context: {root, flag}. */}}
{{- define "exchange.jobClients" -}}
{{- $root := .root -}}
{{- $flag := .flag -}}
{{- $out := list -}}
{{- range $j := include "exchange.jobs" $root | fromYamlArray -}}
{{- $svc := include "exchange.svc" (dict "root" $root "name" $j.service) | fromYaml -}}
{{- $job := include "exchange.job" (dict "root" $root "service" $j.service "job" $j.job) | fromYaml -}}
{{- if and (eq $flag "database") $svc.database.role $job.database -}}
{{- $out = append $out $j.name -}}
{{- else if and (eq $flag "redis") $svc.redis.enabled $job.redis -}}
{{- $out = append $out $j.name -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/*
Every object of one job: ServiceAccount, CronJob, NetworkPolicy, Sidecar.
Context: {root, name (<service>-<job>), service, job}.
*/}}
{{- define "exchange.cronJob" -}}
{{- $root := .root -}}
{{- $sctx := dict "root" $root "name" .service -}}
{{- $svc := include "exchange.svc" $sctx | fromYaml -}}
{{- $_ := set $sctx "svc" $svc -}}
{{- $job := include "exchange.job" (dict "root" $root "service" .service "job" .job) | fromYaml -}}
{{- $ctx := dict "root" $root "name" .name -}}
{{- /* The image and version that serve: the rolling track, the canary's stable track or the live color. */ -}}
{{- $serving := dict -}}
{{- range $t := (include "exchange.tracks" $sctx | fromYaml).tracks -}}
{{- if has $t.role (list "" "stable" "live") -}}{{- $serving = $t -}}{{- end -}}
{{- end -}}
{{- if not $job.schedule -}}
{{- fail (printf "services.%s.jobs.%s.schedule is required (a cron expression)" .service .job) -}}
{{- end -}}
{{- $usesDb := and $svc.database.role $job.database -}}
{{- $usesRedis := and $svc.redis.enabled $job.redis -}}
{{- $upbit := include "exchange.upbitRest" $root | fromYaml -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "exchange.componentName" $ctx }}
  labels:
    {{- include "exchange.labels" $ctx | nindent 4 }}
    app.kubernetes.io/component: job
# The job never calls the Kubernetes API.
automountServiceAccountToken: false
---
apiVersion: batch/v1
kind: CronJob
metadata:
  {{- /* A CronJob's name leaves 11 characters for its Jobs' suffix. */}}
  name: {{ include "exchange.componentName" $ctx | trunc 52 | trimSuffix "-" }}
  labels:
    {{- include "exchange.labels" $ctx | nindent 4 }}
    app.kubernetes.io/component: job
    exchange.dev/job-of: {{ .service }}
spec:
  schedule: {{ $job.schedule | quote }}
  {{- with $job.timeZone }}
  timeZone: {{ . | quote }}
  {{- end }}
  suspend: {{ $job.suspend }}
  concurrencyPolicy: {{ $job.concurrencyPolicy }}
  startingDeadlineSeconds: {{ $job.startingDeadlineSeconds }}
  successfulJobsHistoryLimit: {{ $job.successfulJobsHistoryLimit }}
  failedJobsHistoryLimit: {{ $job.failedJobsHistoryLimit }}
  jobTemplate:
    metadata:
      labels:
        {{- include "exchange.labels" $ctx | nindent 8 }}
        app.kubernetes.io/component: job
    spec:
      activeDeadlineSeconds: {{ $job.activeDeadlineSeconds }}
      backoffLimit: {{ $job.backoffLimit }}
      {{- with $job.ttlSecondsAfterFinished }}
      ttlSecondsAfterFinished: {{ . }}
      {{- end }}
      template:
        metadata:
          labels:
            {{- include "exchange.selectorLabels" $ctx | nindent 12 }}
            app.kubernetes.io/part-of: {{ include "exchange.name" $root }}
            app.kubernetes.io/component: job
            app.kubernetes.io/version: {{ $serving.version | quote }}
            app: {{ .name }}
            version: {{ $serving.version | quote }}
            exchange.dev/job-of: {{ .service }}
          annotations:
            kubectl.kubernetes.io/default-container: {{ .service }}
            {{- if $root.Values.istio.enabled }}
            # The sidecar as a native sidecar: stopped when the job's container exits,
            # so the Job completes (a classic sidecar would keep the pod running).
            sidecar.istio.io/nativeSidecar: "true"
            {{- end }}
        spec:
          serviceAccountName: {{ include "exchange.componentName" $ctx }}
          automountServiceAccountToken: false
          restartPolicy: Never
          {{- with $root.Values.global.imagePullSecrets }}
          imagePullSecrets:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          securityContext:
            {{- toYaml $svc.podSecurityContext | nindent 12 }}
          containers:
            - name: {{ .service }}
              image: {{ printf "%s/%s:%s" $root.Values.global.image.registry .service ($serving.tag | toString) | quote }}
              imagePullPolicy: {{ $root.Values.global.image.pullPolicy }}
              args:
                {{- toYaml $job.args | nindent 16 }}
              securityContext:
                {{- toYaml $svc.containerSecurityContext | nindent 16 }}
              env:
                - name: SERVICE_VERSION
                  value: {{ $serving.version | quote }}
                - name: RUST_LOG
                  value: {{ $root.Values.telemetry.logLevel | quote }}
                - name: LOG_FORMAT
                  value: {{ $root.Values.telemetry.logFormat | quote }}
                - name: OTEL_SERVICE_NAME
                  value: {{ .name | quote }}
                {{- with $root.Values.telemetry.otlpEndpoint }}
                - name: OTEL_EXPORTER_OTLP_ENDPOINT
                  value: {{ . | quote }}
                - name: OTEL_TRACES_SAMPLER
                  value: {{ $root.Values.telemetry.sampler | quote }}
                - name: OTEL_TRACES_SAMPLER_ARG
                  value: {{ $root.Values.telemetry.samplerArg | quote }}
                {{- end }}
                {{- /* The service's plain settings (e.g. user's ACCESS_TOKEN_TTL), then the job's own. */}}
                {{- range $k, $v := merge (deepCopy ($job.env | default dict)) ($svc.config | default dict) }}
                - name: {{ $k }}
                  value: {{ $v | toString | quote }}
                {{- end }}
                {{- if $job.upbitRest }}
                # The Upbit REST API the ingestor reads.
                - name: UPBIT_REST_URL
                  value: {{ $upbit.url | quote }}
                {{- end }}
                {{- if $usesDb }}
                - name: DATABASE_MAX_CONNECTIONS
                  value: {{ $job.databaseMaxConnections | quote }}
                {{- include "exchange.databaseEnv" $sctx | nindent 16 }}
                {{- end }}
                {{- if $usesRedis }}
                {{- $r := include "exchange.redis" $root | fromYaml }}
                {{- if not $r.secret }}
                - name: REDIS_URL
                  value: {{ printf "%s://%s:%v%s" $r.scheme $r.host $r.port $r.query | quote }}
                {{- end }}
                - name: REDIS_PREFIX
                  value: {{ $svc.redis.prefix | quote }}
                {{- include "exchange.redisEnv" $sctx | nindent 16 }}
                {{- end }}
              resources:
                {{- toYaml $job.resources | nindent 16 }}
              volumeMounts:
                - name: tmp
                  mountPath: /tmp
          volumes:
            - name: tmp
              emptyDir:
                sizeLimit: 64Mi
          {{- with $svc.nodeSelector }}
          nodeSelector:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- with $svc.tolerations }}
          tolerations:
            {{- toYaml . | nindent 12 }}
          {{- end }}
{{- if $root.Values.networkPolicy.enabled }}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "exchange.componentName" $ctx }}
  labels:
    {{- include "exchange.labels" $ctx | nindent 4 }}
    app.kubernetes.io/component: job
spec:
  podSelector:
    matchLabels:
      {{- include "exchange.selectorLabels" $ctx | nindent 6 }}
  policyTypes: [Ingress, Egress]
  {{- $kubelet := include "exchange.netpol.kubeletRule" $root }}
  # Nothing calls a job{{ if $kubelet }}: only the kubelet probes its sidecar{{ end }}.
  ingress: {{- if $kubelet }}{{ $kubelet | nindent 4 }}{{ else }} []{{ end }}
  egress:
    {{- if $usesDb }}
    {{- include "exchange.netpol.storeEgress" (dict "root" $root "name" "postgresql" "port" (include "exchange.database" $root | fromYaml).port "external" (not $root.Values.postgresql.enabled)) | nindent 4 }}
    {{- end }}
    {{- if $usesRedis }}
    {{- include "exchange.netpol.storeEgress" (dict "root" $root "name" "redis" "ports" (include "exchange.redis" $root | fromYaml).ports "external" (not $root.Values.redis.enabled)) | nindent 4 }}
    {{- end }}
    {{- if and $job.upbitRest $upbit.live }}
    # the live Upbit REST API (HTTPS), as the ingestor reaches it
    - to:
        - ipBlock:
            cidr: 0.0.0.0/0
            except: [10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16]
      ports:
        - {protocol: TCP, port: 443}
    {{- else if $job.upbitRest }}
    {{- $sim := include "exchange.svc" (dict "root" $root "name" "upbit-sim") | fromYaml }}
    # {{ .name }} -> upbit-sim (its REST API)
    - to:
        - podSelector:
            matchLabels:
              {{- include "exchange.selectorLabels" (dict "root" $root "name" "upbit-sim") | nindent 14 }}
      ports:
        - {protocol: TCP, port: {{ $sim.ports.http }}}
    {{- end }}
    {{- include "exchange.netpol.baseEgress" $root | nindent 4 }}
{{- end }}
{{- if include "exchange.egress.on" $root }}
---
{{ include "exchange.sidecar" (dict "root" $root "name" .name "calls" (include "exchange.egress.jobCalls" (dict "root" $root "service" .service "job" .job) | fromYamlArray)) }}
{{- end }}
{{- end -}}
