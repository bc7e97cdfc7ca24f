{{/*
The release gate (values releaseGate; templates/release-gate.yaml and
release-gate-job.yaml; the program is files/release_gate.py).
*/}}

{{/* "true" when the gate's standing objects are rendered (it needs Istio). Context: root. */}}
{{- define "exchange.releaseGate.on" -}}
{{- if and .Values.releaseGate.enabled .Values.istio.enabled -}}true{{- end -}}
{{- end -}}

{{/* The candidate Deployment each routed service would have as a canary (<component>-canary), as a YAML list: what the gate may scale to zero. Context: root. */}}
{{- define "exchange.releaseGate.candidates" -}}
{{- $root := . -}}
{{- $out := list -}}
{{- range $name, $_ := $root.Values.services -}}
{{- $ctx := dict "root" $root "name" $name -}}
{{- if include "exchange.enabled" $ctx -}}
{{- $svc := include "exchange.svc" $ctx | fromYaml -}}
{{- if has (include "exchange.mainPort" $svc) $svc.servicePorts -}}
{{- $out = append $out (include "exchange.workloadName" (merge (dict "track" (dict "suffix" "canary")) $ctx)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* The VirtualServices of this release (each routed service's, and the ingress one), as a YAML list. Context: root. */}}
{{- define "exchange.releaseGate.virtualServices" -}}
{{- $root := . -}}
{{- $out := list -}}
{{- range $name, $_ := $root.Values.services -}}
{{- $ctx := dict "root" $root "name" $name -}}
{{- if include "exchange.enabled" $ctx -}}
{{- $svc := include "exchange.svc" $ctx | fromYaml -}}
{{- if has (include "exchange.mainPort" $svc) $svc.servicePorts -}}
{{- $out = append $out (include "exchange.componentName" $ctx) -}}
{{- if $svc.ingress -}}
{{- $out = append $out (printf "%s-ingress" (include "exchange.componentName" $ctx)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/*
What one analysis run looks at, as YAML: app, workload (the analysed Deployment),
version, virtualServices, and per mode: pin (canary header NAME=VALUE), from/to
colors and preview (NAME=VALUE), checks (the most checks the run can take).
Fails with a clear message when the service is not deployed in that strategy.
Context: root.
*/}}
{{- define "exchange.releaseGate.target" -}}
{{- $g := .Values.releaseGate -}}
{{- $name := required "releaseGate.run.service is required: the service to analyse" $g.run.service -}}
{{- $ctx := dict "root" . "name" $name -}}
{{- if not (include "exchange.enabled" $ctx) -}}
{{- fail (printf "releaseGate.run.service: %s is not an enabled service" $name) -}}
{{- end -}}
{{- $svc := include "exchange.svc" $ctx | fromYaml -}}
{{- $component := include "exchange.componentName" $ctx -}}
{{- $a := $g.analysis -}}
app: {{ $name }}
virtualServices: {{ $component }}{{ if $svc.ingress }},{{ $component }}-ingress{{ end }}
{{- if eq $g.run.mode "canary" }}
{{- if or (ne $svc.strategy "canary") (not $svc.canary.candidate.enabled) }}
{{- fail (printf "releaseGate.run: %s is not deployed as a canary with its candidate enabled (services.%s.strategy=canary)" $name $name) }}
{{- end }}
{{- if eq (toString $svc.canary.candidate.replicas) "0" }}
{{- fail (printf "releaseGate.run: the candidate of %s is scaled to zero (services.%s.canary.candidate.replicas=0: an earlier analysis failed); there is nothing to analyse. Start it again first: scripts/deploy canary, or helm upgrade --reuse-values --set services.%s.canary.candidate.replicas=1" $name $name $name) }}
{{- end }}
{{- $prev := 0 }}
{{- range $g.canary.steps }}
{{- if le (int .) $prev }}
{{- fail (printf "releaseGate.canary.steps must rise (each weight above the one before): %v" $g.canary.steps) }}
{{- end }}
{{- $prev = int . }}
{{- end }}
workload: {{ printf "%s-canary" $component | trunc 63 | trimSuffix "-" }}
version: {{ $svc.canary.candidate.version | quote }}
pin: {{ printf "%s=%s" $svc.canary.header.name $svc.canary.header.value | quote }}
checks: {{ add (mul (len $g.canary.steps) (int $g.canary.samples)) (int $a.threshold) }}
{{- else }}
{{- $b := $svc.bluegreen }}
{{- if ne $svc.strategy "bluegreen" }}
{{- fail (printf "releaseGate.run: %s is not deployed blue/green (services.%s.strategy=bluegreen)" $name $name) }}
{{- end }}
{{- $to := required "releaseGate.run.to is required for blue/green: the color to make live" $g.run.to }}
{{- if eq $to $b.live }}
{{- fail (printf "releaseGate.run.to: %s is already live" $to) }}
{{- end }}
{{- if not $b.preview.enabled }}
{{- fail (printf "services.%s.bluegreen.preview.enabled is off: the idle color cannot be analysed before the switch" $name) }}
{{- end }}
workload: {{ ternary $component (printf "%s-%s" $component $to | trunc 63 | trimSuffix "-") (eq $to "blue") }}
version: {{ (index $b.colors $to).version | quote }}
from: {{ $b.live }}
to: {{ $to }}
preview: {{ printf "%s=%s" $b.preview.header.name $b.preview.header.value | quote }}
checks: {{ add (int $g.bluegreen.preSamples) (int $g.bluegreen.bakeSamples) (mul 2 (int $a.threshold)) }}
{{- end }}
{{- end -}}
