"""The real node of the local control plane: containerd + runc (Debian), the CNI plugins
(ptp + host-local + loopback), the kubelet, kube-proxy and CoreDNS (build-node.sh), so that
pods made by the operator really run. Used by `cluster.py up --real-node`; `cluster.py down`
calls `down`.

Everything stays on this machine. Pods get addresses from POD_CIDR, routed only to the
network namespaces containerd creates for them (ptp, no masquerade, no route off the host).
kube-proxy (iptables mode) routes ClusterIP Services to their pods, e.g. rank 0's progress
push to the operator's progress Service. Two addresses on the host's loopback device serve
what kube-proxy cannot:
  10.96.0.1:443   the `kubernetes` Service (socat to the apiserver on 127.0.0.1), so pods
                  such as the operator reach the API with their in-cluster config. The
                  apiserver listens on loopback only, and a DNAT from a pod to 127.0.0.1 is
                  dropped as martian, so kube-proxy is told to leave this Service alone
                  (PROXY_NAME_LABEL)
  10.96.0.10:53   cluster DNS (CoreDNS, kubernetes plugin; not a Service), so workers resolve
                  <pod>.<headless-service>.<ns>.svc.cluster.local and Service names
The host and tests reach pods and Services with `kubectl port-forward`.

The kubelet and kube-proxy change host state (sysctls, iptables chains, cgroups, bind mounts,
network namespaces, /var/lib/kubelet/device-plugins). `up` records the state before it starts
anything and `down` puts it back, so only one real node may run per machine at a time
(LOCK names the state directory that owns it).

Facts this relies on (measured in this sandbox): no CAP_SYS_RESOURCE, so containerd needs
restrict_oom_score_adj; no AppArmor; cgroup v1 with the cgroupfs driver; the kubelet refuses
a loopback node IP, so the node is named `localhost` and has no node IP.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

POD_CIDR = "10.244.0.0/24"
API_SERVICE_IP = "10.96.0.1"
DNS_SERVICE_IP = "10.96.0.10"
NODE_NAME = "localhost"
LOCK = Path("/run/trainforge-real-node.lock")
CNI_BIN = Path("/usr/lib/cni")
KUBELET_FIXED_DIR = Path("/var/lib/kubelet")  # device-plugins/ is a fixed path
NETNS_DIR = Path("/var/run/netns")
SHIM_DIR = Path("/run/containerd")  # containerd 1.6 puts shim sockets in /run/containerd/s
SYSCTLS = (
    "vm/overcommit_memory",
    "kernel/panic",
    "kernel/panic_on_oops",
    "net/ipv4/ip_forward",
    # kube-proxy sets it for NodePorts on 127.0.0.1, which KUBE_PROXY_CONFIG turns off; kept
    # here so that a change of that setting cannot leave it behind.
    "net/ipv4/conf/all/route_localnet",
)
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Advertised through the node's status so the GPU and RDMA examples are admitted; the pods
# run on CPU (the trainer falls back when CUDA is absent).
EXTENDED_RESOURCES = {"nvidia.com/gpu": "8", "rdma/rdma_shared_device_a": "64"}
PROCESSES = ("containerd", "coredns", "apiserver-proxy", "kube-proxy", "kubelet")
# kube-proxy skips a Service with this label (any value): the one it names serves it instead.
PROXY_NAME_LABEL = "service.kubernetes.io/service-proxy-name"
CACHE = Path(os.environ.get("TRAINFORGE_CACHE", Path.home() / ".cache" / "trainforge"))
CONTAINERD_ROOT = CACHE / "node" / "containerd"  # images survive a down/up


def log(message: str) -> None:
    print(f"[real-node] {message}", flush=True, file=sys.stderr)


def sh(*args: str, check: bool = True, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, text=True, capture_output=True, **kwargs)  # type: ignore[call-overload]


def ctr(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ctr", f"--address={containerd_socket()}", "-n", "k8s.io", *args, check=check)


def containerd_socket() -> Path:
    return Path(json.loads(LOCK.read_text())["containerd_socket"])


# --- host state --------------------------------------------------------------------------------


def take_lock(state_dir: Path, socket: Path) -> None:
    if LOCK.exists():
        owner = json.loads(LOCK.read_text()).get("state_dir", "?")
        if Path(owner, "state.json").exists():
            raise SystemExit(
                f"a real node already runs on this machine (state in {owner}); "
                f"stop it with `cluster.py down --dir {owner}` first"
            )
    LOCK.write_text(json.dumps({"state_dir": str(state_dir), "containerd_socket": str(socket)}))


def snapshot_host(node_dir: Path) -> dict:
    """What `down` restores: sysctls, iptables, paths and cgroups that did not exist."""
    saved = {
        "sysctls": {k: Path("/proc/sys", k).read_text().strip() for k in SYSCTLS},
        "netns": sorted(p.name for p in NETNS_DIR.glob("*")) if NETNS_DIR.exists() else [],
        "created_paths": [
            str(p) for p in (KUBELET_FIXED_DIR, NETNS_DIR, SHIM_DIR) if not p.exists()
        ],
        "cgroups": [str(p) for p in CGROUP_ROOT.glob("*/kubepods")],
        "lo_addresses": [],
    }
    for tool in ("iptables", "ip6tables"):
        dump = sh(f"{tool}-save", check=False)
        (node_dir / f"{tool}.before").write_text(dump.stdout if dump.returncode == 0 else "")
    return saved


def restore_host(node_dir: Path, saved: dict) -> None:
    for key, value in saved.get("sysctls", {}).items():
        try:
            Path("/proc/sys", key).write_text(value)
        except OSError as e:
            log(f"could not restore {key}={value}: {e}")
    for tool in ("iptables", "ip6tables"):
        before = node_dir / f"{tool}.before"
        if before.exists():
            restore_iptables(tool, before.read_text())
    for address in saved.get("lo_addresses", []):
        sh("ip", "addr", "del", address, "dev", "lo", check=False)
    known = set(saved.get("cgroups", []))
    for cgroup in sorted(CGROUP_ROOT.glob("*/kubepods")):
        if str(cgroup) not in known:
            remove_cgroup_tree(cgroup)
    for path in saved.get("created_paths", []):
        unmount_under(Path(path))
        shutil.rmtree(path, ignore_errors=True)


def restore_iptables(tool: str, before: str) -> None:
    """Put back the tables as they were; tables the kubelet created are emptied."""
    now = sh(f"{tool}-save", check=False).stdout
    tables_before = {line[1:] for line in before.splitlines() if line.startswith("*")}
    for table in {line[1:] for line in now.splitlines() if line.startswith("*")} - tables_before:
        sh(tool, "-t", table, "-F", check=False)
        sh(tool, "-t", table, "-X", check=False)
    if before.strip():
        sh(f"{tool}-restore", input=before, check=False)


def remove_cgroup_tree(path: Path) -> None:
    for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            child.rmdir()
    try:
        path.rmdir()
    except OSError as e:
        log(f"could not remove cgroup {path}: {e}")


def mounts() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        points.append(point)
    return points


def unmount_under(root: Path) -> None:
    prefix = str(root).rstrip("/")
    for point in reversed(mounts()):
        if point == prefix or point.startswith(prefix + "/"):
            sh("umount", "-l", point, check=False)


# --- configuration ----------------------------------------------------------------------------


def containerd_config(node_dir: Path, socket: Path, pause_image: str) -> str:
    state = node_dir / "containerd-state"
    cri = '[plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{CONTAINERD_ROOT}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{node_dir / "containerd-opt"}"
{cri}]
  sandbox_image = "{pause_image}"
  # No CAP_SYS_RESOURCE here: without this the first sandbox fails with
  # "runc create failed: ... can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  disable_apparmor = true
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{node_dir / "cni"}"
"""


