# The pod sandbox ("pause") binary, compiled statically from build/pause/linux/pause.c of the
# same k8s.io/kubernetes module as the other Kubernetes binaries.
version() { echo "$KUBERNETES_VERSION"; }
build() {
  go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" >/dev/null
  cc -Os -static -DVERSION="$KUBERNETES_VERSION" -o "$1/bin/pause" \
    "$(go env GOMODCACHE)/k8s.io/kubernetes@$KUBERNETES_VERSION/build/pause/linux/pause.c"
  strip "$1/bin/pause"
}
