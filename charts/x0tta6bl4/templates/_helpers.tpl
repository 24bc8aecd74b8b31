{{/*
Helpers of the x0tta6bl4 chart. Every helper is namespaced "x0tta6bl4." and says what it
returns and how to call it. Object names are fixed by docs/runtime-contract.md, so no helper
derives names from the release name.
*/}}

{{/*
x0tta6bl4.chart: "name-version" for the helm.sh/chart label.
Usage: {{ include "x0tta6bl4.chart" . }}
*/}}
{{- define "x0tta6bl4.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
x0tta6bl4.labels: the common labels of every object, plus app.kubernetes.io/component.
Selector labels are NOT in here: they stay minimal and stable (see x0tta6bl4.selectorLabels).
Usage: {{ include "x0tta6bl4.labels" (dict "ctx" $ "component" "controller") | nindent 4 }}
*/}}
{{- define "x0tta6bl4.labels" -}}
helm.sh/chart: {{ include "x0tta6bl4.chart" .ctx }}
app.kubernetes.io/name: x0tta6bl4
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: x0tta6bl4
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{/*
x0tta6bl4.selectorLabels: the immutable selector of a workload: only `app: <app>`, the label
the guide's NetworkPolicies and anti-affinity select on.
Usage: {{ include "x0tta6bl4.selectorLabels" "x0tta6bl4-controller" | nindent 6 }}
*/}}
{{- define "x0tta6bl4.selectorLabels" -}}
app: {{ . }}
{{- end -}}

{{/*
x0tta6bl4.image: "repository:tag" of the x0tta6bl4 image; the tag defaults to "v" + appVersion.
Usage: {{ include "x0tta6bl4.image" . }}
*/}}
{{- define "x0tta6bl4.image" -}}
{{- $img := .Values.x0tta6bl4.image -}}
{{- printf "%s:%s" $img.repository (default (printf "v%s" .Chart.AppVersion) $img.tag) -}}
{{- end -}}

