# Sourced by build.sh and build-node.sh: builds commands of the k8s.io/kubernetes Go module
# (cmd/<name>) at $K8S_VERSION into a bin directory, with the version stamped in as a release
# build has it. Needs versions.env sourced and a `log` function; sets k8s_dir (the module's
# source, for files other than Go: build-node.sh compiles the pause binary from it).
build_kubernetes_commands() {
  local src=$1 bin=$2 module=$3
  shift 3
  local staging_version="v0${K8S_VERSION#v1}"   # v1.33.13 -> v0.33.13
  mkdir -p "$src" "$bin"
  (
    cd "$src"
    printf 'module %s\n\ngo 1.24.0\n\nrequire k8s.io/kubernetes %s\n' "$module" "$K8S_VERSION" > go.mod
    # k8s.io/kubernetes replaces its staging modules with local paths, which only apply inside
    # its own repo; here every one of them is replaced with its published release instead.
    log "resolving k8s.io/kubernetes@$K8S_VERSION"
    go mod download -json "k8s.io/kubernetes@$K8S_VERSION" > kmod.json
    {
      echo "replace ("
      awk '/^replace \(/{r=1;next} r&&/^\)/{r=0} r&&/=> \.\/staging/{print "\t"$1" => "$1" '"$staging_version"'"}' \
        "$(python3 -c 'import json; print(json.load(open("kmod.json"))["GoMod"])')"
      echo ")"
    } >> go.mod
    {
      printf '//go:build tools\n\npackage tools\n\nimport (\n'
      printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$@"
      printf ')\n'
    } > tools.go
    GOFLAGS=-mod=mod go mod tidy >&2

    local ver=${K8S_VERSION#v} ldflags="-s -w" pkg cmd
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=${ver%%.*}"
      ldflags+=" -X $pkg.gitMinor=$(echo "$ver" | cut -d. -f2) -X $pkg.gitTreeState=clean"
      ldflags+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    for cmd in "$@"; do
      log "building $cmd"
      CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$bin/$cmd" "k8s.io/kubernetes/cmd/$cmd"
    done
  )
  k8s_dir=$(cd "$src" && python3 -c 'import json; print(json.load(open("kmod.json"))["Dir"])')
}