def cni_config(node_dir: Path) -> dict:
    return {
        "cniVersion": "0.4.0",
        "name": "trainforge",
        "plugins": [
            {
                "type": "ptp",
                # No masquerade: pod traffic never leaves this machine.
                "ipMasq": False,
                "mtu": 1500,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(node_dir / "cni-ipam"),
                },
            },
            {"type": "loopback"},
        ],
    }


def kubelet_config(node_dir: Path, pki: Path, socket: Path, port: int, healthz: int) -> dict:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": "127.0.0.1",
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{socket}",
        "clusterDNS": [DNS_SERVICE_IP],
        "clusterDomain": "cluster.local",
        # An empty resolver file: pods resolve cluster names only, nothing off the machine.
        "resolvConf": str(node_dir / "resolv.conf"),
        "failSwapOn": False,
        "serializeImagePulls": False,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
        },
        "protectKernelDefaults": False,
        "nodeStatusUpdateFrequency": "4s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "0s",
        "maxPods": 60,
        "podPidsLimit": -1,
        "shutdownGracePeriod": "0s",
    }


def kube_proxy_config(kubeconfig: Path, healthz: int, metrics: int) -> dict:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": NODE_NAME,
        # iptables: the only backend whose tool is installed here (Debian's iptables, on the
        # kernel's nf_tables); nftables mode needs the `nft` binary. `down` restores iptables.
        "mode": "iptables",
        # Traffic from outside the pod network to a ClusterIP is masqueraded, pod to pod is not.
        "clusterCIDR": POD_CIDR,
        "bindAddress": "127.0.0.1",
        "healthzBindAddress": f"127.0.0.1:{healthz}",
        "metricsBindAddress": f"127.0.0.1:{metrics}",
        # No NodePorts: on the host's addresses they would be reachable from off the machine,
        # and on 127.0.0.1 they need route_localnet (kube-proxy logs at each sync that it
        # skips 127.0.0.1 for that reason: the intended outcome).
        "nodePortAddresses": ["127.0.0.1/32"],
        "iptables": {"localhostNodePorts": False},
        # Leave the host's conntrack table size and timeouts as they are (0: do not set).
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }


def corefile(health: int, ready: int, kubeconfig: Path) -> str:
    return f""".:53 {{
    bind {DNS_SERVICE_IP}
    errors
    health 127.0.0.1:{health}
    ready 127.0.0.1:{ready}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} trainforge-local
        pods insecure
        ttl 5
    }}
}}
"""


# --- up / down ---------------------------------------------------------------------------------


def up(
    *,
    state_dir: Path,
    pki: Path,
    bin_dir: Path,
    apiserver_port: int,
    free_port: Callable[[], int],
    launch: Callable[[str, list[str]], None],
    wait_until: Callable[..., None],
    kubectl: list[str],
    data: dict,
    save: Callable[[], None],
    images: dict[str, Path],
) -> None:
    node_dir = state_dir / "node"
    node_dir.mkdir(parents=True, exist_ok=True)
    socket = node_dir / "containerd.sock"
    take_lock(state_dir, socket)
    data["real_node"] = {"host": snapshot_host(node_dir)}
    save()
    host = data["real_node"]["host"]

    # The two Service addresses pods need, on the host's loopback device.
    for ip in (API_SERVICE_IP, DNS_SERVICE_IP):
        address = f"{ip}/32"
        if sh("ip", "addr", "add", address, "dev", "lo", check=False).returncode == 0:
            host["lo_addresses"].append(address)
    save()

    CONTAINERD_ROOT.mkdir(parents=True, exist_ok=True)
    (node_dir / "cni").mkdir(exist_ok=True)
    (node_dir / "cni" / "10-trainforge.conflist").write_text(json.dumps(cni_config(node_dir)))
    (node_dir / "resolv.conf").write_text("")
    pause_ref = image_ref(images["pause"])
    (node_dir / "containerd.toml").write_text(containerd_config(node_dir, socket, pause_ref))
    launch(
        "containerd",
        [shutil.which("containerd") or "containerd", f"--config={node_dir / 'containerd.toml'}"],
    )
    wait_until("containerd", lambda: ctr("version", check=False).returncode == 0, 30)
    for archive in images.values():
        load_image(archive)

    launch(
        "apiserver-proxy",
        [
            shutil.which("socat") or "socat",
            f"TCP-LISTEN:443,bind={API_SERVICE_IP},reuseaddr,fork",
            f"TCP:127.0.0.1:{apiserver_port}",
        ],
    )
    # kube-proxy before the kubelet: it first looks for the node's IP for ~30 s (the node has
    # none, see above), time the kubelet's start overlaps.
    wait_until(
        "the kubernetes Service",
        lambda: sh(*kubectl, "get", "service", "kubernetes", check=False).returncode == 0,
        30,
    )
    sh(*kubectl, "label", "service", "kubernetes", f"{PROXY_NAME_LABEL}=trainforge-socat")
    proxy_healthz, proxy_metrics = free_port(), free_port()
    (node_dir / "kube-proxy.yaml").write_text(
        json.dumps(
            kube_proxy_config(state_dir / "kube-proxy.kubeconfig", proxy_healthz, proxy_metrics)
        )
    )
    launch("kube-proxy", [str(bin_dir / "kube-proxy"), f"--config={node_dir / 'kube-proxy.yaml'}"])
    dns_health, dns_ready = free_port(), free_port()
    (node_dir / "Corefile").write_text(
        corefile(dns_health, dns_ready, state_dir / "admin.kubeconfig")
    )
    launch("coredns", [str(bin_dir / "coredns"), "-conf", str(node_dir / "Corefile")])

    kubelet_port, kubelet_healthz = free_port(), free_port()
    (node_dir / "kubelet.yaml").write_text(
        json.dumps(kubelet_config(node_dir, pki, socket, kubelet_port, kubelet_healthz))
    )
    launch(
        "kubelet",
        [
            str(bin_dir / "kubelet"),
            f"--config={node_dir / 'kubelet.yaml'}",
            f"--kubeconfig={state_dir / 'kubelet.kubeconfig'}",
            f"--root-dir={node_dir / 'kubelet'}",
            f"--cert-dir={node_dir / 'kubelet-pki'}",
            f"--hostname-override={NODE_NAME}",
            "--node-labels=trainforge.io/real-node=true",
            "--v=1",
        ],
    )
    wait_until(
        "the real node",
        lambda: sh(*kubectl, "get", "node", NODE_NAME, check=False).returncode == 0,
        90,
    )
    patch = {"status": {"capacity": EXTENDED_RESOURCES, "allocatable": EXTENDED_RESOURCES}}
    sh(
        *kubectl,
        "patch",
        "node",
        NODE_NAME,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(patch),
    )
    sh(*kubectl, "wait", "--for=condition=Ready", f"node/{NODE_NAME}", "--timeout=90s")
    wait_until("CoreDNS", lambda: http_ok(f"http://127.0.0.1:{dns_ready}/ready"), 60)
    wait_until(
        "kube-proxy's first sync of the Services",
        lambda: proxy_synced(f"http://127.0.0.1:{proxy_metrics}/metrics"),
        90,
    )


