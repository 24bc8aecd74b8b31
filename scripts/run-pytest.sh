#!/usr/bin/env bash
# Runs the whole test suite. pytest's exit code 5 ("no tests collected") is a failure here:
# an empty run must never pass for a green one.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.tools/bin:$PATH"
# The pinned SPIRE build (scripts/components/build spire), when it is there.
if spire_bin="$(scripts/components/build --path spire 2>/dev/null)"; then
  export X0_SPIRE_BIN_DIR="${X0_SPIRE_BIN_DIR:-$spire_bin}"
fi
.venv/bin/pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "run-pytest: pytest collected no tests; treating that as a failure" >&2
  exit 1
fi
exit "$rc"
