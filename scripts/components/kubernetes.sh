# Kubernetes' own binaries — kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
# kube-proxy — built from the k8s.io/kubernetes module. Its go.mod replaces every k8s.io staging
# module with a path inside its own tree, so `go install k8s.io/kubernetes/cmd/...@v` refuses;
# instead a small module of ours requires it and pins each staging module at the matching
# v0.<minor>.<patch> release (what upstream publishes them as).
version() { echo "$KUBERNETES_VERSION"; }
build() {
  local dest="$1" src="$1/src" v="$KUBERNETES_VERSION" staging
  staging="v0.${v#v1.}"
  mkdir -p "$src"
  go mod download -json "k8s.io/kubernetes@$v" >/dev/null
  local kmod
  kmod="$(go env GOMODCACHE)/k8s.io/kubernetes@$v/go.mod"
  {
    echo "module x0tta6bl4.local/kubernetes-build"
    echo
    echo "go $(sed -n 's/^go //p' "$kmod")"
    echo
    echo "require k8s.io/kubernetes $v"
    echo
    echo "replace ("
    sed -n 's#^\t\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\t\1 => \1 '"$staging"'#p' "$kmod"
    echo ")"
  } > "$src/go.mod"
  local pkg="k8s.io/component-base/version" cgo="k8s.io/client-go/pkg/version" ld date
  date="$(date -u +%FT%TZ)"
  ld="-s -w"
  for p in "$pkg" "$cgo"; do
    ld="$ld -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$(echo "$v" | cut -d. -f2)"
    ld="$ld -X $p.gitTreeState=clean -X $p.buildDate=$date"
  done
  ( cd "$src" && go mod download k8s.io/kubernetes \
      && CGO_ENABLED=0 go build -trimpath -ldflags "$ld" -o "$dest/bin/" \
        k8s.io/kubernetes/cmd/kube-apiserver \
        k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler \
        k8s.io/kubernetes/cmd/kubelet \
        k8s.io/kubernetes/cmd/kube-proxy )
}
