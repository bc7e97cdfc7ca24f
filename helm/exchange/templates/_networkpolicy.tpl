{{/*
NetworkPolicies: one per workload, allowing exactly its callers in and its
upstreams out (plus DNS, the Istio control plane and Prometheus). With
networkPolicy.defaultDeny everything else in the namespace is denied.
*/}}

{{/* Ingress rule letting Prometheus scrape a port (and Envoy's stats on 15090). Context: {root, port}. */}}
{{- define "exchange.netpol.prometheusRule" -}}
{{- $np := .root.Values.networkPolicy -}}
{{- if or .port .root.Values.istio.enabled -}}
- from:
    - namespaceSelector:
        matchLabels:
          {{- toYaml $np.prometheus.namespaceSelector | nindent 10 }}
      podSelector:
        matchLabels:
          {{- toYaml $np.prometheus.podSelector | nindent 10 }}
  ports:
    {{- with .port }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
    {{- if .root.Values.istio.enabled }}
    - protocol: TCP
      port: 15090
    {{- end }}
{{- end -}}
{{- end -}}

{{/*
Ingress rule for the kubelet's probes in the mesh: the sidecar injector rewrites
HTTP/TCP/gRPC probes to the sidecar agent (15020) and adds the sidecar's own
readiness probe (15021). Context: root.
*/}}
{{- define "exchange.netpol.kubeletRule" -}}
{{- $k := .Values.networkPolicy.kubelet -}}
{{- if and .Values.istio.enabled $k.enabled $k.ports -}}
# the kubelet's probes (rewritten by Istio to the sidecar agent) and the sidecar's readiness
- ports:
    {{- range $k.ports }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
  {{- with $k.from }}
  from:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
{{- end -}}

{{/* Egress rules every workload needs: DNS, the mesh control plane, the trace collector, extras. Context: root. */}}
{{- define "exchange.netpol.baseEgress" -}}
{{- $np := .Values.networkPolicy -}}
- to:
    - namespaceSelector:
        matchLabels:
          {{- toYaml $np.dns.namespaceSelector | nindent 10 }}
      podSelector:
        matchLabels:
          {{- toYaml $np.dns.podSelector | nindent 10 }}
  ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
{{- if .Values.istio.enabled }}
- to:
    - namespaceSelector:
        matchLabels:
          {{- toYaml $np.controlPlane.namespaceSelector | nindent 10 }}
  ports:
    {{- range $np.controlPlane.ports }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
{{- end }}
{{- if or .Values.telemetry.otlpEndpoint .Values.istio.enabled }}
{{- /* Spans: the application's OTLP exporter and, in the mesh, its sidecar's tracer. */}}
- to:
    - namespaceSelector:
        matchLabels:
          {{- toYaml $np.otelCollector.namespaceSelector | nindent 10 }}
      {{- with $np.otelCollector.podSelector }}
      podSelector:
        matchLabels:
          {{- toYaml . | nindent 10 }}
      {{- end }}
  ports:
    {{- range $np.otelCollector.ports }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
{{- end }}
{{- with $np.extraEgress }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Egress to a bundled data store, or to its external address. Context: {root, name (postgresql|redis), port or ports, external}. */}}
{{- define "exchange.netpol.storeEgress" -}}
- to:
    {{- if .external }}
    - ipBlock: {cidr: 0.0.0.0/0}
    {{- else }}
    - podSelector:
        matchLabels:
          {{- if eq .name "postgresql" }}
          {{- include "exchange.postgresql.podLabels" .root | nindent 10 }}
          {{- else }}
          {{- include "exchange.selectorLabels" . | nindent 10 }}
          {{- end }}
    {{- end }}
  ports:
    {{- range (.ports | default (list .port)) }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
{{- end -}}

{{/* NetworkPolicy of an application service. Context: {root, name, svc}. */}}
{{- define "exchange.networkPolicy" -}}
{{- $root := .root -}}
{{- $svc := .svc -}}
{{- $main := include "exchange.mainPort" $svc -}}
{{- $callers := include "exchange.callers" . | fromYamlArray -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "exchange.componentName" . }}
  labels:
    {{- include "exchange.labels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "exchange.selectorLabels" . | nindent 6 }}
  policyTypes: [Ingress, Egress]
  ingress:
    {{- range $caller := $callers }}
    # {{ $caller }} -> {{ $.name }}
    - from:
        - podSelector:
            matchLabels:
              {{- include "exchange.selectorLabels" (dict "root" $root "name" $caller) | nindent 14 }}
      ports:
        - protocol: TCP
          port: {{ include "exchange.portName" $main }}
    {{- end }}
    {{- range $job := include "exchange.jobCallers" . | fromYamlArray }}
    # {{ $job }} (a CronJob) -> {{ $.name }}
    - from:
        - podSelector:
            matchLabels:
              {{- include "exchange.selectorLabels" (dict "root" $root "name" $job) | nindent 14 }}
      ports:
        - protocol: TCP
          port: {{ include "exchange.portName" $main }}
    {{- end }}
    {{- if $svc.ingress }}
    # the mesh ingress gateway -> {{ .name }}
    - from:
        - namespaceSelector:
            matchLabels:
              kubernetes.io/metadata.name: {{ $root.Values.istio.ingress.namespace }}
          podSelector:
            matchLabels:
              {{- toYaml $root.Values.istio.ingress.selector | nindent 14 }}
      ports:
        - protocol: TCP
          port: {{ include "exchange.portName" $main }}
    {{- end }}
    {{- if and (eq .name "gateway") (include "exchange.releaseGate.on" $root) }}
    # release-gate -> gateway (the gate's load during an analysis)
    - from:
        - podSelector:
            matchLabels:
              {{- include "exchange.selectorLabels" (dict "root" $root "name" "release-gate") | nindent 14 }}
      ports:
        - protocol: TCP
          port: {{ include "exchange.portName" $main }}
    {{- end }}
    {{- include "exchange.netpol.prometheusRule" (dict "root" $root "port" (ternary "http-metrics" "" (hasKey $svc.ports "metrics"))) | nindent 4 }}
    {{- include "exchange.netpol.kubeletRule" $root | nindent 4 }}
  egress:
    {{- range $up := include "exchange.upstreams" . | fromYamlArray }}
    {{- $upSvc := include "exchange.svc" (dict "root" $root "name" $up) | fromYaml }}
    # {{ $.name }} -> {{ $up }}
    - to:
        - podSelector:
            matchLabels:
              {{- include "exchange.selectorLabels" (dict "root" $root "name" $up) | nindent 14 }}
      ports:
        - protocol: TCP
          port: {{ index $upSvc.ports (include "exchange.mainPort" $upSvc) }}
    {{- end }}
    {{- if $svc.database.role }}
    {{- include "exchange.netpol.storeEgress" (dict "root" $root "name" "postgresql" "port" (include "exchange.database" $root | fromYaml).port "external" (not $root.Values.postgresql.enabled)) | nindent 4 }}
    {{- end }}
    {{- if $svc.redis.enabled }}
    {{- include "exchange.netpol.storeEgress" (dict "root" $root "name" "redis" "ports" (include "exchange.redis" $root | fromYaml).ports "external" (not $root.Values.redis.enabled)) | nindent 4 }}
    {{- end }}
    {{- if and $svc.upbit (eq (toString $svc.upbit.source) "live") }}
    # the live Upbit (HTTPS and WSS)
    - to:
        - ipBlock:
            cidr: 0.0.0.0/0
            except: [10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16]
      ports:
        - {protocol: TCP, port: 443}
    {{- end }}
    {{- include "exchange.netpol.baseEgress" $root | nindent 4 }}
{{- end -}}

{{/* NetworkPolicy of a data store: its users in, Prometheus on its exporter's port (metricsPort, a port name, when it has one), DNS and the control plane out. Context: {root, name, portName, users, metricsPort}. */}}
{{- define "exchange.storeNetworkPolicy" -}}
{{- $root := .root -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "exchange.componentName" . }}
  labels:
    {{- include "exchange.labels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "exchange.selectorLabels" . | nindent 6 }}
  policyTypes: [Ingress, Egress]
  ingress:
    {{- range $user := .users }}
    # {{ $user }} -> {{ $.name }}
    - from:
        - podSelector:
            matchLabels:
              {{- include "exchange.selectorLabels" (dict "root" $root "name" $user) | nindent 14 }}
      ports:
        - protocol: TCP
          port: {{ $.portName }}
    {{- end }}
    {{- include "exchange.netpol.prometheusRule" (dict "root" $root "port" (.metricsPort | default "")) | nindent 4 }}
    {{- include "exchange.netpol.kubeletRule" $root | nindent 4 }}
  egress:
    {{- include "exchange.netpol.baseEgress" $root | nindent 4 }}
{{- end -}}
