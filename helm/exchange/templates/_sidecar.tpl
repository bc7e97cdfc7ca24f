{{/*
Sidecar scoping and the mesh's egress allow-list (values istio.sidecarScoping,
istio.egress). Every workload of the release that runs a sidecar gets one Sidecar,
selected by its component's labels (app.kubernetes.io/name and instance: every
track of a service, primary, candidate or green, shares it), whose egress lists
only the hosts the workload calls, derived from the declarations that also make
its URLs and its NetworkPolicy:
  services  the services in its `upstreams`, Postgres (database.role), Redis
            (redis.enabled), the live Upbit (the ingestor's upbit.source: live)
  jobs      Postgres and Redis when the job uses them, the Upbit REST API it reads
            (upbit-sim, or the live Upbit)
  the gate  the gateway (its load), Prometheus (releaseGate.prometheus.url) and the
            Kubernetes API server (the VirtualServices it patches)
  all       the OpenTelemetry Collector (telemetry.otlpEndpoint): the application's
            spans and its sidecar's, which Istio's otel-tracing provider sends to
            the same Collector (an Envoy whose Sidecar lacks the provider's host
            exports nothing, silently: istio/istio#53701)
plus the service's own istio.egressHosts. istiod needs no entry: the sidecar
reaches it through its bootstrap configuration, not through these hosts.

A call is {host, port, protocol, name, why}. A host inside the cluster (a Service
of the release, or <service>.<namespace>.svc[.<cluster domain>]) is named
<namespace>/<FQDN> ("." for the release's namespace); any other host is outside the
mesh: templates/serviceentry.yaml renders a ServiceEntry for it (MESH_EXTERNAL,
exported to the release's namespace only), named "./<host>" here. With
istio.egress.registryOnly each Sidecar sets outboundTrafficPolicy REGISTRY_ONLY,
so a host that is neither a Service nor a ServiceEntry is unreachable.
*/}}

{{/* "true" when the release renders Sidecars and the ServiceEntries they need. Context: root. */}}
{{- define "exchange.egress.on" -}}
{{- $e := .Values.istio.egress | default dict -}}
{{- if and .Values.istio.enabled (or .Values.istio.sidecarScoping $e.registryOnly) -}}true{{- end -}}
{{- end -}}

{{/*
A call to a URL, as YAML: the port from the URL or its scheme (443 for https and
wss), the protocol TLS for https/wss and `plain` (default HTTP) otherwise.
Context: {url, name, why, plain}.
*/}}
{{- define "exchange.egress.urlCall" -}}
{{- $u := urlParse .url -}}
{{- $tls := has $u.scheme (list "https" "wss") -}}
{{- $port := trimPrefix (printf "%s:" $u.hostname) $u.host -}}
{{- if or (not $port) (eq $port $u.host) }}{{ $port = ternary "443" "80" $tls }}{{ end -}}
host: {{ $u.hostname | quote }}
port: {{ $port }}
protocol: {{ ternary "TLS" (.plain | default "HTTP") $tls }}
name: {{ .name }}
why: {{ .why | quote }}
{{- end -}}

{{/* The OpenTelemetry Collector (telemetry.otlpEndpoint, OTLP/gRPC), as a YAML list of calls. Context: root. */}}
{{- define "exchange.egress.collectorCalls" -}}
{{- $out := list -}}
{{- with .Values.telemetry.otlpEndpoint -}}
{{- $out = append $out (include "exchange.egress.urlCall" (dict "url" . "name" "otel-collector" "why" "the OpenTelemetry Collector (spans)" "plain" "GRPC") | fromYaml) -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* Postgres (bundled, CloudNativePG or external), as a YAML list of calls. Context: root. */}}
{{- define "exchange.egress.databaseCalls" -}}
{{- $db := include "exchange.database" . | fromYaml -}}
{{- toYaml (list (dict "host" $db.host "port" $db.port "protocol" "TCP" "name" "postgresql" "why" "Postgres")) -}}
{{- end -}}

