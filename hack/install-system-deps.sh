#!/usr/bin/env bash
# Debian packages the tests need, installed only when missing:
#   etcd (the control plane), lua5.4 (the Argo CD health check), prometheus + promtool
#   (metrics tests); for the real node (hack/cluster/node.py): containerd + runc, the CNI
#   plugins (ptp, host-local, loopback), iptables (the kubelet's chains), socat (the in-pod
#   path to the apiserver and CoreDNS), gcc (the static pause binary), debootstrap (the
#   Debian base image) and buildah (builds the Dockerfiles without a daemon).
set -euo pipefail
# what to look for (a command, or an absolute path) -> the package that provides it
declare -A want=(
  [etcd]=etcd-server [lua5.4]=lua5.4 [promtool]=prometheus [prometheus]=prometheus
  [containerd]=containerd [runc]=runc [/usr/lib/cni/ptp]=containernetworking-plugins
  [iptables]=iptables [socat]=socat [gcc]=gcc [debootstrap]=debootstrap [buildah]=buildah
)
missing=()
for what in "${!want[@]}"; do
  if [[ $what == /* ]]; then
    [[ -e $what ]] || missing+=("${want[$what]}")
  else
    command -v "$what" >/dev/null 2>&1 || missing+=("${want[$what]}")
  fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "installing Debian packages: ${missing[*]}" >&2
sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
