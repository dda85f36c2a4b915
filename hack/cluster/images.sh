#!/usr/bin/env bash
# Builds the images the real node runs, with buildah (no daemon), and prints one line per
# image: `<name> <OCI archive>` (the archive's .ref file holds its reference):
#   pause     the sandbox image: Kubernetes' pause.c (build-node.sh), nothing else
#   base      Debian bookworm (debootstrap --variant=minbase) with python3: the local stand-in
#             for the public python image, which no registry here can serve
#   operator  Dockerfile with PYTHON_IMAGE=base
#   trainer   trainer_image/Dockerfile with PYTHON_IMAGE=base
# Every image is tagged with the hash of its inputs and cached (buildah's storage and the
# archives under ~/.cache/trainforge/images), so an unchanged image is never rebuilt.
# Each image's tag hashes only the sources its Dockerfile copies, so an operator change never
# rebuilds the 6 GB trainer image (and a trainer change never rebuilds the operator).
# pip installs from a wheelhouse (~/.cache/trainforge/wheels/<hash of the pyproject files>),
# downloaded from PyPI once: a rebuild never downloads torch again, and a new wheelhouse
# starts as hard links to the previous one, so a changed dependency downloads only itself.
# PyPI's Linux torch is the CUDA build, so its nvidia-* wheels come too (they are imported).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache_root=${TRAINFORGE_CACHE:-$HOME/.cache/trainforge}
out="$cache_root/images"
mkdir -p "$out"
start=$(date +%s)
log() { echo "[images $(($(date +%s) - start))s] $*" >&2; }
hash_of() { cat "$@" | sha256sum | cut -c1-16; }  # contents only: the same in any clone
# The files of the context a Dockerfile copies (its COPY lines): hashed in a stable order.
context_hash() {  # paths...
  (cd "$repo" && find "$@" \
    -type f ! -name '*.pyc' ! -path '*/__pycache__/*' ! -path '*.egg-info/*' -print0 \
    | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
}
have() { buildah inspect --type image "$1" >/dev/null 2>&1; }
# Drop the older builds of an image (a trainer image is 6 GB). buildah's reference filter
# also matches other repositories ending in the same name (localhost/x/trainer), so the
# names are checked here: only this repository's other tags go.
prune() {
  buildah images --format '{{.Name}}:{{.Tag}}' --filter "reference=${1%:*}" \
    | grep -F "${1%:*}:" | grep -vxF "$1" | xargs -r buildah rmi >/dev/null 2>&1 || true
}
# An OCI archive of a local image, uncompressed (containerd imports it as it is).
export_image() {  # name ref
  local archive="$out/$1-${2##*:}.tar"
  if [[ ! -s $archive ]]; then
    rm -f "$out/$1"-*.tar "$out/$1"-*.ref
    buildah push --quiet --disable-compression "$2" "oci-archive:$archive.tmp:${2##*:}" >&2
    mv "$archive.tmp" "$archive"
  fi
  echo "$2" > "${archive%.tar}.ref"
  echo "$1 $archive"
}

# The Debian mirror this machine's apt uses (deb822 sources or a classic sources.list).
debian_mirror() {
  local uri
  uri=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)$/\1/p' /etc/apt/sources.list.d/*.sources \
    2>/dev/null | head -n1)
  [[ -n $uri ]] || uri=$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' \
    /etc/apt/sources.list 2>/dev/null)
  [[ -n $uri ]] || { echo "no Debian mirror in the apt sources" >&2; return 1; }
  echo "$uri"
}