{{/*
x0tta6bl4.podSecurityContext: the pod security context of every x0tta6bl4 pod (UID/GID 65532,
the Dockerfile's USER; seccomp RuntimeDefault).
Usage: {{ include "x0tta6bl4.podSecurityContext" . | nindent 8 }}
*/}}
{{- define "x0tta6bl4.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
x0tta6bl4.containerSecurityContext: a restricted container security context: no privilege
escalation, read-only root filesystem, all capabilities dropped.
Usage: {{ include "x0tta6bl4.containerSecurityContext" . | nindent 12 }}
*/}}
{{- define "x0tta6bl4.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
{{- end -}}

{{/*
x0tta6bl4.storeTLS: "true" when the controllers reach etcd over TLS with a client certificate
(always for the chart's etcd; store.external.tls for an external one), else "".
Usage: {{ if include "x0tta6bl4.storeTLS" . }}...{{ end }}
*/}}
{{- define "x0tta6bl4.storeTLS" -}}
{{- $store := .Values.x0tta6bl4.store -}}
{{- if or (eq $store.mode "etcd") (and (eq $store.mode "external") $store.external.tls) -}}
true
{{- end -}}
{{- end -}}

{{/*
x0tta6bl4.storeURL: the controller's --store URL for the configured store mode:
etcds://member-0.x0tta6bl4-etcd:2379,... for the chart's etcd (TLS), etcds:// (or etcd://
without TLS) with the endpoints of an external etcd, sqlite:////var/lib/x0tta6bl4/controller.db
for SQLite.
Usage: {{ include "x0tta6bl4.storeURL" . }}
*/}}
{{- define "x0tta6bl4.storeURL" -}}
{{- $store := .Values.x0tta6bl4.store -}}
{{- $scheme := ternary "etcds" "etcd" (eq (include "x0tta6bl4.storeTLS" .) "true") -}}
{{- if eq $store.mode "etcd" -}}
{{- $members := list -}}
{{- range $i := until (int $store.etcd.replicas) -}}
{{- $members = append $members (printf "x0tta6bl4-etcd-%d.x0tta6bl4-etcd:2379" $i) -}}
{{- end -}}
{{- printf "%s://%s" $scheme (join "," $members) -}}
{{- else if eq $store.mode "external" -}}
{{- printf "%s://%s" $scheme (join "," $store.external.endpoints) -}}
{{- else -}}
sqlite:////var/lib/x0tta6bl4/controller.db
{{- end -}}
{{- end -}}

{{/*
x0tta6bl4.controllerSpiffeId: the controller's SPIFFE ID, as its ClusterSPIFFEID names it
(spiffe://<td>/ns/<namespace>/sa/x0tta6bl4-app/controller): what mesh nodes and the check pod
require the controller's TLS certificate to name (X0_CONTROLLER_SPIFFE_ID).
Usage: {{ include "x0tta6bl4.controllerSpiffeId" . }}
*/}}
{{- define "x0tta6bl4.controllerSpiffeId" -}}
{{- printf "spiffe://%s/ns/%s/sa/x0tta6bl4-app/controller" .Values.x0tta6bl4.spiffe.trustDomain .Release.Namespace -}}
{{- end -}}

{{/*
x0tta6bl4.nodeIdMapping: the controller's node ID mapping (X0_NODE_ID_MAPPING): the value
x0tta6bl4.controller.nodeIdMapping, or by default "spiffe://<td>/" + "**" + "/node/{node}"
(written apart here: a star and a slash would end this comment), which binds each mesh node's
SPIFFE ID (…/node/<Kubernetes node>, its ClusterSPIFFEID) to its node ID.
Usage: {{ include "x0tta6bl4.nodeIdMapping" . }}
*/}}
{{- define "x0tta6bl4.nodeIdMapping" -}}
{{- .Values.x0tta6bl4.controller.nodeIdMapping | default (printf "spiffe://%s/**/node/{node}" .Values.x0tta6bl4.spiffe.trustDomain) -}}
{{- end -}}

{{/*
x0tta6bl4.spiffeSocketPath: the SPIRE agent socket path inside the pods (X0_SPIFFE_SOCKET).
Usage: {{ include "x0tta6bl4.spiffeSocketPath" . }}
*/}}
{{- define "x0tta6bl4.spiffeSocketPath" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.x0tta6bl4.spiffe.socketDir) .Values.x0tta6bl4.spiffe.socketName -}}
{{- end -}}

{{/*
x0tta6bl4.spiffeVolume: the volume holding the SPIRE agent socket (CSI driver csi.spiffe.io
or a hostPath directory), named spire-agent-socket.
Usage: {{ include "x0tta6bl4.spiffeVolume" . | nindent 8 }}
*/}}
{{- define "x0tta6bl4.spiffeVolume" -}}
- name: spire-agent-socket
{{- if eq .Values.x0tta6bl4.spiffe.socketVolume "csi" }}
  csi:
    driver: csi.spiffe.io
    readOnly: true
{{- else }}
  hostPath:
    path: {{ .Values.x0tta6bl4.spiffe.socketDir }}
    type: Directory
{{- end }}
{{- end -}}

{{/*
x0tta6bl4.commonEnv: environment shared by controller and mesh node containers: state dir,
trust domain, SPIFFE socket (when spiffe is on), log format and level.
Usage: {{ include "x0tta6bl4.commonEnv" . | nindent 12 }}
*/}}
{{- define "x0tta6bl4.commonEnv" -}}
- name: X0_STATE_DIR
  value: /var/lib/x0tta6bl4
- name: X0_TRUST_DOMAIN
  value: {{ .Values.x0tta6bl4.spiffe.trustDomain | quote }}
{{- if .Values.x0tta6bl4.spiffe.enabled }}
- name: X0_SPIFFE_SOCKET
  value: {{ include "x0tta6bl4.spiffeSocketPath" . | quote }}
{{- end }}
- name: X0_LOG_FORMAT
  value: {{ .Values.x0tta6bl4.logging.format | quote }}
- name: X0_LOG_LEVEL
  value: {{ .Values.x0tta6bl4.logging.level | quote }}
{{- end -}}

{{/*
x0tta6bl4.monitoringNamespaceSelector: a namespaceSelector matching the monitoring namespace.
Usage: {{ include "x0tta6bl4.monitoringNamespaceSelector" . | nindent 12 }}
*/}}
{{- define "x0tta6bl4.monitoringNamespaceSelector" -}}
matchLabels:
  kubernetes.io/metadata.name: {{ .Values.monitoring.namespace }}
{{- end -}}
