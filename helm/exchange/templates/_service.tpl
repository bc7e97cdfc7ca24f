{{/*
Every Kubernetes object of one application service. templates/<service>.yaml calls
  {{ include "exchange.service" (dict "root" $ "name" "<service>") }}
*/}}
{{- define "exchange.service" -}}
{{- if include "exchange.enabled" . -}}
{{- $ctx := dict "root" .root "name" .name -}}
{{- $_ := set $ctx "svc" (include "exchange.svc" $ctx | fromYaml) -}}
{{- $tracks := (include "exchange.tracks" $ctx | fromYaml).tracks -}}
{{- $_ := set $ctx "tracks" $tracks -}}
{{ include "exchange.serviceAccount" $ctx }}
---
{{ include "exchange.configMap" $ctx }}
---
{{ include "exchange.k8sService" $ctx }}
{{- range $track := $tracks }}
---
{{ include "exchange.deployment" (merge (dict "track" $track) $ctx) }}
{{- /* A track scaled to zero (a candidate after a failed analysis): an HPA would
disagree with its count and a PDB would guard no pod. */}}
{{- if and $ctx.svc.autoscaling.enabled (gt (int $track.replicas) 0) }}
---
{{ include "exchange.hpa" (merge (dict "track" $track) $ctx) }}
{{- end }}
{{- if and $ctx.svc.pdb.enabled (gt (int $track.replicas) 0) }}
---
{{ include "exchange.pdb" (merge (dict "track" $track) $ctx) }}
{{- end }}
{{- end }}
{{- if .root.Values.networkPolicy.enabled }}
---
{{ include "exchange.networkPolicy" $ctx }}
{{- end }}
{{- if .root.Values.istio.enabled }}
---
{{ include "exchange.authorizationPolicy" $ctx }}
{{- end }}
{{- if include "exchange.egress.on" .root }}
---
{{ include "exchange.sidecar" (merge (dict "calls" (include "exchange.egress.serviceCalls" $ctx | fromYamlArray) "hosts" $ctx.svc.istio.egressHosts) $ctx) }}
{{- end }}
{{- /* Routing only for services whose main port is published (not the health-only ingestor). */ -}}
{{- if and .root.Values.istio.enabled (has (include "exchange.mainPort" $ctx.svc) $ctx.svc.servicePorts) }}
---
{{ include "exchange.destinationRule" $ctx }}
---
{{ include "exchange.virtualService" $ctx }}
{{- if $ctx.svc.ingress }}
---
{{ include "exchange.ingressVirtualService" $ctx }}
{{- end }}
{{- end }}
{{- if and (hasKey $ctx.svc.ports "metrics") (include "exchange.monitoringOn" (dict "root" .root "value" .root.Values.monitoring.podMonitor.enabled)) }}
---
{{ include "exchange.podMonitor" $ctx }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* Name of a track's Deployment: <component>[-<suffix>]. Context: {root, name, track}. */}}
{{- define "exchange.workloadName" -}}
{{- $base := include "exchange.componentName" . -}}
{{- if .track.suffix -}}
{{- printf "%s-%s" $base .track.suffix | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $base -}}
{{- end -}}
{{- end -}}

{{- define "exchange.serviceAccount" -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "exchange.componentName" . }}
  labels:
    {{- include "exchange.labels" . | nindent 4 }}
  {{- with .svc.serviceAccount.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
# The services never call the Kubernetes API.
automountServiceAccountToken: false
{{- end -}}

{{/* Plain configuration as environment variables. Context: {root, name, svc}. */}}
{{- define "exchange.configMap" -}}
{{- $root := .root -}}
{{- $svc := .svc -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "exchange.componentName" . }}
  labels:
    {{- include "exchange.labels" . | nindent 4 }}
data:
  {{- with $svc.ports.grpc }}
  GRPC_ADDR: {{ printf "0.0.0.0:%v" . | quote }}
  GRPC_REFLECTION: {{ $svc.grpcReflection | toString | quote }}
  {{- end }}
  {{- with $svc.ports.http }}
  HTTP_ADDR: {{ printf "0.0.0.0:%v" . | quote }}
  {{- end }}
  {{- with $svc.ports.metrics }}
  METRICS_ADDR: {{ printf "0.0.0.0:%v" . | quote }}
  {{- end }}
  RUST_LOG: {{ $root.Values.telemetry.logLevel | quote }}
  LOG_FORMAT: {{ $root.Values.telemetry.logFormat | quote }}
  OTEL_SERVICE_NAME: {{ .name | quote }}
  {{- with $root.Values.telemetry.otlpEndpoint }}
  OTEL_EXPORTER_OTLP_ENDPOINT: {{ . | quote }}
  OTEL_TRACES_SAMPLER: {{ $root.Values.telemetry.sampler | quote }}
  OTEL_TRACES_SAMPLER_ARG: {{ $root.Values.telemetry.samplerArg | quote }}
  {{- end }}
  {{- range $up := include "exchange.upstreams" . | fromYamlArray }}
  {{- $upSvc := include "exchange.svc" (dict "root" $root "name" $up) | fromYaml }}
  {{- $host := include "exchange.host" (dict "root" $root "name" $up) }}
  {{- if eq $up "upbit-sim" }}
  UPBIT_WS_URL: {{ printf "ws://%s:%v/websocket/v1" $host $upSvc.ports.http | quote }}
  UPBIT_REST_URL: {{ printf "http://%s:%v" $host $upSvc.ports.http | quote }}
  {{- else }}
  {{ printf "%s_URL" ($up | upper | replace "-" "_") }}: {{ printf "http://%s:%v" $host (index $upSvc.ports (include "exchange.mainPort" $upSvc)) | quote }}
  {{- end }}
  {{- end }}
  {{- if and $svc.upbit (eq (toString $svc.upbit.source) "live") }}
  UPBIT_WS_URL: {{ $svc.upbit.wsUrl | quote }}
  UPBIT_REST_URL: {{ $svc.upbit.restUrl | quote }}
  {{- end }}
  {{- if $svc.database.role }}
  DATABASE_MAX_CONNECTIONS: {{ $svc.database.maxConnections | quote }}
  {{- end }}
  {{- if $svc.redis.enabled }}
  {{- $r := include "exchange.redis" $root | fromYaml }}
  {{- if not $r.secret }}
  REDIS_URL: {{ printf "%s://%s:%v%s" $r.scheme $r.host $r.port $r.query | quote }}
  {{- end }}
  REDIS_PREFIX: {{ $svc.redis.prefix | quote }}
  {{- end }}
  {{- range $k, $v := $svc.config }}
  {{ $k }}: {{ $v | toString | quote }}
  {{- end }}
{{- end -}}

{{/* The Service: every track behind one name (blue/green without Istio: the live color only). */}}
{{- define "exchange.k8sService" -}}
{{- $svc := .svc -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "exchange.componentName" . }}
  labels:
    {{- include "exchange.labels" . | nindent 4 }}
    app: {{ .name }}
spec:
  type: ClusterIP
  selector:
    {{- include "exchange.selectorLabels" . | nindent 4 }}
    {{- if and (eq $svc.strategy "bluegreen") (not .root.Values.istio.enabled) }}
    {{- /* The live color's track label: blue is the primary track. */}}
    exchange.dev/track: {{ ternary "primary" "green" (eq $svc.bluegreen.live "blue") }}
    {{- end }}
  ports:
    {{- range $role := $svc.servicePorts }}
    {{- $port := index $svc.ports $role | required (printf "servicePorts names %s, which is not in ports" $role) }}
    - name: {{ include "exchange.portName" $role }}
      port: {{ $port }}
      targetPort: {{ include "exchange.portName" $role }}
      protocol: TCP
      appProtocol: {{ include "exchange.appProtocol" $role }}
    {{- end }}
{{- end -}}

{{/* Probe handlers by kind. Context: {svc, kind}. */}}
{{- define "exchange.probeHandler" -}}
{{- $svc := .svc -}}
{{- $main := include "exchange.mainPort" $svc -}}
{{- $p := index $svc.probes .kind -}}
{{- if $p.handler -}}
{{ toYaml $p.handler }}
{{- else if and (eq .kind "liveness") (eq $main "grpc") -}}
grpc:
  port: {{ $svc.ports.grpc }}
  service: {{ $svc.health.liveGrpcService | default "liveness" | quote }}
{{- else if eq .kind "liveness" -}}
httpGet:
{{- if hasKey $svc.ports "metrics" }}
  path: /healthz
  port: http-metrics
{{- else }}
  path: {{ $svc.health.livePath }}
  port: {{ $main }}
{{- end }}
{{- else if eq $main "grpc" -}}
grpc:
  port: {{ $svc.ports.grpc }}
  service: {{ ternary $svc.health.grpcService "" (eq .kind "readiness") | quote }}
{{- else -}}
httpGet:
  path: {{ ternary $svc.health.readyPath $svc.health.livePath (ne .kind "liveness") }}
  port: http
{{- end -}}
{{- end -}}

{{- define "exchange.probe" -}}
{{ include "exchange.probeHandler" . }}
{{ toYaml (omit (index .svc.probes .kind) "handler") }}
{{- end -}}

{{/* Seconds of a pod's termination grace period. Context: svc. */}}
{{- define "exchange.gracePeriod" -}}
{{- if kindIs "invalid" .terminationGracePeriodSeconds -}}
{{- $l := .lifecycle -}}
{{- add (int $l.preStopSleepSeconds) (int ($l.drainDelaySeconds | default 0)) (int $l.shutdownTimeoutSeconds) 2 -}}
{{- else -}}
{{- .terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/* One Deployment (a track). Context: {root, name, svc, tracks, track}. */}}
{{- define "exchange.deployment" -}}
{{- $root := .root -}}
{{- $svc := .svc -}}
{{- $track := .track -}}
{{- $main := include "exchange.mainPort" $svc -}}
{{- $l := $svc.lifecycle -}}
{{- $drainTotal := add (int ($l.drainDelaySeconds | default 0)) (int $l.shutdownTimeoutSeconds) -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "exchange.workloadName" . }}
  labels:
    {{- include "exchange.labels" . | nindent 4 }}
    app: {{ .name }}
    version: {{ $track.version | quote }}
    app.kubernetes.io/version: {{ $track.version | quote }}
    {{- with $track.role }}
    exchange.dev/track-role: {{ . }}
    {{- end }}
spec:
  {{- if and $svc.autoscaling.enabled (gt (int $track.replicas) 0) }}
  {{- /*
  The HPA owns the count; the Deployment still states it so that a first install
  starts the HPA's minimum (not 1 pod, which --wait would accept), and an upgrade
  states what runs now (never less than the minimum), so Helm neither scales the
  HPA's pods down nor drops the field (which would reset it to 1).
  */}}
  {{- $min := int ($svc.autoscaling.minReplicas | default $track.replicas) }}
  {{- $live := lookup "apps/v1" "Deployment" $root.Release.Namespace (include "exchange.workloadName" .) }}
  {{- $now := 0 }}
  {{- if $live }}{{ $now = int (($live.spec).replicas | default 0) }}{{ end }}
  replicas: {{ max $min $now }}
  {{- else }}
  replicas: {{ $track.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  minReadySeconds: 5
  selector:
    matchLabels:
      {{- include "exchange.selectorLabels" . | nindent 6 }}
      {{- include "exchange.trackSelector" $track | nindent 6 }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: {{ $svc.rolling.maxSurge }}
      maxUnavailable: {{ $svc.rolling.maxUnavailable }}
  template:
    metadata:
      labels:
        {{- with $svc.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- include "exchange.selectorLabels" . | nindent 8 }}
        app.kubernetes.io/part-of: {{ include "exchange.name" $root }}
        app.kubernetes.io/version: {{ $track.version | quote }}
        app: {{ .name }}
        version: {{ $track.version | quote }}
        {{- include "exchange.trackSelector" $track | nindent 8 }}
        {{- with $track.color }}
        color: {{ . }}
        {{- end }}
      annotations:
        checksum/config: {{ include "exchange.configMap" . | sha256sum }}
        {{- $refs := include "exchange.envSecretRefs" (include "exchange.containerEnv" . | fromYamlArray) | fromYamlArray }}
        {{- with include "exchange.secretsChecksum" (dict "root" $root "refs" $refs) }}
        # The Secret keys it reads (Helm's lookup): a changed password rolls these pods.
        {{- . | nindent 8 }}
        {{- end }}
        kubectl.kubernetes.io/default-container: {{ .name }}
        {{- if $root.Values.istio.enabled }}
        {{- with $svc.ports.metrics }}
        # Prometheus scrapes the admin port directly (plaintext, outside mTLS).
        traffic.sidecar.istio.io/excludeInboundPorts: {{ . | quote }}
        {{- end }}
        # Keep Envoy up while the application drains and finishes in-flight calls.
        proxy.istio.io/config: {{ printf "{\"terminationDrainDuration\": \"%ds\"}" $drainTotal | quote }}
        {{- end }}
        {{- with $svc.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "exchange.componentName" . }}
      automountServiceAccountToken: false
      {{- with $root.Values.global.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      terminationGracePeriodSeconds: {{ include "exchange.gracePeriod" $svc }}
      securityContext:
        {{- toYaml $svc.podSecurityContext | nindent 8 }}
      containers:
        - name: {{ .name }}
          image: {{ printf "%s/%s:%s" $root.Values.global.image.registry .name ($track.tag | toString) | quote }}
          imagePullPolicy: {{ $root.Values.global.image.pullPolicy }}
          securityContext:
            {{- toYaml $svc.containerSecurityContext | nindent 12 }}
          ports:
            {{- range $role, $port := $svc.ports }}
            - name: {{ include "exchange.portName" $role }}
              containerPort: {{ $port }}
              protocol: TCP
            {{- end }}
          envFrom:
            - configMapRef:
                name: {{ include "exchange.componentName" . }}
          env:
            {{- include "exchange.containerEnv" . | nindent 12 }}
          startupProbe:
            {{- include "exchange.probe" (dict "svc" $svc "kind" "startup") | nindent 12 }}
          readinessProbe:
            {{- include "exchange.probe" (dict "svc" $svc "kind" "readiness") | nindent 12 }}
          livenessProbe:
            {{- include "exchange.probe" (dict "svc" $svc "kind" "liveness") | nindent 12 }}
          lifecycle:
            preStop:
              sleep:
                seconds: {{ $l.preStopSleepSeconds }}
          resources:
            {{- toYaml $svc.resources | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
      {{- if $svc.topologySpread.enabled }}
      topologySpreadConstraints:
        - maxSkew: {{ $svc.topologySpread.maxSkew }}
          topologyKey: {{ $svc.topologySpread.topologyKey }}
          whenUnsatisfiable: ScheduleAnyway
          labelSelector:
            matchLabels:
              {{- include "exchange.selectorLabels" . | nindent 14 }}
              {{- include "exchange.trackSelector" $track | nindent 14 }}
      {{- end }}
      {{- with $svc.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $svc.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $svc.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}

{{/*
The environment of a service's container (a YAML list): identity, drain timings,
its database and Redis credentials, its own Secrets, extra entries. The Deployment
renders it, and reads the Secrets it references for checksum/secrets.
Context: {root, name, svc, track}.
*/}}
{{- define "exchange.containerEnv" -}}
{{- $root := .root -}}
{{- $svc := .svc -}}
{{- $track := .track -}}
{{- $l := $svc.lifecycle -}}
- name: SERVICE_VERSION
  value: {{ $track.version | quote }}
- name: POD_NAME
  valueFrom:
    fieldRef: {fieldPath: metadata.name}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef: {fieldPath: metadata.namespace}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "service.version=%s,k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)%s" $track.version (ternary (printf ",%s" $root.Values.telemetry.resourceAttributes) "" (ne $root.Values.telemetry.resourceAttributes "")) | quote }}
{{- if gt (int ($l.drainDelaySeconds | default 0)) 0 }}
- name: DRAIN_DELAY
  value: {{ printf "%ds" (int $l.drainDelaySeconds) | quote }}
{{- end }}
- name: SHUTDOWN_TIMEOUT
  value: {{ printf "%ds" (int $l.shutdownTimeoutSeconds) | quote }}
{{- if $svc.database.role }}
{{- include "exchange.databaseEnv" . | nindent 0 }}
{{- end }}
{{- if $svc.redis.enabled }}
{{- include "exchange.redisEnv" . | nindent 0 }}
{{- end }}
{{- $secretName := $svc.secrets.existingSecret | default (printf "%s-secrets" (include "exchange.componentName" .)) }}
{{- range $env, $key := $svc.secrets.env }}
- name: {{ $env }}
  valueFrom:
    secretKeyRef:
      name: {{ $secretName }}
      key: {{ $key }}
{{- end }}
{{- with $svc.extraEnv }}
{{- toYaml . | nindent 0 }}
{{- end }}
{{- with $track.extraEnv }}
# this track's own (canary.candidate.extraEnv, bluegreen.colors.<color>.extraEnv)
{{- toYaml . | nindent 0 }}
{{- end }}
{{- end -}}

{{/*
The env entries that connect service .name to its Postgres schema: DATABASE_PASSWORD
from the Secret, DATABASE_URL as its role. The service's Deployments and its jobs
(CronJobs) share them. Context: {root, name, svc}.
*/}}
{{- define "exchange.databaseEnv" -}}
{{- $db := include "exchange.database" .root | fromYaml -}}
- name: DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ ternary (printf "%s-%s" $db.secret .name) $db.secret (eq (toString $db.roleSecrets) "true") }}
      key: {{ ternary "password" (printf "%s-password" .name) (eq (toString $db.roleSecrets) "true") }}
- name: DATABASE_URL
  value: {{ printf "postgres://%s:$(DATABASE_PASSWORD)@%s:%v/%s%s" .svc.database.role $db.host $db.port $db.database (ternary (printf "?%s" $db.params) "" (ne $db.params "")) | quote }}
{{- end -}}

{{/*
The env entries that connect service .name to Redis when its password is in a
Secret (the bundled Redis: the service's own ACL user; an external one: its default
user): REDIS_PASSWORD and REDIS_URL. Without a Secret, REDIS_URL is in the
ConfigMap. Renders nothing then. Context: {root, name, svc}.
*/}}
{{- define "exchange.redisEnv" -}}
{{- $r := include "exchange.redis" .root | fromYaml -}}
{{- if $r.secret -}}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $r.secret }}
      key: {{ ternary (printf "%s-password" .name) "redis-password" $r.acl }}
- name: REDIS_URL
  value: {{ printf "%s://%s:$(REDIS_PASSWORD)@%s:%v%s" $r.scheme (ternary .name "" $r.acl) $r.host $r.port $r.query | quote }}
{{- end -}}
{{- end -}}

{{/* HorizontalPodAutoscaler of a track. */}}
{{- define "exchange.hpa" -}}
{{- $a := .svc.autoscaling -}}
{{- $min := $a.minReplicas | default .track.replicas -}}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "exchange.workloadName" . }}
  labels:
    {{- include "exchange.labels" . | nindent 4 }}
    app: {{ .name }}
    version: {{ .track.version | quote }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "exchange.workloadName" . }}
  minReplicas: {{ $min }}
  maxReplicas: {{ max $min $a.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $a.targetCPUUtilizationPercentage }}
{{- end -}}

{{/* PodDisruptionBudget of a track. */}}
{{- define "exchange.pdb" -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "exchange.workloadName" . }}
  labels:
    {{- include "exchange.labels" . | nindent 4 }}
    app: {{ .name }}
    version: {{ .track.version | quote }}
spec:
  maxUnavailable: {{ .svc.pdb.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "exchange.selectorLabels" . | nindent 6 }}
      {{- include "exchange.trackSelector" .track | nindent 6 }}
{{- end -}}

{{/* PodMonitor: scrapes every track's admin port, labelled with app/version. */}}
{{- define "exchange.podMonitor" -}}
{{- $m := .root.Values.monitoring.podMonitor -}}
apiVersion: monitoring.coreos.com/v1
kind: PodMonitor
metadata:
  name: {{ include "exchange.componentName" . }}
  labels:
    {{- include "exchange.labels" . | nindent 4 }}
    {{- with $m.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "exchange.selectorLabels" . | nindent 6 }}
  podTargetLabels: [app, version, color]
  podMetricsEndpoints:
    - port: http-metrics
      path: /metrics
      interval: {{ $m.interval }}
{{- end -}}
