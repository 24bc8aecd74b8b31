# Prometheus (module github.com/prometheus/prometheus v0.<minor>.<patch> is release
# v3.<minor-300>.<patch>): the binary of the chart's monitoring image
# quay.io/prometheus/prometheus:<tag>, /bin/prometheus. Its go.mod has a replace directive, so
# `go install …@v` refuses: a small module of ours requires it and repeats its replaces. Built
# without the embedded web UI assets; the HTTP API (what the guide and the tests query) is
# complete.
version() { echo "$PROMETHEUS_VERSION"; }
build() {
  local src="$1/src" gomod
  mkdir -p "$src"
  go mod download -json "github.com/prometheus/prometheus@$PROMETHEUS_VERSION" >/dev/null
  gomod="$(go env GOMODCACHE)/github.com/prometheus/prometheus@$PROMETHEUS_VERSION/go.mod"
  {
    echo "module x0tta6bl4.local/prometheus-build"
    echo
    echo "go $(sed -n 's/^go //p' "$gomod")"
    echo
    echo "require github.com/prometheus/prometheus $PROMETHEUS_VERSION"
    echo
    grep '^replace ' "$gomod" || true
  } > "$src/go.mod"
  ( cd "$src" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$1/bin/prometheus" \
      github.com/prometheus/prometheus/cmd/prometheus )
}
