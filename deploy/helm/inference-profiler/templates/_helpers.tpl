{{/* The chart's name, or nameOverride. */}}
{{- define "inference-profiler.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object names: the release name where it already holds the chart's name (helm install inference-profiler ...). */}}
{{- define "inference-profiler.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The labels kustomize's base also sets, which dashboards and relabelings rely on. */}}
{{- define "inference-profiler.selectorLabels" -}}
app.kubernetes.io/name: {{ include "inference-profiler.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "inference-profiler.labels" -}}
{{ include "inference-profiler.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "inference-profiler.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "inference-profiler.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* One scrape endpoint, the same for the ServiceMonitor and the PodMonitor: job, node and
ebpf_expected as prometheus/prometheus-kubernetes.yml sets them. */}}
{{- define "inference-profiler.endpoint" -}}
- port: metrics
  honorLabels: {{ .honorLabels }}
  interval: {{ .interval }}
  scrapeTimeout: {{ .scrapeTimeout }}
  relabelings:
    - targetLabel: job
      replacement: inference-profiler
    - sourceLabels: [__meta_kubernetes_pod_node_name]
      targetLabel: node
    - sourceLabels: [__meta_kubernetes_pod_label_inference_profiler_ebpf]
      regex: "|expected"
      targetLabel: ebpf_expected
      replacement: "true"
    {{- with .relabelings }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}
