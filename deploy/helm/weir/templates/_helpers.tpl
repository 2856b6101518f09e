{{/* Names: the release name when it already says weir, else <release>-weir. */}}
{{- define "weir.fullname" -}}
{{- if contains "weir" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-weir" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "weir.labels" -}}
app.kubernetes.io/part-of: weir
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "weir.image" -}}
{{- $ := index . 0 -}}
{{- printf "%s/%s:%s" $.Values.image.hub (index . 1) (default $.Chart.AppVersion $.Values.image.tag) -}}
{{- end -}}

{{/* CNI directories: explicit values, else the profile's, else the kubeadm defaults. */}}
{{- define "weir.cniBinDir" -}}
{{- $profiles := dict "k3s" "/var/lib/rancher/k3s/data/current/bin" "gke" "/home/kubernetes/bin" -}}
{{- .Values.cni.binDir | default (get $profiles .Values.profile) | default "/opt/cni/bin" -}}
{{- end -}}
{{- define "weir.cniConfDir" -}}
{{- $profiles := dict "k3s" "/var/lib/rancher/k3s/agent/etc/cni/net.d" -}}
{{- .Values.cni.confDir | default (get $profiles .Values.profile) | default "/etc/cni/net.d" -}}
{{- end -}}
{{- define "weir.cniNetnsDir" -}}
{{- $profiles := dict "minikube" "/var/run/docker/netns" -}}
{{- .Values.cni.netnsDir | default (get $profiles .Values.profile) | default "/var/run/netns" -}}
{{- end -}}

{{- define "weir.excludedNamespaces" -}}
{{- concat .Values.excludedNamespaces (list .Release.Namespace) | uniq | join "," -}}
{{- end -}}
