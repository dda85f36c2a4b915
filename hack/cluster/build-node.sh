#!/usr/bin/env bash
# Builds what the real node needs beyond Debian's packages into a versioned cache outside the
# repo: the kubelet and kube-proxy (k8s.io/kubernetes at the control plane's version, same
# wrapper go.mod as build.sh), CoreDNS (its Go module, only the plugins cluster DNS uses) and the sandbox
# ("pause") binary from Kubernetes' own build/pause/linux/pause.c, linked statically.
# Idempotent and atomic like build.sh; prints the bin directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=kubernetes-commands.sh
source "$here/kubernetes-commands.sh"

cache_root=${TRAINFORGE_CACHE:-$HOME/.cache/trainforge}
key="node_k8s-${K8S_VERSION}_coredns-${COREDNS_VERSION}_kube-proxy"
dest="$cache_root/cluster/$key"
mkdir -p "$cache_root/cluster"
# One build at a time: `make -j` runs this both as node-build and from images.sh (the pause
# image); the second caller waits here and then finds the cache.
exec 9>"$cache_root/cluster/.build-node.lock"
flock 9
if [[ -x "$dest/bin/kubelet" && -x "$dest/bin/kube-proxy" ]]; then
  echo "$dest/bin"
  exit 0
fi

work=$(mktemp -d "$cache_root/cluster/.build-node-XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
log() { echo "[build-node $(($(date +%s) - start))s] $*" >&2; }

mkdir -p "$work/coredns"
build_kubernetes_commands "$work/kubelet" "$work/bin" trainforge.io/node-build kubelet kube-proxy

log "building pause"
gcc -Os -Wall -Werror -static -DVERSION="trainforge-$K8S_VERSION" \
  -o "$work/bin/pause" "$k8s_dir/build/pause/linux/pause.c"

cd "$work/coredns"
cat > go.mod <<MOD
module trainforge.io/coredns-build

go 1.24.0

require github.com/coredns/coredns $COREDNS_VERSION
MOD
# CoreDNS's documented way to build with a chosen plugin set: set the directive list, import
# only those plugins (the full set pulls every cloud SDK in).
cat > main.go <<'GO'
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	dnsserver.Directives = []string{"bind", "ready", "health", "errors", "cache", "kubernetes"}
}

func main() { coremain.Run() }
GO
log "building coredns $COREDNS_VERSION"
GOFLAGS=-mod=mod go mod tidy >&2
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$work/bin/coredns" .

mkdir -p "$work/out"
mv "$work/bin" "$work/out/bin"
echo "$(($(date +%s) - start))" > "$work/out/build-seconds"
rm -rf "$dest"
mv "$work/out" "$dest"
log "done: $dest/bin"
echo "$dest/bin"
