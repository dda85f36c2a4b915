#!/usr/bin/env bash
# Builds kstatus-check (main.go) against sigs.k8s.io/cli-utils into a versioned cache outside
# the repo, like hack/cluster/build.sh's binaries; prints the binary's path. Idempotent.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CLI_UTILS_VERSION=v0.37.2
cache_root=${TRAINFORGE_CACHE:-$HOME/.cache/trainforge}
hash=$(sha256sum "$here/main.go" | cut -c1-12)
dest="$cache_root/kstatus/cli-utils-${CLI_UTILS_VERSION}_$hash"
if [[ -x "$dest/kstatus-check" ]]; then
  echo "$dest/kstatus-check"
  exit 0
fi
export PATH="$PATH:/usr/local/go/bin"
mkdir -p "$cache_root/kstatus"
work=$(mktemp -d "$cache_root/kstatus/.build-XXXXXX")
trap 'rm -rf "$work"' EXIT
cp "$here/main.go" "$work/"
cd "$work"
cat > go.mod <<MOD
module trainforge.io/kstatus-check

go 1.24.0

require sigs.k8s.io/cli-utils $CLI_UTILS_VERSION
MOD
GOFLAGS=-mod=mod go mod tidy >&2
mkdir -p "$work/out"
CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$work/out/kstatus-check" . >&2
mkdir -p "$(dirname "$dest")"
mv "$work/out" "$dest"
echo "$dest/kstatus-check"
