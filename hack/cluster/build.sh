#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler (from the k8s.io/kubernetes
# Go module), kwok and helm into a versioned cache outside the repo. Idempotent and atomic:
# binaries are built in a temporary directory and renamed into place only when all succeeded.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache_root=${TRAINFORGE_CACHE:-$HOME/.cache/trainforge}
key="k8s-${K8S_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}"
dest="$cache_root/cluster/$key"
if [[ -x "$dest/bin/kube-apiserver" ]]; then
  echo "$dest/bin"
  exit 0
fi

mkdir -p "$cache_root/cluster"
work=$(mktemp -d "$cache_root/cluster/.build-XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
log() { echo "[build $(($(date +%s) - start))s] $*" >&2; }

staging_version="v0${K8S_VERSION#v1}"   # v1.33.13 -> v0.33.13
mkdir -p "$work/src" "$work/bin"
cd "$work/src"
cat > go.mod <<MOD
module trainforge.io/cluster-build

go 1.24.0

require k8s.io/kubernetes $K8S_VERSION
MOD
# k8s.io/kubernetes replaces its staging modules with local paths, which only apply inside
# its own repo; here every one of them is replaced with its published release instead.
log "resolving k8s.io/kubernetes@$K8S_VERSION"
go mod download -json "k8s.io/kubernetes@$K8S_VERSION" > kmod.json
k8s_gomod=$(python3 -c 'import json,sys; print(json.load(open("kmod.json"))["GoMod"])')
{
  echo "replace ("
  awk '/^replace \(/{r=1;next} r&&/^\)/{r=0} r&&/=> \.\/staging/{print "\t"$1" => "$1" '"$staging_version"'"}' "$k8s_gomod"
  echo ")"
} >> go.mod
cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
GO
GOFLAGS=-mod=mod go mod tidy >&2

ver=${K8S_VERSION#v}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=${ver%%.*}"
  ldflags+=" -X $pkg.gitMinor=$(echo "$ver" | cut -d. -f2) -X $pkg.gitTreeState=clean"
  ldflags+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
for cmd in kube-apiserver kube-controller-manager kube-scheduler; do
  log "building $cmd"
  CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$work/bin/$cmd" "k8s.io/kubernetes/cmd/$cmd"
done
log "building kwok $KWOK_VERSION"
CGO_ENABLED=0 GOBIN="$work/bin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
log "building helm $HELM_VERSION"
CGO_ENABLED=0 GOBIN="$work/bin" go install -trimpath -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"

mkdir -p "$work/out"
mv "$work/bin" "$work/out/bin"
echo "$(($(date +%s) - start))" > "$work/out/build-seconds"
rm -rf "$dest"
mv "$work/out" "$dest"
log "done: $dest/bin"
echo "$dest/bin"
