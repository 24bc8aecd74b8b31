# Sourced by scripts/build-native.sh and scripts/native-test.sh (bash): the cargo target dir
# they share, and a guard that keeps it correct across checkouts.
#
# - CARGO_TARGET_DIR defaults to the machine-wide cache ${X0_CACHE:-/var/cache/x0tta6bl4}/
#   cargo-target when writable (else native/target); set, it is left alone. Every checkout
#   and every CI clone then reuses the compiled dependencies (ring, PyO3, libc, ...) and
#   compiles only the crate itself.
# - Cargo decides that the crate is fresh by file times, and its artifacts are keyed by the
#   package's path *within* the checkout: a checkout whose sources are older than another
#   checkout's last build would be handed that build. So x0_cargo_lock takes the cache's
#   lock (fd 9, held until the caller exits) and, when the crate's sources (native/ and
#   native/fuzz/: *.rs, Cargo.toml, Cargo.lock) differ from those of the last build in this
#   target dir, touches them so that cargo rebuilds the crate from this checkout.
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
  _x0_cache="${X0_CACHE:-/var/cache/x0tta6bl4}/cargo-target"
  if mkdir -p "$_x0_cache" 2>/dev/null && [ -w "$_x0_cache" ]; then export CARGO_TARGET_DIR="$_x0_cache"
  else export CARGO_TARGET_DIR="$PWD/native/target"; fi
fi

_x0_native_sources() {
  find native -path native/target -prune -o -path native/fuzz/target -prune -o -type f \
    \( -name '*.rs' -o -name Cargo.toml -o -name Cargo.lock \) -print0 | sort -z
}

x0_cargo_lock() {
  mkdir -p "$CARGO_TARGET_DIR"
  exec 9>"$CARGO_TARGET_DIR/.x0-build.lock"
  flock 9
  local stamp="$CARGO_TARGET_DIR/.x0-sources" digest
  digest="$(_x0_native_sources | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
    _x0_native_sources | xargs -0 touch
    echo "$digest" > "$stamp"
  fi
}
