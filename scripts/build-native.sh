#!/usr/bin/env bash
# Builds the native data plane (native/: Rust, PyO3, maturin) and installs it into .venv as the
# distribution `x0tta6bl4-native` (import name x0tta6bl4_native). Called by `make setup`.
#
# - maturin comes from PyPI (installed into .venv); the Rust toolchain is the machine's
#   (`cargo` on PATH or in ~/.cargo/bin). Without cargo the node runs the Python data plane
#   (`--dataplane python`); this script says so and succeeds, unless X0_REQUIRE_NATIVE=1.
# - Builds are incremental: cargo's target dir defaults to a machine-wide cache
#   (${X0_CACHE:-/var/cache/x0tta6bl4}/cargo-target) when writable, else native/target
#   (gitignored); CARGO_TARGET_DIR overrides both. A wheel for users: see native/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d "$HOME/.cargo/bin" ] && export PATH="$PATH:$HOME/.cargo/bin"
if ! command -v cargo >/dev/null 2>&1; then
  msg="build-native: cargo not found: the native data plane is not built (nodes use --dataplane python)"
  if [ "${X0_REQUIRE_NATIVE:-0}" = 1 ]; then echo "$msg" >&2; exit 1; fi
  echo "$msg" >&2; exit 0
fi
# shellcheck source=scripts/cargo-target.sh
. scripts/cargo-target.sh
.venv/bin/pip install --quiet 'maturin>=1.7,<2'
# A lock: two worktrees sharing the cache build one after the other (cargo locks too, but
# maturin's wheel directory is per target dir); the crate is rebuilt from this checkout's
# sources when another checkout built it last (scripts/cargo-target.sh).
x0_cargo_lock
VIRTUAL_ENV="$PWD/.venv" .venv/bin/maturin develop --release --quiet -m native/Cargo.toml >&2
.venv/bin/python -c 'import x0tta6bl4_native as n; print("build-native: x0tta6bl4_native", n.VERSION, "with", n.AEAD_IMPLEMENTATION)' >&2
