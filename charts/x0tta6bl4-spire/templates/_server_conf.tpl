{{/*
spire.serverConf: the spire-server configuration (HCL).
*/}}
{{- define "spire.serverConf" -}}
{{- $s := index .Values "spire-server" -}}
{{- $g := .Values.global.spire -}}
{{- $sql := $s.dataStore.sql -}}
server {
  bind_address = "0.0.0.0"
  bind_port = "8081"
  socket_path = "{{ include "spire.serverSocketDir" . }}/api.sock"
  trust_domain = {{ $g.trustDomain | quote }}
  data_dir = "/run/spire/data"
  log_level = {{ upper $s.logLevel | quote }}
  log_format = "json"
  ca_key_type = {{ $s.caKeyType | quote }}
  jwt_key_type = {{ $s.caKeyType | quote }}
  ca_ttl = {{ $s.caTTL | quote }}
  default_x509_svid_ttl = {{ $s.defaultX509SvidTTL | quote }}
  default_jwt_svid_ttl = {{ $s.defaultJwtSvidTTL | quote }}
  ca_subject {
    country = ["ZZ"]
    organization = ["x0tta6bl4"]
    common_name = ""
  }
  experimental {
    require_pq_kem = {{ $s.requirePQKEM }}
  }
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = {{ $sql.databaseType | quote }}
      connection_string = {{ include "spire.sqlConnection" . | quote }}
    }
  }
  KeyManager "disk" {
    plugin_data {
      keys_path = "/run/spire/data/keys.json"
    }
  }
  NodeAttestor "k8s_psat" {
    plugin_data {
      clusters = {
        {{ $g.clusterName | quote }} = {
          service_account_allow_list = {{ concat (list (printf "%s:spire-agent" .Release.Namespace)) $s.nodeAttestor.k8sPsat.serviceAccountAllowList | toJson }}
        }
      }
    }
  }
  Notifier "k8sbundle" {
    plugin_data {
      namespace = {{ .Release.Namespace | quote }}
      config_map = {{ $g.bundleConfigMap | quote }}
    }
  }
}
health_checks {
  listener_enabled = true
  bind_address = "0.0.0.0"
  bind_port = "8080"
  live_path = "/live"
  ready_path = "/ready"
}
{{- end -}}

{{/*
spire.controllerManagerConf: the SPIRE controller manager's ControllerManagerConfig.
*/}}
{{- define "spire.controllerManagerConf" -}}
{{- $s := index .Values "spire-server" -}}
{{- $cm := $s.controllerManager -}}
{{- $g := .Values.global.spire -}}
apiVersion: spire.spiffe.io/v1alpha1
kind: ControllerManagerConfig
metrics:
  bindAddress: 127.0.0.1:8082
health:
  healthProbeBindAddress: 0.0.0.0:8083
leaderElection:
  leaderElect: true
  resourceName: x0tta6bl4-spire-controller-manager
  resourceNamespace: {{ .Release.Namespace }}
validatingWebhookConfigurationName: spire-controller-manager-webhook
clusterName: {{ $g.clusterName }}
trustDomain: {{ $g.trustDomain }}
spireServerSocketPath: {{ include "spire.serverSocketDir" . }}/api.sock
logLevel: {{ $s.logLevel }}
ignoreNamespaces: {{ concat (list .Release.Namespace) $cm.ignoreNamespaces | uniq | toJson }}
watchClassless: {{ $cm.watchClassless }}
{{- with $cm.className }}
className: {{ . }}
{{- end }}
entryIDPrefix: {{ printf "x0-%s-" $g.clusterName | trunc 32 }}
{{- end -}}

{{/*
spire.agentConf: the spire-agent configuration (HCL).
*/}}
{{- define "spire.agentConf" -}}
{{- $a := index .Values "spire-agent" -}}
{{- $g := .Values.global.spire -}}
agent {
  data_dir = "/run/spire/data"
  log_level = {{ upper $a.logLevel | quote }}
  log_format = "json"
  server_address = "spire-server.{{ .Release.Namespace }}.svc"
  server_port = "8081"
  socket_path = {{ $a.socketPath | quote }}
  trust_bundle_path = "/run/spire/bundle/bundle.crt"
  trust_domain = {{ $g.trustDomain | quote }}
  retry_bootstrap = true
  experimental {
    sync_interval = {{ $a.syncInterval | quote }}
    require_pq_kem = {{ $a.requirePQKEM }}
  }
}
plugins {
  NodeAttestor "k8s_psat" {
    plugin_data {
      cluster = {{ $g.clusterName | quote }}
      token_path = "/var/run/secrets/tokens/spire-agent"
    }
  }
  KeyManager "memory" {
    plugin_data {}
  }
  WorkloadAttestor "k8s" {
    plugin_data {
      skip_kubelet_verification = {{ $a.skipKubeletVerification }}
      {{- if $a.skipKubeletVerification }}
      # The kubelet at the node's own address (whatever it binds to; no certificate check).
      node_name_env = "MY_NODE_IP"
      {{- else }}
      # The kubelet's certificate names the node: reach it by that name to verify it.
      node_name_env = "MY_NODE_NAME"
      {{- end }}
    }
  }
  WorkloadAttestor "unix" {
    plugin_data {}
  }
}
health_checks {
  listener_enabled = true
  bind_address = "0.0.0.0"
  bind_port = "9982"
  live_path = "/live"
  ready_path = "/ready"
}
{{- end -}}
