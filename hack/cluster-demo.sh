#!/usr/bin/env bash
# The second step after `make demo`: the same example on a real Kubernetes node.
#   make cluster-up REAL_NODE=1     # control plane + a real kubelet/containerd node + images
#   make cluster-demo               # this script
# It installs the chart with the locally built images, applies
# examples/trainingjob-cpu.yaml and follows it (`kubectl get tj -w`) until it ends, serves
# the checkpoint with examples/inferenceservice-from-job.yaml and sends one Open Inference
# Protocol V2 request through `kubectl port-forward`. `make cluster-down` removes it all.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export KUBECONFIG=${KUBECONFIG:-$repo/.cluster/kubeconfig}
[[ -f $KUBECONFIG ]] || { echo "no cluster: run \`make cluster-up REAL_NODE=1\` first" >&2; exit 1; }
kubectl get node localhost >/dev/null 2>&1 \
  || { echo "no real node: run \`make cluster-down && make cluster-up REAL_NODE=1\`" >&2; exit 1; }
helm="$(bash "$repo/hack/cluster/build.sh")/helm"
declare -A ref
while read -r name archive; do ref[$name]=$(cat "${archive%.tar}.ref"); done \
  < <(bash "$repo/hack/cluster/images.sh")

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
step "helm install trainforge (operator image ${ref[operator]})"
"$helm" upgrade --install tf "$repo/helm/trainforge" --namespace trainforge-system \
  --create-namespace --wait --timeout 180s \
  --set image.repository="${ref[operator]%:*}" --set image.tag="${ref[operator]##*:}" \
  --set trainerImage.repository="${ref[trainer]%:*}" --set trainerImage.tag="${ref[trainer]##*:}"
kubectl -n trainforge-system get pods -o wide

step "kubectl apply -f examples/trainingjob-cpu.yaml; kubectl get tj gpt-cpu -w"
kubectl apply -f "$repo/examples/trainingjob-cpu.yaml"
kubectl get tj gpt-cpu -w &
watcher=$!
trap 'kill $watcher 2>/dev/null || true' EXIT
kubectl wait --for=jsonpath='{.status.phase}'=Succeeded tj/gpt-cpu --timeout=30m
kill $watcher 2>/dev/null || true
kubectl get tj gpt-cpu -o jsonpath='{.status.checkpoint}{"\n"}'

step "kubectl apply -f examples/inferenceservice-from-job.yaml"
kubectl apply -f "$repo/examples/inferenceservice-from-job.yaml"
kubectl wait --for=condition=Ready infsvc/gpt-cpu-serve --timeout=10m
kubectl get infsvc gpt-cpu-serve

step "one V2 infer request through kubectl port-forward"
kubectl port-forward --address 127.0.0.1 service/gpt-cpu-serve 18080:80 >/dev/null &
forward=$!
trap 'kill $watcher $forward 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf http://127.0.0.1:18080/v2/health/ready >/dev/null && break; sleep 0.2; done
curl -s http://127.0.0.1:18080/v2/models/gpt; echo
python3 - <<'PY'
import json, urllib.request
# The gpt recipe takes token ids (INT64, shape [batch, sequence]) and returns logits.
tokens = list(b"hello trainforge")
body = {"inputs": [{"name": "tokens", "shape": [1, len(tokens)], "datatype": "INT64", "data": tokens}]}
req = urllib.request.Request("http://127.0.0.1:18080/v2/models/gpt/infer",
                             data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
out = json.load(urllib.request.urlopen(req, timeout=60))["outputs"][0]
print(f"output {out['name']}: shape {out['shape']}, datatype {out['datatype']}")
PY
