# csi-registrar: the project's own source in scripts/components/csi-registrar/ (its go.mod and
# go.sum pin every dependency); a static binary without cgo.
version() { echo "$CSI_REGISTRAR_VERSION"; }
build() {
  local src
  src="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/csi-registrar"
  (cd "$src" && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath -ldflags "-s -w" \
    -o "$1/bin/csi-registrar" .)
}
