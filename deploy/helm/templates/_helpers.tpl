{{/* The release's full name: the StatefulSet, the headless Service and the pods' prefix. */}}
{{- define "netsy.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "netsy.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "netsy.labels" -}}
{{ include "netsy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "netsy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "netsy.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The CA Issuer that signs every member and client certificate. */}}
{{- define "netsy.caIssuer" -}}
{{- printf "%s-ca" (include "netsy.fullname" .) -}}
{{- end -}}

{{/* The headless Service's domain: <pod>.<this> is a pod's address. */}}
{{- define "netsy.peerDomain" -}}
{{- printf "%s.%s.svc.%s" (include "netsy.fullname" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{- define "netsy.meshSecret" -}}
{{- default (printf "%s-mesh" (include "netsy.fullname" .)) .Values.mesh.existingSecret -}}
{{- end -}}
