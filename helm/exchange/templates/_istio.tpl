{{/*
Istio routing per service, from its strategy:
  rolling    one route to the host (no subsets)
  canary     header -> candidate subset; otherwise weights stable/candidate (a
             candidate scaled to zero: no header route, weights 100/0)
  bluegreen  preview header -> idle color; otherwise 100% to the live color
Each route set is rendered once per class of call: streams first (streamPaths: no
timeout, no retries), then fault injection (istio.fault, only on the unary calls
in istio.faultPaths, never on a stream), then the other unary calls (timeout,
retries). Istio enables neither timeouts nor retries on a route with a fault, so
the fault routes are rendered without them: what the render says is what Envoy
does, and every other call keeps its timeout and retries.

The ingress VirtualService (the public entry) is the edge: its routes never match a
routing header (x-canary, x-preview: anyone on the internet could send them) and
remove them from every request, so they do not travel into the mesh either; they
also remove x-served-by from responses unless istio.ingress.exposeServedBy. Inside
the mesh the headers route as above: previews come from in-cluster callers or a
port-forward to the gateway (which needs Kubernetes RBAC, not an address).
*/}}

{{/* Every routing header name any service matches on (canary pin, blue/green preview), as a YAML list. Context: root. */}}
{{- define "exchange.routingHeaders" -}}
{{- $root := . -}}
{{- $out := list -}}
{{- range $name, $_ := $root.Values.services -}}
{{- $ctx := dict "root" $root "name" $name -}}
{{- if include "exchange.enabled" $ctx -}}
{{- $svc := include "exchange.svc" $ctx | fromYaml -}}
{{- $out = append $out $svc.canary.header.name -}}
{{- $out = append $out $svc.bluegreen.preview.header.name -}}
{{- end -}}
{{- end -}}
{{- toYaml ($out | uniq | sortAlpha) -}}
{{- end -}}

{{/* Header manipulation of every ingress route. Context: root. */}}
{{- define "exchange.istio.edgeHeaders" -}}
request:
  # Routing headers from the internet must not pin anyone's traffic to unreleased builds.
  remove:
    {{- include "exchange.routingHeaders" . | nindent 4 }}
{{- if not .Values.istio.ingress.exposeServedBy }}
response:
  # Pod names and versions stay inside (istio.ingress.exposeServedBy turns this off).
  remove: [x-served-by]
{{- end }}
{{- end -}}

{{/* A destination. Context: {host, port, subset, weight (optional)}. */}}
{{- define "exchange.istio.destination" -}}
- destination:
    host: {{ .host }}
    {{- with .subset }}
    subset: {{ . }}
    {{- end }}
    port:
      number: {{ .port }}
  {{- if not (kindIs "invalid" .weight) }}
  weight: {{ .weight }}
  {{- end }}
{{- end -}}

{{/* Match list for a route. Context: {streamPaths (list or empty), header (map or nil)}. */}}
{{- define "exchange.istio.match" -}}
{{- $header := .header -}}
{{- if .streamPaths -}}
{{- range .streamPaths }}
- uri:
    prefix: {{ . }}
  {{- with $header }}
  headers:
    {{ .name }}:
      exact: {{ .value | quote }}
  {{- end }}
{{- end }}
{{- else if $header -}}
- headers:
    {{ $header.name }}:
      exact: {{ $header.value | quote }}
{{- end -}}
{{- end -}}

