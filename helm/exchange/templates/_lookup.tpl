{{/*
The one place the chart reads a Secret from the cluster (Helm's `lookup`), for the
checksum/secrets annotation (exchange.secretsChecksum). Renders {uid, data} of
Secret .name in the release's namespace, or nothing: under `helm template`, Argo
CD, `helm lint` and a client-side dry run, lookup finds nothing. (The offline check
replaces this file with a stand-in that reads Secrets from a file, so it must stay
this one definition; scripts/lib/check-k8s.sh.) Context: {root, name}.
*/}}
{{- define "exchange.lookupSecret" -}}
{{- $s := lookup "v1" "Secret" .root.Release.Namespace .name -}}
{{- if $s -}}
{{- toYaml (dict "uid" ($s.metadata.uid | default "") "data" ($s.data | default dict)) -}}
{{- end -}}
{{- end -}}
