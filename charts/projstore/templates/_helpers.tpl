{{- define "projstore.labels" -}}
app.kubernetes.io/name: projstore
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "projstore.controllerSelector" -}}
app.kubernetes.io/name: projstore
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "projstore.agentSelector" -}}
app.kubernetes.io/name: projstore
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "projstore.controllerImage" -}}
{{ .Values.image.controller.repository }}:{{ .Values.image.controller.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "projstore.agentImage" -}}
{{ .Values.image.agent.repository }}:{{ .Values.image.agent.tag | default .Chart.AppVersion }}
{{- end -}}


{{- define "projstore.agentTlsSecretName" -}}
{{- .Values.agent.tls.existingSecret | default (printf "%s-projstore-agent-tls" .Release.Name) -}}
{{- end -}}

{{- /* A storage node's own TLS Secret: (list $ node). */ -}}
{{- define "projstore.agentNodeTlsSecretName" -}}
{{- printf "%s-projstore-agent-tls-%s" (index . 0).Release.Name (index . 1) -}}
{{- end -}}
