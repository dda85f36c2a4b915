#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler (from the k8s.io/kubernetes
# Go module), kwok and helm into a versioned cache outside the repo. Idempotent and atomic:
# binaries are built in a temporary directory and renamed into place only when all succeeded.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=kubernetes-commands.sh
source "$here/kubernetes-commands.sh"

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

build_kubernetes_commands "$work/src" "$work/bin" trainforge.io/cluster-build \
  kube-apiserver kube-controller-manager kube-scheduler
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