{{/* One route. Context: {svc, name, class (stream|unary), streamPaths, header, destinations (YAML string), edgeHeaders (YAML string, ingress only)}. */}}
{{- define "exchange.istio.route" -}}
{{- $i := .svc.istio -}}
- name: {{ .name }}
  {{- $match := include "exchange.istio.match" . }}
  {{- if $match }}
  match:
    {{- $match | nindent 4 }}
  {{- end }}
  route:
    {{- .destinations | nindent 4 }}
  {{- with .edgeHeaders }}
  headers:
    {{- . | nindent 4 }}
  {{- end }}
  {{- if eq .class "unary" }}
  timeout: {{ $i.timeout }}
  retries:
    {{- toYaml $i.retries | nindent 4 }}
  {{- else }}
  {{- /* streams: never retried; fault routes: Istio turns retries and timeouts off. */}}
  retries:
    attempts: 0
  {{- end }}
  {{- if eq .class "fault" }}
  fault:
    {{- toYaml $i.fault | nindent 4 }}
  {{- end }}
{{- end -}}

{{/* All HTTP routes of a service. Context: {root, name, svc, tracks, edge (true: the ingress routes, without header routes)}. */}}
{{- define "exchange.istio.routes" -}}
{{- $edge := eq (toString .edge) "true" -}}
{{- $svc := .svc -}}
{{- $host := include "exchange.host" . -}}
{{- $main := include "exchange.mainPort" $svc -}}
{{- $port := index $svc.ports $main -}}
{{- $classes := list -}}
{{- if $svc.istio.streamPaths -}}
{{- $classes = append $classes (dict "class" "stream" "paths" $svc.istio.streamPaths) -}}
{{- end -}}
{{- if $svc.istio.fault -}}
{{- if not $svc.istio.faultPaths -}}
{{- fail (printf "services.%s.istio.fault needs istio.faultPaths: the unary calls to inject faults into (a route with a fault loses its retries and timeout, so it is never the catch-all route)" $.name) -}}
{{- end -}}
{{- range $fp := $svc.istio.faultPaths -}}
{{- range $sp := $svc.istio.streamPaths -}}
{{- if or (hasPrefix $sp $fp) (hasPrefix $fp $sp) -}}
{{- fail (printf "services.%s.istio.faultPaths: %s overlaps the stream path %s (streams get no faults)" $.name $fp $sp) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if not $edge -}}
{{- $classes = append $classes (dict "class" "fault" "paths" $svc.istio.faultPaths) -}}
{{- end -}}
{{- end -}}
{{- $classes = append $classes (dict "class" "unary" "paths" list) -}}
{{- range $c := $classes -}}
{{- $base := dict "svc" $svc "class" $c.class "streamPaths" $c.paths "edgeHeaders" (ternary (include "exchange.istio.edgeHeaders" $.root) "" $edge) -}}
{{- $prefix := get (dict "stream" "stream-" "fault" "fault-" "unary" "") $c.class -}}
{{- if eq $svc.strategy "rolling" }}
{{ include "exchange.istio.route" (merge (dict "name" (printf "%sprimary" $prefix) "header" nil "destinations" (include "exchange.istio.destination" (dict "host" $host "port" $port "subset" "" "weight" nil))) $base) }}
{{- else if eq $svc.strategy "canary" -}}
{{- $cn := $svc.canary -}}
{{- if $cn.candidate.enabled -}}
{{- $w := int $cn.weight -}}
{{- if or (lt $w 0) (gt $w 100) -}}
{{- fail (printf "services.%s.canary.weight must be 0-100, not %v" $.name $cn.weight) -}}
{{- end }}
{{- $running := true -}}
{{- range $.tracks -}}
{{- if and (eq .role "candidate") (eq (int .replicas) 0) -}}{{- $running = false -}}{{- end -}}
{{- end -}}
{{- if and (not $running) (gt $w 0) -}}
{{- fail (printf "services.%s.canary: the candidate is scaled to zero (candidate.replicas 0, after a failed analysis), so its weight must be 0, not %d: bring it back first (--set services.%s.canary.candidate.replicas=1), or scripts/deploy canary" $.name $w $.name) -}}
{{- end }}
{{- /* A candidate scaled to zero has no pods: a pinned call would get a 503, so the
pin goes and x-canary requests take the weighted route (the stable version). */}}
{{- if and (not $edge) $running }}
{{ include "exchange.istio.route" (merge (dict "name" (printf "%scanary-pinned" $prefix) "header" $cn.header "destinations" (include "exchange.istio.destination" (dict "host" $host "port" $port "subset" "canary" "weight" nil))) $base) }}
{{- end }}
{{- $dests := printf "%s\n%s" (include "exchange.istio.destination" (dict "host" $host "port" $port "subset" "stable" "weight" (sub 100 $w))) (include "exchange.istio.destination" (dict "host" $host "port" $port "subset" "canary" "weight" $w)) }}
{{ include "exchange.istio.route" (merge (dict "name" (printf "%scanary-weighted" $prefix) "header" nil "destinations" $dests) $base) }}
{{- else }}
{{ include "exchange.istio.route" (merge (dict "name" (printf "%sstable" $prefix) "header" nil "destinations" (include "exchange.istio.destination" (dict "host" $host "port" $port "subset" "stable" "weight" nil))) $base) }}
{{- end -}}
{{- else if eq $svc.strategy "bluegreen" -}}
{{- $b := $svc.bluegreen -}}
{{- $idle := ternary "green" "blue" (eq $b.live "blue") -}}
{{- if and $b.preview.enabled (not $edge) }}
{{ include "exchange.istio.route" (merge (dict "name" (printf "%spreview-%s" $prefix $idle) "header" $b.preview.header "destinations" (include "exchange.istio.destination" (dict "host" $host "port" $port "subset" $idle "weight" nil))) $base) }}
{{- end }}
{{ include "exchange.istio.route" (merge (dict "name" (printf "%slive-%s" $prefix $b.live) "header" nil "destinations" (include "exchange.istio.destination" (dict "host" $host "port" $port "subset" $b.live "weight" nil))) $base) }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* DestinationRule: traffic policy (circuit breaking) and one subset per track. */}}
{{- define "exchange.destinationRule" -}}
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: {{ include "exchange.componentName" . }}
  labels:
    {{- include "exchange.labels" . | nindent 4 }}
