# kube-router, run by scripts/cluster in firewall-only mode (--run-firewall, no routing, no
# service proxy) as the cluster's NetworkPolicy enforcer: iptables + ipset in each node's
# network namespace. (sigs.k8s.io/kube-network-policies needs the nftables `queue` expression,
# which this kernel is built without: CONFIG_NFT_QUEUE is not set.)
version() { echo "$KUBE_ROUTER_VERSION"; }
build() {
  CGO_ENABLED=0 GOBIN="$1/bin" go install -trimpath -ldflags "-s -w" "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$KUBE_ROUTER_VERSION"
}
