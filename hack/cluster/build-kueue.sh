#!/usr/bin/env bash
# Builds Kueue's manager (sigs.k8s.io/kueue/cmd/kueue, from its Go module) into a versioned
# cache outside the repo, next to its CRDs (config/components/crd/bases), for the cluster
# tests of gang policy Kueue. Idempotent and atomic like build.sh. Prints the cache folder.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache_root=${TRAINFORGE_CACHE:-$HOME/.cache/trainforge}
dest="$cache_root/cluster/kueue-${KUEUE_VERSION}"
if [[ -x "$dest/bin/kueue" ]]; then
  echo "$dest"
  exit 0
fi

mkdir -p "$cache_root/cluster"
work=$(mktemp -d "$cache_root/cluster/.build-kueue-XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
log() { echo "[build-kueue $(($(date +%s) - start))s] $*" >&2; }

# Kueue's go.mod has no replace directives, so `go install module@version` builds it as
# released (its own go.sum pins every dependency).
log "building kueue $KUEUE_VERSION"
mkdir -p "$work/out/bin"
CGO_ENABLED=0 GOBIN="$work/out/bin" go install -trimpath -ldflags "-s -w" \
  "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION"
src=$(go mod download -json "sigs.k8s.io/kueue@$KUEUE_VERSION" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
cp -r "$src/config/components/crd/bases" "$work/out/crds"
chmod -R u+w "$work/out/crds"
echo "$(($(date +%s) - start))" > "$work/out/build-seconds"
rm -rf "$dest"
mv "$work/out" "$dest"
log "done: $dest"
echo "$dest"
