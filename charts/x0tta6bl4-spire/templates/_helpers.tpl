{{/*
Helpers of the x0tta6bl4-spire chart. Object names are fixed (spire-server, spire-agent,
spire-bundle, …) as the guide and `x0tta6bl4 check` name them; nothing derives from the
release name.
*/}}

{{/*
spire.labels: common labels plus app.kubernetes.io/component.
Usage: {{ include "spire.labels" (dict "ctx" $ "component" "server") | nindent 4 }}
*/}}
{{- define "spire.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" | trunc 63 }}
app.kubernetes.io/name: spire
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: x0tta6bl4
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
spire.image: "registry/repository:tag" of an image block; an empty tag is the chart's
appVersion.
Usage: {{ include "spire.image" (dict "image" $s.image "ctx" $) }}
*/}}
{{- define "spire.image" -}}
{{- $tag := default .ctx.Chart.AppVersion .image.tag -}}
{{- if .image.registry -}}
{{- printf "%s/%s:%s" .image.registry .image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
spire.serverSocketDir: the directory of spire-server's admin API socket, shared with the
controller manager in the same pod.
*/}}
{{- define "spire.serverSocketDir" -}}/tmp/spire-server/private{{- end -}}

{{/*
spire.agentSocketDir: the directory of the agent's Workload API socket on the node.
*/}}
{{- define "spire.agentSocketDir" -}}
{{- dir (index .Values "spire-agent" "socketPath") -}}
{{- end -}}

{{/*
spire.containerSecurity: a container that needs no privilege at all.
*/}}
{{- define "spire.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/*
spire.sqlConnection: the datastore connection string (the password, when it comes from a
Secret, is the ${DBPW} environment variable: the server runs with -expandEnv).
*/}}
{{- define "spire.sqlConnection" -}}
{{- $sql := index .Values "spire-server" "dataStore" "sql" -}}
{{- $pw := ternary "${DBPW}" $sql.password $sql.externalSecret.enabled -}}
{{- if eq $sql.databaseType "sqlite3" -}}
/run/spire/data/datastore.sqlite3
{{- else if eq $sql.databaseType "postgres" -}}
{{- $opts := join " " $sql.options -}}
{{- printf "dbname=%s user=%s password=%s host=%s port=%d %s" $sql.databaseName $sql.username $pw $sql.host (int (default 5432 $sql.port)) $opts | trim -}}
{{- else -}}
{{- $opts := ternary (printf "?%s" (join "&" $sql.options)) "" (gt (len $sql.options) 0) -}}
{{- printf "%s:%s@tcp(%s:%d)/%s%s" $sql.username $pw $sql.host (int (default 3306 $sql.port)) $sql.databaseName $opts -}}
{{- end -}}
{{- end -}}
