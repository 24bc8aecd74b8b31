# spire-server and spire-agent from github.com/spiffe/spire. The proxy serves the module but
# `go install …@version` refuses it, so the main packages are built from a throw-away module
# that requires the pinned version. Static binaries, as SPIRE's own images ship them (its
# Makefile's build-static): cgo for SQLite linked statically, pure-Go user and DNS lookups
# (osusergo, netgo: nothing of glibc's NSS is loaded at run time) and no SQLite extension
# loading, so the same files run on this machine and in a minimal container image.
version() { echo "$SPIRE_VERSION"; }
build() {
  local mod
  mod="$(mktemp -d)"
  (
    cd "$mod"
    go mod init x0tta6bl4.local/spire-build >/dev/null 2>&1
    go get -tool "github.com/spiffe/spire/cmd/spire-server@$SPIRE_VERSION" \
      "github.com/spiffe/spire/cmd/spire-agent@$SPIRE_VERSION"
    CGO_ENABLED=1 GOBIN="$1/bin" go install -trimpath \
      -tags osusergo,netgo,sqlite_omit_load_extension \
      -ldflags "-s -w -X github.com/spiffe/spire/pkg/common/version.gittag=${SPIRE_VERSION#v} -linkmode external -extldflags -static" \
      github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent
  )
  rm -rf "$mod"
}
