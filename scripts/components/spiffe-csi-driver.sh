# spiffe-csi-driver from github.com/spiffe/spiffe-csi, pure Go (a static binary without cgo).
# `go install …@version` fails on this module (the proxy answers 403 to its version list, which
# `go install` reads for deprecations), so it is built like spire.sh from a throw-away module.
version() { echo "$SPIFFE_CSI_DRIVER_VERSION"; }
build() {
  local mod
  mod="$(mktemp -d)"
  (
    cd "$mod"
    go mod init x0tta6bl4.local/spiffe-csi-build >/dev/null 2>&1
    go get -tool "github.com/spiffe/spiffe-csi/cmd/spiffe-csi-driver@$SPIFFE_CSI_DRIVER_VERSION"
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$1/bin/spiffe-csi-driver" \
      github.com/spiffe/spiffe-csi/cmd/spiffe-csi-driver
  )
  rm -rf "$mod"
}
