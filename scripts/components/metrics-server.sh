# metrics-server (sigs.k8s.io/metrics-server): the Metrics API (metrics.k8s.io) that the
# guide's HPA, `kubectl top` and `x0tta6bl4 check` (k8s-metrics-api, controller-hpa) need.
version() { echo "$METRICS_SERVER_VERSION"; }
build() {
  CGO_ENABLED=0 GOBIN="$1/bin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/metrics-server/cmd/metrics-server@$METRICS_SERVER_VERSION"
}
