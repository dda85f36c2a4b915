#!/usr/bin/env bash
# Copies the generated CRDs (crds/*.yaml) into the Helm chart (helm/trainforge/crds/), byte for
# byte, and removes chart copies whose source is gone. Run after `python -m trainforge.api.crdgen`
# (`make crds` does both); tests/helm/test_chart_crds.py fails when the copies drift.
# The chart's own CRD files (kopf's peering CRDs, KEEP below) are left alone.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
src="$repo/crds"
dest="$repo/helm/trainforge/crds"
KEEP=(kopf-peerings.yaml)

mkdir -p "$dest"
for crd in "$src"/*.yaml; do
  cp "$crd" "$dest/"
done
for copy in "$dest"/*.yaml; do
  name=$(basename "$copy")
  [[ -e "$src/$name" ]] && continue
  [[ " ${KEEP[*]} " == *" $name "* ]] && continue
  rm "$copy"
  echo "removed stale $copy" >&2
done
