{{/* This repository (the root Application's own source; argocd/root.yaml passes it). */}}
{{- define "gitops.repoURL" -}}
{{- required "repoURL: set by argocd/root.yaml ($ARGOCD_APP_SOURCE_REPO_URL)" .Values.repoURL -}}
{{- end -}}
{{- define "gitops.targetRevision" -}}
{{- required "targetRevision: set by argocd/root.yaml ($ARGOCD_APP_SOURCE_TARGET_REVISION)" .Values.targetRevision -}}
{{- end -}}

{{/* metadata of a child Application. Context: {name, wave, role, labels (optional)}. */}}
{{- define "gitops.metadata" -}}
metadata:
  name: {{ .name }}
  namespace: argocd
  labels:
    app.kubernetes.io/part-of: exchange-gitops
    exchange.dev/role: {{ .role }}
    {{- with .labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    argocd.argoproj.io/sync-wave: {{ .wave | quote }}
  # Removing a child from this chart deletes what it deployed.
  finalizers:
    - resources-finalizer.argocd.argoproj.io
{{- end -}}

{{/* The second source of a multi-source add-on: this repository, for $values/... */}}
{{- define "gitops.valuesSource" -}}
- repoURL: {{ include "gitops.repoURL" . }}
  targetRevision: {{ include "gitops.targetRevision" . }}
  ref: values
{{- end -}}

{{/* Automated sync with self-heal, and a retry for add-ons waiting on CRDs or Istio. */}}
{{- define "gitops.automated" -}}
automated:
  prune: true
  selfHeal: true
retry:
  limit: 10
  backoff:
    duration: 10s
    factor: 2
    maxDuration: 5m
{{- end -}}
