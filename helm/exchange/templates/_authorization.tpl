{{/*
Istio AuthorizationPolicies of this release. Callers are identified by their mTLS
identity (STRICT mode): <trustDomain>/ns/<release namespace>/sa/<release>-<service>,
so a release in any namespace, under any name, gets policies naming its own
ServiceAccounts. templates/authorizationpolicy.yaml renders the namespace's default
deny; each workload gets one ALLOW policy:
  services   the callers in `allowedCallers` (gRPC: per method; HTTP: the main
             port), the ingress gateway for the public entry, and health checks
             (plus reflection when it is on) from the namespace
  stores     the services that use them (database.role, redis.enabled)
Kubelet probes do not pass through these rules: Istio rewrites them to the sidecar
agent, which calls the application over localhost. The admin/metrics ports are not
intercepted by the sidecar (chart annotation), so Prometheus needs no rule;
NetworkPolicy limits them to Prometheus.
*/}}

{{/* The mesh identity of a component's ServiceAccount. Context: {root, name}. */}}
{{- define "exchange.principal" -}}
{{- printf "%s/ns/%s/sa/%s" .root.Values.istio.trustDomain .root.Release.Namespace (include "exchange.componentName" .) -}}
{{- end -}}

{{/* The mesh ingress gateway's identity. Context: root. */}}
{{- define "exchange.ingressPrincipal" -}}
{{- $ing := .Values.istio.ingress -}}
{{- printf "%s/ns/%s/sa/%s" .Values.istio.trustDomain $ing.namespace $ing.serviceAccount -}}
{{- end -}}

{{/* Metadata and selector of a component's policy. Context: {root, name}. */}}
{{- define "exchange.authz.head" -}}
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: {{ include "exchange.componentName" . }}
  labels:
    {{- include "exchange.labels" . | nindent 4 }}
spec:
  selector:
    matchLabels:
      {{- include "exchange.selectorLabels" . | nindent 6 }}
  action: ALLOW
{{- end -}}

{{/* ALLOW policy of an application service. Context: {root, name, svc}. */}}
{{- define "exchange.authorizationPolicy" -}}
{{ include "exchange.authz.head" . }}
  {{- $rules := include "exchange.authz.serviceRules" . }}
  rules: {{- if trim $rules }}{{ $rules | nindent 4 }}{{ else }} []{{ end }}
{{- end -}}

{{/* The rules of an application service's policy (a YAML list, or nothing). Context: {root, name, svc}. */}}
{{- define "exchange.authz.serviceRules" -}}
{{- $root := .root -}}
{{- $svc := .svc -}}
{{- $main := include "exchange.mainPort" $svc -}}
{{- $port := index $svc.ports $main -}}
{{- $api := $svc.health.grpcService -}}
{{- if $svc.ingress }}
# the mesh ingress gateway (the public entry)
- from:
    - source:
        principals: [{{ include "exchange.ingressPrincipal" $root | quote }}]
  to:
    - operation:
        ports: [{{ $port | quote }}]
{{- end }}
{{- if and (eq .name "gateway") (include "exchange.releaseGate.on" $root) }}
# release-gate -> gateway (the gate's load during an analysis)
- from:
    - source:
        principals: [{{ include "exchange.principal" (dict "root" $root "name" "release-gate") | quote }}]
  to:
    - operation:
        ports: [{{ $port | quote }}]
{{- end }}
{{- $jobs := list }}
{{- range $j := include "exchange.jobs" $root | fromYamlArray }}{{ $jobs = append $jobs $j.name }}{{ end }}
{{- $anyJob := list }}
{{- range $name, $own := $root.Values.services }}{{ range $job, $_ := ($own.jobs | default dict) }}{{ $anyJob = append $anyJob (printf "%s-%s" $name $job) }}{{ end }}{{ end }}
{{- range $caller, $methods := $svc.allowedCallers }}
{{- $callerCtx := dict "root" $root "name" $caller }}
{{- $isJob := has $caller $jobs }}
{{- if and (not (index $root.Values.services $caller)) (not (has $caller $anyJob)) }}
{{- fail (printf "services.%s.allowedCallers names %s, which is not a service or a job (<service>-<job>)" $.name $caller) }}
{{- end }}
{{- if or $isJob (and (index $root.Values.services $caller) (include "exchange.enabled" $callerCtx)) }}
# {{ $caller }}{{ if $isJob }} (a CronJob){{ end }} -> {{ $.name }}
- from:
    - source:
        principals: [{{ include "exchange.principal" $callerCtx | quote }}]
  to:
    - operation:
        {{- if eq $main "grpc" }}
        {{- if not $api }}
        {{- fail (printf "services.%s.allowedCallers needs health.grpcService (the gRPC API the methods belong to)" $.name) }}
        {{- end }}
        paths:
          {{- range $methods }}
          - {{ printf "/%s/%s" $api . | quote }}
          {{- end }}
        {{- else }}
        {{- if ne (toJson $methods) "[\"*\"]" }}
        {{- fail (printf "services.%s.allowedCallers.%s: an HTTP service is allowed by port, so only [\"*\"]" $.name $caller) }}
        {{- end }}
        ports: [{{ $port | quote }}]
        {{- end }}
{{- end }}
{{- end }}
{{- if eq $main "grpc" }}
# health checks (grpcurl, debugging) from the namespace
- from:
    - source:
        namespaces: [{{ $root.Release.Namespace | quote }}]
  to:
    - operation:
        paths:
          - /grpc.health.v1.Health/*
          - /grpc.reflection.v1.ServerReflection/*
          - /grpc.reflection.v1alpha.ServerReflection/*
{{- end }}
{{- end -}}

{{/* ALLOW policy of a data store: its users, on its port. Context: {root, name, port, users}. */}}
{{- define "exchange.storeAuthorizationPolicy" -}}
{{- $root := .root -}}
{{ include "exchange.authz.head" . }}
  {{- if not .users }}
  rules: []
  {{- else }}
  rules:
    - from:
        - source:
            principals:
              {{- range .users }}
              - {{ include "exchange.principal" (dict "root" $root "name" .) | quote }}
              {{- end }}
      to:
        - operation:
            ports: [{{ .port | quote }}]
  {{- end }}
{{- end -}}