def proxy_synced(url: str) -> bool:
    """kube-proxy's /healthz is OK while it starts; its metrics say when it wrote its rules."""
    import urllib.request

    metric = 'kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"}'
    with urllib.request.urlopen(url, timeout=2) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(metric):
                return float(line.split()[-1]) > 0
    return False


def http_ok(url: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.status == 200


def image_ref(archive: Path) -> str:
    return archive.with_suffix(".ref").read_text().strip()


def load_image(archive: Path) -> None:
    """Import an OCI archive into the node's containerd once (its root is cached)."""
    ref = image_ref(archive)
    if ctr("images", "ls", "-q", f"name=={ref}").stdout.strip():
        return
    started = time.monotonic()
    name = ref.rsplit(":", 1)[0]
    # Older builds of the same image only take space in the cached store. `ctr images import`
    # leaves a 24 h lease on what it imported, which would keep a removed build's content and
    # snapshots (6 GB for the trainer) from the garbage collector: drop those leases (the
    # images still reference what they use), then remove the old builds and collect at once.
    for lease in ctr("leases", "ls", "-q", check=False).stdout.split():
        ctr("leases", "rm", lease, check=False)
    for old in ctr("images", "ls", "-q", f"name~=^{name}:").stdout.split():
        ctr("images", "rm", "--sync", old, check=False)
    ctr("images", "import", "--base-name", name, str(archive))
    log(f"loaded {ref} in {time.monotonic() - started:.0f}s")


def down(state_dir: Path, data: dict, stop: Callable[[str], None]) -> None:
    """Stop the kubelet, then every container it left, then containerd; restore the host."""
    node = data.get("real_node")
    if node is None:
        return
    node_dir = state_dir / "node"
    stop("kubelet")
    if LOCK.exists() and json.loads(LOCK.read_text()).get("state_dir") == str(state_dir):
        socket = containerd_socket()
        if socket.exists():
            # The kubelet is gone, so nothing restarts these; SIGKILL is what a node loss does.
            for cid in ctr("containers", "ls", "-q", check=False).stdout.split():
                ctr("tasks", "kill", "-a", "-s", "SIGKILL", cid, check=False)
                ctr("tasks", "delete", "--force", cid, check=False)
                ctr("containers", "delete", cid, check=False)
    for name in ("kube-proxy", "coredns", "apiserver-proxy", "containerd"):
        stop(name)
    proxy = data.get("processes", {}).get("kube-proxy")
    if proxy:
        # Its chains and rules in every table, for both IP families (restore_host then puts
        # back the tables as they were before `up`).
        # It also tries the IPVS and nftables backends and fails on their missing tools
        # (ipset, nft: nothing of theirs was created); only other errors are worth showing.
        cleanup = sh(proxy["binary"], "--cleanup", check=False)
        expected = ("not found in $PATH", "tearing down rules")
        errors = [
            line
            for line in cleanup.stderr.splitlines()
            if line.startswith("E") and not any(text in line for text in expected)
        ]
        if errors:
            log("kube-proxy --cleanup: " + "\n".join(errors[-20:]))
    host = node.get("host", {})
    known_netns = set(host.get("netns", []))
    if NETNS_DIR.exists():
        for ns in NETNS_DIR.glob("*"):
            if ns.name not in known_netns:
                sh("umount", "-l", str(ns), check=False)
                ns.unlink(missing_ok=True)
    unmount_under(node_dir)
    unmount_under(CONTAINERD_ROOT)
    restore_host(node_dir, host)
    if LOCK.exists() and json.loads(LOCK.read_text()).get("state_dir") == str(state_dir):
        LOCK.unlink()
