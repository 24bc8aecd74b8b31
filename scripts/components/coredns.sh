# CoreDNS, the cluster DNS of scripts/cluster (Deployment coredns, Service kube-dns).
version() { echo "$COREDNS_VERSION"; }
build() {
  CGO_ENABLED=0 GOBIN="$1/bin" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
}
