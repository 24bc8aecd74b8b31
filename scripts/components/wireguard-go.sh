# wireguard-go, the userspace WireGuard of golang.zx2c4.com/wireguard: the anchor that
# `x0tta6bl4 bench tun` measures the native data plane against.
version() { echo "$WIREGUARD_GO_VERSION"; }
build() {
  GOBIN="$1/bin" go install "golang.zx2c4.com/wireguard@$WIREGUARD_GO_VERSION"
  mv "$1/bin/wireguard" "$1/bin/wireguard-go"
}