# base: what the public python image gives the Dockerfiles (python, venv, useradd)
base_packages=python3,python3-venv,python-is-python3,passwd
base_tag=$(echo "bookworm $base_packages" | sha256sum | cut -c1-16)
base="localhost/trainforge/python-base:$base_tag"
if ! have "$base"; then
  log "building $base (debootstrap)"
  ctx=$(mktemp -d)
  debootstrap --variant=minbase --include="$base_packages" bookworm "$ctx/rootfs" \
    "$(debian_mirror)" >&2
  rm -rf "$ctx"/rootfs/var/lib/apt/lists/* "$ctx"/rootfs/var/cache/apt/* \
    "$ctx"/rootfs/usr/share/doc "$ctx"/rootfs/usr/share/man "$ctx"/rootfs/usr/share/locale
  tar -C "$ctx/rootfs" -cf "$ctx/rootfs.tar" .
  rm -rf "$ctx/rootfs"
  printf 'FROM scratch\nADD rootfs.tar /\nCMD ["python3"]\n' > "$ctx/Containerfile"
  buildah bud --quiet --isolation chroot -t "$base" "$ctx" >&2
  rm -rf "$ctx"
fi

# the wheelhouse both Dockerfiles install from (no index at build time)
projects=("$repo/contract" "$repo" "$repo/trainer_image")
wheels="$cache_root/wheels/$(hash_of "${projects[@]/%//pyproject.toml}")"
if [[ ! -f $wheels/.complete ]]; then
  log "downloading the wheelhouse from PyPI into $wheels"
  mkdir -p "$wheels"
  # pip download keeps the files already in --dest: seed from the newest complete wheelhouse.
  previous=$(ls -td "$cache_root"/wheels/*/.complete 2>/dev/null | head -n1 || true)
  [[ -z $previous ]] || cp -al "$(dirname "$previous")"/*.whl "$wheels"/ 2>/dev/null || true
  python3 -m pip download --quiet --progress-bar off --dest "$wheels" \
    "setuptools>=69" wheel "${projects[@]}" >&2
  rm -f "$wheels"/trainforge[-_]*  # the projects themselves are built from the context
  touch "$wheels/.complete"
fi
pipconf=$(mktemp)
trap 'rm -f "$pipconf"' EXIT
printf '[global]\nno-index = true\nfind-links = /wheels\n' > "$pipconf"

build() {  # name dockerfile [build args...]
  local name=$1 dockerfile=$2
  shift 2
  # The COPY sources of the build stage (the final stage copies from it only).
  local sources
  mapfile -t sources < <(awk '$1 == "COPY" && $2 !~ /^--from/ {for (i = 2; i < NF; i++) print $i}' \
    "$repo/$dockerfile")
  local tag
  tag=$(echo "$base_tag $(context_hash "${sources[@]}") $(hash_of "$repo/$dockerfile") $*" \
    | sha256sum | cut -c1-16)
  local ref="localhost/trainforge/$name:$tag"
  if ! have "$ref"; then
    log "building $ref from $dockerfile"
    local t0=$(date +%s)
    buildah bud --quiet --isolation chroot --pull-never --layers=false \
      --volume "$wheels:/wheels:ro" --volume "$pipconf:/etc/pip.conf:ro" \
      --build-arg "PYTHON_IMAGE=$base" "$@" -f "$repo/$dockerfile" -t "$ref" "$repo" >&2
    log "built $ref in $(($(date +%s) - t0))s"
    prune "$ref"
  fi
  export_image "$name" "$ref"
}
build operator Dockerfile
# pip.conf above sets no-index: torch comes from the wheelhouse like everything else.
build trainer trainer_image/Dockerfile

node_bin=$(bash "$here/build-node.sh")

# pause
pause_tag=$(hash_of "$node_bin/pause")
pause="localhost/trainforge/pause:$pause_tag"
if ! have "$pause"; then
  log "building $pause"
  ctx=$(mktemp -d)
  cp "$node_bin/pause" "$ctx/pause"
  printf 'FROM scratch\nCOPY pause /pause\nENTRYPOINT ["/pause"]\n' > "$ctx/Containerfile"
  buildah bud --quiet --isolation chroot -t "$pause" "$ctx" >&2
  rm -rf "$ctx"
fi
export_image pause "$pause"

log "done"
