#!/usr/bin/env bash
# The main job: the whole mesh on this machine, live (docs/up.md).
# Flags come from the environment: X0_NODES, X0_CHAOS=1, X0_FOR, X0_STATE_DIR, ...
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/x0tta6bl4 up "$@"
