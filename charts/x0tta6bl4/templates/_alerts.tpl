{{/*
x0tta6bl4.alertGroups: the alert rule groups (Prometheus rule-file "groups:" list) written on
the metrics the controller and nodes export (docs/metrics.md). Used by the chart's Prometheus
(rule file in its ConfigMap) and by the PrometheusRule of operator mode.
Usage: {{ include "x0tta6bl4.alertGroups" . | nindent 4 }}
*/}}
{{- define "x0tta6bl4.alertGroups" -}}
- name: x0tta6bl4-controller
  rules:
    - alert: X0tta6bl4ControllerDown
      expr: up{app="x0tta6bl4-controller"} == 0
      for: 2m
      labels:
        severity: critical
      annotations:
        summary: "x0tta6bl4 controller {{ "{{ $labels.pod }}" }} is not scrapeable"
        description: "Prometheus cannot scrape /metrics of a controller pod for 2 minutes."
    - alert: X0tta6bl4StoreDown
      expr: max by (pod) (x0tta6bl4_store_up) == 0
      for: 1m
      labels:
        severity: critical
      annotations:
        summary: "Controller {{ "{{ $labels.pod }}" }} cannot reach its store"
        description: "x0tta6bl4_store_up is 0: etcd (or the SQLite file) is unreachable; /ready fails."
    - alert: X0tta6bl4NoMeshNodes
      expr: max(x0tta6bl4_mesh_nodes_total) == 0
      for: 5m
      labels:
        severity: warning
      annotations:
        summary: "No mesh node is registered with the controller"
        description: "x0tta6bl4_mesh_nodes_total has been 0 for 5 minutes."
    - alert: X0tta6bl4ApiErrors
      expr: sum(rate(x0tta6bl4_api_requests_total{status=~"5.."}[5m])) / sum(rate(x0tta6bl4_api_requests_total[5m])) > 0.05
      for: 10m
      labels:
        severity: warning
      annotations:
        summary: "More than 5% of controller API requests fail with 5xx"
        description: "Share of 5xx responses in x0tta6bl4_api_requests_total over 5 minutes."
    - alert: X0tta6bl4ApiSlow
      expr: histogram_quantile(0.95, sum by (le) (rate(x0tta6bl4_api_request_duration_seconds_bucket[5m]))) > 0.1
      for: 10m
      labels:
        severity: warning
      annotations:
        summary: "Controller API p95 latency is above the 100 ms target"
        description: "p95 of x0tta6bl4_api_request_duration_seconds over 5 minutes."
- name: x0tta6bl4-mesh-node
  rules:
    - alert: X0tta6bl4MeshNodeDown
      expr: up{app="x0tta6bl4-mesh"} == 0
      for: 2m
      labels:
        severity: warning
      annotations:
        summary: "Mesh node {{ "{{ $labels.pod }}" }} is not scrapeable"
        description: "Prometheus cannot scrape /metrics of a mesh node pod for 2 minutes."
    - alert: X0tta6bl4MeshNodeIsolated
      expr: sum by (pod) (x0tta6bl4_node_links{state="up"}) == 0 and on () max(x0tta6bl4_mesh_nodes_total) > 1
      for: 5m
      labels:
        severity: critical
      annotations:
        summary: "Mesh node {{ "{{ $labels.pod }}" }} has no link up"
        description: "x0tta6bl4_node_links{state=\"up\"} is 0 while other nodes are registered."
    - alert: X0tta6bl4LinkFlapping
      expr: increase(x0tta6bl4_node_link_down_events_total[15m]) > 10
      labels:
        severity: warning
      annotations:
        summary: "Links of mesh node {{ "{{ $labels.pod }}" }} flap"
        description: "More than 10 link-down events in 15 minutes."
    - alert: X0tta6bl4HandshakeFailures
      expr: sum by (pod) (rate(x0tta6bl4_node_handshakes_total{result!="ok"}[5m])) > 0.1
      for: 10m
      labels:
        severity: warning
      annotations:
        summary: "Mesh node {{ "{{ $labels.pod }}" }} has failing PQ handshakes"
        description: "x0tta6bl4_node_handshakes_total with a result other than ok."
    - alert: X0tta6bl4PqSvidExpiringSoon
      expr: (x0tta6bl4_node_pq_svid_expiry_timestamp_seconds - time()) < 300
      labels:
        severity: critical
      annotations:
        summary: "PQ SVID of mesh node {{ "{{ $labels.pod }}" }} expires within 5 minutes"
        description: "Rotation did not happen; the node will lose its links at expiry."
    - alert: X0tta6bl4PacketDrops
      expr: sum by (pod, reason) (rate(x0tta6bl4_node_packets_dropped_total[5m])) > 10
      for: 10m
      labels:
        severity: warning
      annotations:
        summary: "Mesh node {{ "{{ $labels.pod }}" }} drops packets ({{ "{{ $labels.reason }}" }})"
        description: "x0tta6bl4_node_packets_dropped_total above 10/s."
    - alert: X0tta6bl4NoRoutes
      expr: x0tta6bl4_node_route_count == 0 and on () max(x0tta6bl4_mesh_nodes_total) > 1
      for: 5m
      labels:
        severity: warning
      annotations:
        summary: "Mesh node {{ "{{ $labels.pod }}" }} has no route"
        description: "x0tta6bl4_node_route_count is 0 while other nodes are registered."
    - alert: X0tta6bl4AdvertStorm
      expr: sum by (pod) (rate(x0tta6bl4_node_routing_events_total{event="originated"}[10m])) > 0.2
      for: 15m
      labels:
        severity: warning
      annotations:
        summary: "Mesh node {{ "{{ $labels.pod }}" }} re-signs its link-state advert every few seconds"
        description: "x0tta6bl4_node_routing_events_total{event=\"originated\"} above 0.2/s (a quiet node: one per 30 s refresh): flapping links or moving costs; every advert is verified by every node."
{{- end -}}