{{/*
Redis (bundled or external; with Sentinels their port and Redis', and the host the
Sentinels name the Redis pods by: externalRedis.sentinel.podsHost, or every
Service of the Sentinel Service's namespace), as a YAML list of calls. Context: root.
*/}}
{{- define "exchange.egress.redisCalls" -}}
{{- $r := include "exchange.redis" . | fromYaml -}}
{{- $out := list -}}
{{- range $r.ports -}}
{{- $out = append $out (dict "host" $r.host "port" . "protocol" "TCP" "name" "redis" "why" "Redis") -}}
{{- end -}}
{{- $s := .Values.externalRedis.sentinel | default dict -}}
{{- if and (not .Values.redis.enabled) $s.enabled -}}
{{- $why := "the Redis pods the Sentinels name" -}}
{{- if $s.podsHost -}}
{{- $out = append $out (dict "host" $s.podsHost "port" .Values.externalRedis.port "protocol" "TCP" "name" "redis" "why" $why) -}}
{{- else -}}
{{- $at := include "exchange.egress.locate" (dict "root" . "call" (dict "host" $r.host)) | fromYaml -}}
{{- if not $at.external -}}
{{- $out = append $out (dict "sidecarHost" (printf "%s/*" (splitList "/" $at.sidecarHost | first)) "why" (printf "%s (externalRedis.sentinel.podsHost is empty: every Service of that namespace)" $why)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* The live Upbit (the ingestor's WebSocket and REST URLs), as a YAML list of calls. Context: root. */}}
{{- define "exchange.egress.upbitCalls" -}}
{{- $ing := include "exchange.svc" (dict "root" . "name" "ingestor") | fromYaml -}}
{{- $out := list -}}
{{- range $url := list $ing.upbit.wsUrl $ing.upbit.restUrl -}}
{{- $out = append $out (include "exchange.egress.urlCall" (dict "url" $url "name" "upbit" "why" "the live Upbit (services.ingestor.upbit)") | fromYaml) -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* What an application service calls, as a YAML list of calls. Context: {root, name, svc}. */}}
{{- define "exchange.egress.serviceCalls" -}}
{{- $root := .root -}}
{{- $svc := .svc -}}
{{- $out := list -}}
{{- range $up := include "exchange.upstreams" . | fromYamlArray -}}
{{- $upSvc := include "exchange.svc" (dict "root" $root "name" $up) | fromYaml -}}
{{- $out = append $out (dict "host" (include "exchange.host" (dict "root" $root "name" $up)) "port" (index $upSvc.ports (include "exchange.mainPort" $upSvc)) "why" $up) -}}
{{- end -}}
{{- if $svc.database.role -}}
{{- $out = concat $out (include "exchange.egress.databaseCalls" $root | fromYamlArray) -}}
{{- end -}}
{{- if $svc.redis.enabled -}}
{{- $out = concat $out (include "exchange.egress.redisCalls" $root | fromYamlArray) -}}
{{- end -}}
{{- if and $svc.upbit (eq (toString $svc.upbit.source) "live") -}}
{{- $out = concat $out (include "exchange.egress.upbitCalls" $root | fromYamlArray) -}}
{{- end -}}
{{- $out = concat $out (include "exchange.egress.collectorCalls" $root | fromYamlArray) -}}
{{- toYaml $out -}}
{{- end -}}

{{/* What a scheduled job calls, as a YAML list of calls. Context: {root, service, job}. */}}
{{- define "exchange.egress.jobCalls" -}}
{{- $root := .root -}}
{{- $svc := include "exchange.svc" (dict "root" $root "name" .service) | fromYaml -}}
{{- $job := include "exchange.job" . | fromYaml -}}
{{- $out := list -}}
{{- if and $svc.database.role $job.database -}}
{{- $out = concat $out (include "exchange.egress.databaseCalls" $root | fromYamlArray) -}}
{{- end -}}
{{- if and $svc.redis.enabled $job.redis -}}
{{- $out = concat $out (include "exchange.egress.redisCalls" $root | fromYamlArray) -}}
{{- end -}}
{{- if $job.upbitRest -}}
{{- $upbit := include "exchange.upbitRest" $root | fromYaml -}}
{{- if $upbit.live -}}
{{- $out = append $out (include "exchange.egress.urlCall" (dict "url" $upbit.url "name" "upbit" "why" "the live Upbit's REST API") | fromYaml) -}}
{{- else -}}
{{- $sim := include "exchange.svc" (dict "root" $root "name" "upbit-sim") | fromYaml -}}
{{- $out = append $out (dict "host" (include "exchange.host" (dict "root" $root "name" "upbit-sim")) "port" $sim.ports.http "why" "upbit-sim (its REST API)") -}}
{{- end -}}
{{- end -}}
{{- $out = concat $out (include "exchange.egress.collectorCalls" $root | fromYamlArray) -}}
{{- toYaml $out -}}
{{- end -}}

{{/* What the release gate's Job calls, as a YAML list of calls. Context: root. */}}
{{- define "exchange.egress.gateCalls" -}}
{{- $gw := include "exchange.svc" (dict "root" . "name" "gateway") | fromYaml -}}
{{- $out := list (dict "host" (include "exchange.host" (dict "root" . "name" "gateway")) "port" $gw.ports.http "why" "gateway (the gate's load)") -}}
{{- $out = append $out (include "exchange.egress.urlCall" (dict "url" .Values.releaseGate.prometheus.url "name" "prometheus" "why" "Prometheus (the checks)") | fromYaml) -}}
{{- $out = append $out (dict "host" (printf "kubernetes.default.svc.%s" .Values.clusterDomain) "port" 443 "why" "the Kubernetes API server (the VirtualServices it patches)") -}}
{{- $out = concat $out (include "exchange.egress.collectorCalls" . | fromYamlArray) -}}
{{- toYaml $out -}}
{{- end -}}

{{/*
Where a call's host is, as YAML {sidecarHost, external}: inside the cluster (no
dot: a Service of the release's namespace; <service>.<namespace>.svc, with or
without the cluster domain) as <namespace>/<FQDN>, "." for the release's
namespace; anything else outside the mesh, as "./<host>" (its ServiceEntry is in
the release's namespace). A call that names its sidecarHost keeps it.
Context: {root, call}.
*/}}
{{- define "exchange.egress.locate" -}}
{{- $root := .root -}}
{{- $c := .call -}}
{{- $domain := $root.Values.clusterDomain -}}
{{- if $c.sidecarHost -}}
sidecarHost: {{ $c.sidecarHost | quote }}
external: false
{{- else -}}
{{- $h := $c.host -}}
{{- $fq := "" -}}
{{- if not (contains "." $h) -}}
{{- $fq = printf "%s.%s.svc.%s" $h $root.Release.Namespace $domain -}}
{{- else if hasSuffix ".svc" $h -}}
{{- $fq = printf "%s.%s" $h $domain -}}
{{- else if hasSuffix (printf ".svc.%s" $domain) $h -}}
{{- $fq = $h -}}
{{- end -}}
{{- if and $fq (eq (len (splitList "." (trimSuffix (printf ".svc.%s" $domain) $fq))) 2) -}}
{{- $ns := index (splitList "." $fq) 1 -}}
sidecarHost: {{ printf "%s/%s" (ternary "." $ns (eq $ns $root.Release.Namespace)) $fq | quote }}
external: false
{{- else -}}
sidecarHost: {{ printf "./%s" $h | quote }}
external: true
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The Sidecar of one workload: its egress limited to the hosts of `calls` (each
once, with why it is there) and `hosts` (istio.egressHosts, as given), or every
host of the mesh when istio.sidecarScoping is off; REGISTRY_ONLY with
istio.egress.registryOnly. Context: {root, name (the component), calls, hosts}.
*/}}
{{- define "exchange.sidecar" -}}
{{- $root := .root -}}
{{- $seen := list -}}
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: {{ include "exchange.componentName" . }}
  labels:
    {{- include "exchange.labels" . | nindent 4 }}
spec:
  workloadSelector:
    labels:
      {{- include "exchange.selectorLabels" . | nindent 6 }}
  egress:
    - hosts:
        {{- if not $root.Values.istio.sidecarScoping }}
        - "*/*"  # istio.sidecarScoping is off: every host of the mesh
        {{- else }}
        {{- range $c := .calls }}
        {{- $at := include "exchange.egress.locate" (dict "root" $root "call" $c) | fromYaml }}
        {{- if not (has $at.sidecarHost $seen) }}
        {{- $seen = append $seen $at.sidecarHost }}
        - {{ $at.sidecarHost | quote }}  # {{ $c.why }}
        {{- end }}
        {{- end }}
        {{- range $h := .hosts }}
        {{- if not (has $h $seen) }}
        {{- $seen = append $seen $h }}
        - {{ $h | quote }}  # istio.egressHosts
        {{- end }}
        {{- end }}
        {{- if not $seen }}
        - "~/*"  # it calls nothing
        {{- end }}
        {{- end }}
  {{- if ($root.Values.istio.egress | default dict).registryOnly }}
  # Nothing outside the mesh's registry (Services, ServiceEntries): istio.egress.registryOnly.
  outboundTrafficPolicy:
    mode: REGISTRY_ONLY
  {{- end }}
{{- end -}}
