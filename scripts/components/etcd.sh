# etcd and etcdctl from go.etcd.io/etcd (server/v3 and etcdctl/v3, whose go.mods replace their
# sibling modules with ../ paths): the control plane's store, and the binary of the chart's
# etcd image (registry.k8s.io/etcd:<tag>, /usr/local/bin/etcd).
version() { echo "$ETCD_VERSION"; }
build() {
  . "$(dirname "${BASH_SOURCE[0]}")/gomod.lib"
  gomod_with_siblings "$1/src/server" go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "$ETCD_VERSION"
  gomod_with_siblings "$1/src/etcdctl" go.etcd.io/etcd/etcdctl/v3 "$ETCD_VERSION" "$ETCD_VERSION"
  ( cd "$1/src/server" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$1/bin/etcd" go.etcd.io/etcd/server/v3 )
  ( cd "$1/src/etcdctl" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$1/bin/etcdctl" go.etcd.io/etcd/etcdctl/v3 )
}
