{{- define "ipool.name" -}}{{ .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}

{{- define "ipool.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "ipool.labels" -}}
app.kubernetes.io/name: {{ include "ipool.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ipool.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ipool.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ipool.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ default (include "ipool.fullname" .) .Values.serviceAccount.name }}
{{- else -}}{{ default "default" .Values.serviceAccount.name }}{{- end -}}
{{- end -}}

{{- /* The Kopf peering name: one per shard (dict root, shard). */ -}}
{{- define "ipool.peeringName" -}}
{{ include "ipool.fullname" .root }}{{ with .shard }}-shard-{{ . }}{{ end }}
{{- end -}}