spec:
  host: {{ include "exchange.host" . }}
  trafficPolicy:
    {{- toYaml .svc.istio.trafficPolicy | nindent 4 }}
  {{- if ne .svc.strategy "rolling" }}
  subsets:
    {{- range .tracks }}
    - name: {{ .subset }}
      labels:
        {{- include "exchange.trackSelector" . | nindent 8 }}
    {{- end }}
  {{- end }}
{{- end -}}

{{/* VirtualService for calls inside the mesh. */}}
{{- define "exchange.virtualService" -}}
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: {{ include "exchange.componentName" . }}
  labels:
    {{- include "exchange.labels" . | nindent 4 }}
spec:
  hosts:
    - {{ include "exchange.host" . }}
  http:
    {{- include "exchange.istio.routes" . | nindent 4 }}
{{- end -}}

{{/* VirtualService binding the public routes to the mesh ingress Gateway. */}}
{{- define "exchange.ingressVirtualService" -}}
{{- $ing := .root.Values.istio.ingress -}}
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: {{ include "exchange.componentName" . }}-ingress
  labels:
    {{- include "exchange.labels" . | nindent 4 }}
spec:
  hosts:
    {{- toYaml $ing.hosts | nindent 4 }}
  gateways:
    {{- if $ing.createGateway }}
    - {{ include "exchange.fullname" .root }}
    {{- else }}
    - {{ $ing.gateway }}
    {{- end }}
  http:
    {{- with $ing.hiddenPaths }}
    # Health endpoints are for the kubelet and the mesh, not the internet.
    - name: hidden
      match:
        {{- range . }}
        - uri:
            exact: {{ . }}
        {{- end }}
      directResponse:
        status: 404
    {{- end }}
    {{- include "exchange.istio.routes" (merge (dict "edge" true) .) | nindent 4 }}
{{- end -}}
