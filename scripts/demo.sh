#!/usr/bin/env bash
# The main job until `x0tta6bl4 up` exists: show the post-quantum protocol core working.
set -euo pipefail
cd "$(dirname "$0")/.."
X=.venv/bin/x0tta6bl4
$X version
$X bench handshake
$X bench session
