#!/usr/bin/env bash
# Copy the CRDs from deploy/crds/ (their source) into the chart's crds/ folder. Helm packages no
# symlink that points outside the chart, so the chart holds copies; tests/deploy fails when a
# copy differs from its source. Run after editing anything in deploy/crds/.
set -euo pipefail
cd "$(dirname "$0")/.."
src=deploy/crds
dst=deploy/helm/throttle/crds
mkdir -p "$dst"
# Remove copies whose source is gone, then copy every source byte for byte.
for copy in "$dst"/*.yaml; do
    [[ -e "$copy" ]] || continue
    [[ -e "$src/$(basename "$copy")" ]] || { rm -f "$copy"; echo "removed $copy"; }
done
for crd in "$src"/*.yaml; do
    cp "$crd" "$dst/"
    echo "copied $crd -> $dst/"
done
