#!/usr/bin/env bash
# Makes the Helm chart's CRDs (helm/trainforge/files/crds/, rendered by
# templates/crds.yaml) exactly the generated ones (crds/*.yaml), byte for byte: copies every
# generated file and removes any other file there. Run after `python -m trainforge.api.crdgen`
# (`make crds` does both); tests/helm/test_chart.py fails when the two directories differ.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
src="$repo/crds"
dest="$repo/helm/trainforge/files/crds"

mkdir -p "$dest"
for crd in "$src"/*.yaml; do
  cp "$crd" "$dest/"
done
for copy in "$dest"/*; do
  [[ -e $copy ]] || continue
  name=$(basename "$copy")
  [[ -e "$src/$name" ]] && continue
  rm -r "$copy"
  echo "removed $copy (not in crds/)" >&2
done
