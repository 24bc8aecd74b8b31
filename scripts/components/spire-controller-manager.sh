# spire-controller-manager from github.com/spiffe/spire-controller-manager: reconciles
# ClusterSPIFFEID objects into SPIRE registration entries (charts/x0tta6bl4-spire runs it beside
# spire-server). Built like spire.sh (a throw-away module requiring the pinned version), pure
# Go, so static without cgo.
version() { echo "$SPIRE_CONTROLLER_MANAGER_VERSION"; }
build() {
  local mod
  mod="$(mktemp -d)"
  (
    cd "$mod"
    go mod init x0tta6bl4.local/spire-controller-manager-build >/dev/null 2>&1
    go get -tool "github.com/spiffe/spire-controller-manager/cmd@$SPIRE_CONTROLLER_MANAGER_VERSION"
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$1/bin/spire-controller-manager" \
      github.com/spiffe/spire-controller-manager/cmd
  )
  rm -rf "$mod"
}
