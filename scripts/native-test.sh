#!/usr/bin/env bash
# `make native-test`: the native data plane's Rust checks (the Python-facing behaviour is tested
# by pytest tests/native).
#
# 1. `cargo test` of the cores (no PyO3);
# 2. `cargo clippy -D warnings` over the crate with and without the PyO3 layer and over the
#    cargo-fuzz targets (native/fuzz: this also keeps them compiling against the cores, on the
#    stable toolchain; running them needs nightly, native/README.md). Clippy is a rustup
#    component: added here when rustup is present and it is missing (a small download);
#    without it this step says so and is skipped.
# Without cargo everything is skipped with a message (nodes then run --dataplane python).
#
# Builds are incremental across checkouts, like scripts/build-native.sh: cargo's target dir
# defaults to the machine-wide cache ${X0_CACHE:-/var/cache/x0tta6bl4}/cargo-target when
# writable (else native/target); CARGO_TARGET_DIR overrides (scripts/cargo-target.sh). A fresh
# clone (every CI run) then recompiles only the crate itself, not its dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d "$HOME/.cargo/bin" ] && export PATH="$PATH:$HOME/.cargo/bin"
if ! command -v cargo >/dev/null 2>&1; then
  echo "native-test: no cargo, skipped"; exit 0
fi
# shellcheck source=scripts/cargo-target.sh
. scripts/cargo-target.sh
x0_cargo_lock
cargo test --quiet --manifest-path native/Cargo.toml --no-default-features
if ! cargo clippy --version >/dev/null 2>&1 && command -v rustup >/dev/null 2>&1; then
  rustup component add clippy >&2 || true
fi
if ! cargo clippy --version >/dev/null 2>&1; then
  echo "native-test: cargo clippy not available (rustup component add clippy), lint skipped"
  exit 0
fi
cargo clippy --quiet --manifest-path native/Cargo.toml --all-targets --no-default-features -- -D warnings
cargo clippy --quiet --manifest-path native/Cargo.toml --all-targets -- -D warnings
cargo clippy --quiet --manifest-path native/fuzz/Cargo.toml --all-targets -- -D warnings
echo "native-test: cargo test and clippy (crate, PyO3 layer, fuzz targets) passed"
