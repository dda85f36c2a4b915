#!/usr/bin/env bash
# Debian packages the tests need: etcd (the control plane), lua5.4 (the Argo CD health
# check), prometheus + promtool (metrics tests). Installs only what is missing.
set -euo pipefail
declare -A want=([etcd]=etcd-server [lua5.4]=lua5.4 [promtool]=prometheus [prometheus]=prometheus)
missing=()
for cmd in "${!want[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${want[$cmd]}")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "installing Debian packages: ${missing[*]}" >&2
sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
