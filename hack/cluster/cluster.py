#!/usr/bin/env python3
"""The local Kubernetes control plane used by trainforge's tests.

    cluster.py up       start etcd, kube-apiserver (RBAC), kube-controller-manager,
                        kube-scheduler and KWOK on 127.0.0.1 (free ports), add the fake nodes
                        and third-party CRDs, wait until the API and the nodes are Ready
    cluster.py up --real-node
                        the same with one real node (`localhost`: kubelet, containerd, CNI,
                        CoreDNS; see node.py) instead of the fake ones, and the project's
                        images built (images.sh) and loaded into it
    cluster.py down     stop exactly the processes `up` started (by PID) and remove the state
    cluster.py status   show whether each component runs and the nodes

State (certificates, kubeconfigs, logs, PIDs) lives in --dir (default .cluster/ in the repo);
etcd's data lives on tmpfs (/dev/shm). Binaries come from build.sh's versioned cache.
Standard library only: it runs before the project's virtual environment exists.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import node

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SERVICE_CIDR = "10.96.0.0/16"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


def log(message: str) -> None:
    print(f"[cluster] {message}", file=sys.stderr, flush=True)


def run(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=True, text=True, capture_output=True, **kwargs)  # type: ignore[call-overload]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class State:
    dir: Path

    @property
    def pki(self) -> Path:
        return self.dir / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    def load(self) -> dict:
        return json.loads(self.state_file.read_text()) if self.state_file.exists() else {}

    def save(self, data: dict) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.rename(self.state_file)


# --- binaries -----------------------------------------------------------------------------


def binaries(script: str = "build.sh") -> Path:
    out = run("bash", str(HERE / script), stderr=None)  # build progress goes to the terminal
    return Path(out.stdout.strip().splitlines()[-1])


def images() -> dict[str, Path]:
    """The images the real node runs, built by images.sh (cached): name -> OCI archive."""
    out = run("bash", str(HERE / "images.sh"), stderr=None)
    return {name: Path(path) for name, path in (line.split() for line in out.stdout.splitlines())}


def etcd_binary() -> str:
    found = shutil.which("etcd")
    if found:
        return found
    log("etcd not found: installing Debian's etcd-server")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "etcd-server"], check=True, env=env)
    found = shutil.which("etcd")
    if not found:
        raise SystemExit("etcd-server installed but `etcd` is not on PATH")
    return found


# --- certificates ---------------------------------------------------------------------------


def openssl(*args: str) -> None:
    run("openssl", *args)


def make_pki(pki: Path, real_node: bool) -> None:
    """A CA, the apiserver's serving certificate, one client certificate per component, and the
    service-account signing key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "3650",
        "-keyout",
        str(pki / "ca.key"),
        "-out",
        str(pki / "ca.crt"),
        "-subj",
        "/CN=trainforge-local-ca",
    )
    sans = (
        "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,"
        "DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.96.0.1"
    )
    certs = {
        "apiserver": ("/CN=kube-apiserver", f"subjectAltName={sans}\nextendedKeyUsage=serverAuth"),
        "admin": ("/O=system:masters/CN=trainforge-admin", "extendedKeyUsage=clientAuth"),
        "controller-manager": ("/CN=system:kube-controller-manager", "extendedKeyUsage=clientAuth"),
        "scheduler": ("/CN=system:kube-scheduler", "extendedKeyUsage=clientAuth"),
        # KWOK acts for every fake node (status, leases, pods); the tests' cluster-admin.
        "kwok": ("/O=system:masters/CN=kwok", "extendedKeyUsage=clientAuth"),
    }
    if real_node:
        # The kubelet's identity (the Node authorizer's system:node:<name>), and the client
        # certificate the apiserver shows the kubelet for logs, exec and port-forward.
        certs["kubelet"] = (
            f"/O=system:nodes/CN=system:node:{node.NODE_NAME}",
            "extendedKeyUsage=clientAuth",
        )
        certs["kubelet-client"] = (
            "/O=system:masters/CN=kube-apiserver-kubelet-client",
            "extendedKeyUsage=clientAuth",
        )
        # kube-proxy's identity: the default RBAC binds system:node-proxier to this user.
        certs["kube-proxy"] = ("/CN=system:kube-proxy", "extendedKeyUsage=clientAuth")
    for name, (subject, extensions) in certs.items():
        key, csr, crt = (pki / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(csr),
            "-subj",
            subject,
        )
        ext_file = pki / f"{name}.ext"
        ext_file.write_text(extensions + "\n")
        openssl(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(pki / "ca.crt"),
            "-CAkey",
            str(pki / "ca.key"),
            "-CAcreateserial",
            "-days",
            "3650",
            "-out",
            str(crt),
            "-extfile",
            str(ext_file),
        )
    openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
    openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))


def write_kubeconfig(path: Path, server: str, pki: Path, user: str) -> None:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "trainforge-local",
                        "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")},
                    }
                ],
                "users": [
                    {
                        "name": user,
                        "user": {
                            "client-certificate": str(pki / f"{user}.crt"),
                            "client-key": str(pki / f"{user}.key"),
                        },
                    }
                ],
                "contexts": [
                    {
                        "name": "trainforge-local",
                        "context": {"cluster": "trainforge-local", "user": user},
                    }
                ],
                "current-context": "trainforge-local",
            },
            indent=2,
        )
    )


# --- processes --------------------------------------------------------------------------------


def start(state: State, name: str, argv: list[str]) -> int:
    logs = state.dir / "logs"
    logs.mkdir(exist_ok=True)
    with open(logs / f"{name}.log", "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return proc.pid


def is_ours(pid: int, binary: str) -> bool:
    """True when `pid` still runs the binary we started (PIDs get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return False
    return cmdline == binary


def stop(pid: int, binary: str, timeout: float = 15.0) -> None:
    if not is_ours(pid, binary):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child (started by an earlier `up`)
            done = 0 if is_ours(pid, binary) else pid
        if done == pid or not is_ours(pid, binary):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def wait_until(what: str, check, timeout: float, state: State | None = None) -> None:
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as e:
            last_error = str(e)
        time.sleep(0.2)
    hint = f"; logs in {state.dir / 'logs'}" if state else ""
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what} ({last_error}){hint}")


def https_ok(url: str, pki: Path | None, user: str = "admin") -> bool:
    """GET url as `user` (verifying the server against our CA), or anonymously and unverified
    when pki is None."""
    if pki is None:
        ctx = ssl._create_unverified_context()
    else:
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / f"{user}.crt"), str(pki / f"{user}.key"))
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:
            return resp.status == 200
    except urllib.error.HTTPError:
        return False


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.status == 200


# --- commands ----------------------------------------------------------------------------------


def alive(data: dict) -> bool:
    procs = data.get("processes", {})
    return bool(procs) and all(is_ours(p["pid"], p["binary"]) for p in procs.values())


def up(state: State, real_node: bool = False) -> None:
    data = state.load()
    if alive(data):
        log("already running")
        print_access(state)
        return
    if data:
        down(state, quiet=True)
    started = time.monotonic()
    bin_dir = binaries()
    if real_node:
        node_bin = binaries("build-node.sh")
        node_images = images()
    etcd = etcd_binary()
    state.dir.mkdir(parents=True, exist_ok=True)
    make_pki(state.pki, real_node)
    ports = {
        name: free_port()
        for name in ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kwok")
    }
    shm = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else state.dir
    etcd_data = Path(tempfile.mkdtemp(prefix="trainforge-etcd-", dir=shm))
    server = f"https://127.0.0.1:{ports['apiserver']}"
    data = {"ports": ports, "server": server, "etcd_data": str(etcd_data), "processes": {}}
    state.save(data)

    def launch(name: str, argv: list[str]) -> None:
        data["processes"][name] = {"pid": start(state, name, argv), "binary": argv[0]}
        state.save(data)

    etcd_url = f"http://127.0.0.1:{ports['etcd']}"
    launch(
        "etcd",
        [
            etcd,
            "--name=trainforge",
            f"--data-dir={etcd_data}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{ports['etcd-peer']}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{ports['etcd-peer']}",
            f"--initial-cluster=trainforge=http://127.0.0.1:{ports['etcd-peer']}",
            "--unsafe-no-fsync",
            "--quota-backend-bytes=4294967296",
        ],
    )
    wait_until("etcd", lambda: http_ok(f"{etcd_url}/health"), 30, state)

    pki = state.pki
    audit_policy = state.dir / "audit-policy.yaml"
    # Writes only, at metadata level: enough to count the API writes each client makes
    # (bench/) without slowing the server down with every read.
    audit_policy.write_text(
        json.dumps(
            {
                "apiVersion": "audit.k8s.io/v1",
                "kind": "Policy",
                "omitStages": ["RequestReceived"],
                "rules": [
                    {"level": "Metadata", "verbs": ["create", "update", "patch", "delete"]},
                    {"level": "None"},
                ],
            }
        )
    )
    launch(
        "kube-apiserver",
        [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={ports['apiserver']}",
            "--authorization-mode=Node,RBAC",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # The only apiserver endpoint is loopback, which Endpoints may not hold.
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            f"--audit-policy-file={audit_policy}",
            f"--audit-log-path={state.dir / 'logs' / 'audit.log'}",
            "--audit-log-maxsize=200",
            "--audit-log-maxbackup=1",
            *(
                [
                    f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}",
                    f"--kubelet-client-key={pki / 'kubelet-client.key'}",
                ]
                if real_node
                else []
            ),
        ],
    )
    wait_until("kube-apiserver /readyz", lambda: https_ok(f"{server}/readyz", pki), 90, state)

    node_users = ["kubelet", "kube-proxy"] if real_node else []
    for user in ("admin", "controller-manager", "scheduler", "kwok", *node_users):
        write_kubeconfig(state.dir / f"{user}.kubeconfig", server, pki, user)
    shutil.copy(state.dir / "admin.kubeconfig", state.kubeconfig)

    kcm_config = state.dir / "controller-manager.kubeconfig"
    launch(
        "kube-controller-manager",
        [
            str(bin_dir / "kube-controller-manager"),
            f"--kubeconfig={kcm_config}",
            f"--authentication-kubeconfig={kcm_config}",
            f"--authorization-kubeconfig={kcm_config}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports['controller-manager']}",
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--kube-api-qps=200",
            "--kube-api-burst=400",
        ],
    )
    sched_config = state.dir / "scheduler.kubeconfig"
    launch(
        "kube-scheduler",
        [
            str(bin_dir / "kube-scheduler"),
            f"--kubeconfig={sched_config}",
            f"--authentication-kubeconfig={sched_config}",
            f"--authorization-kubeconfig={sched_config}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports['scheduler']}",
            "--leader-elect=false",
        ],
    )
    launch(
        "kwok",
        [
            str(bin_dir / "kwok"),
            f"--kubeconfig={state.dir / 'kwok.kubeconfig'}",
            f"--config={HERE / 'kwok.yaml'}",
            f"--server-address=127.0.0.1:{ports['kwok']}",
        ],
    )
    kubectl = ["kubectl", f"--kubeconfig={state.kubeconfig}"]
    for name, port in (
        ("kube-controller-manager", "controller-manager"),
        ("kube-scheduler", "scheduler"),
    ):
        # Their serving certificates are self-signed at start, so only the status counts here.
        url = f"https://127.0.0.1:{ports[port]}/healthz"
        wait_until(f"{name} /healthz", lambda url=url: https_ok(url, None), 60, state)
    run(*kubectl, "apply", "-f", str(HERE / "crds"))
    if real_node:
        # The real node alone: with the fake nodes next to it the scheduler would put the
        # pods that must really run on nodes where nothing runs.
        node.up(
            state_dir=state.dir,
            pki=pki,
            bin_dir=node_bin,
            apiserver_port=ports["apiserver"],
            free_port=free_port,
            launch=launch,
            wait_until=lambda what, check, timeout: wait_until(what, check, timeout, state),
            kubectl=kubectl,
            data=data,
            save=lambda: state.save(data),
            images=node_images,
        )
        run(*kubectl, "apply", "-f", "-", input=json.dumps(storage(real_dir=state.dir)))
    else:
        run(*kubectl, "apply", "-f", str(HERE / "nodes.yaml"))
        run(*kubectl, "apply", "-f", "-", input=json.dumps(storage()))
        run(*kubectl, "wait", "--for=condition=Ready", "node", "--all", "--timeout=60s")
    run(*kubectl, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    # Pods can only be created once the namespace's default ServiceAccount exists.
    wait_until(
        "the default ServiceAccount",
        lambda: (
            subprocess.run([*kubectl, "get", "sa", "default"], capture_output=True).returncode == 0
        ),
        60,
        state,
    )
    log(f"ready in {time.monotonic() - started:.1f}s")
    print_access(state)


def storage(volumes: int = 64, real_dir: Path | None = None) -> dict:
    """A default StorageClass backed by a pool of pre-made PersistentVolumes: there is no
    provisioner here, but kube-controller-manager's real PV binder binds claims to them.
    With a real node (real_dir) they are directories under real_dir/volumes that pods mount,
    writable by any user (the images run as a non-root user; hostPath ignores fsGroup)."""
    items: list[dict] = [
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": "standard",
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            },
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "Immediate",
        }
    ]
    for i in range(volumes):
        path = f"/nonexistent/trainforge-pool-{i:03d}"  # KWOK's nodes have no kubelet
        if real_dir is not None:
            path = str(real_dir / "volumes" / f"pool-{i:03d}")
            Path(path).mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o1777)
        items.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"pool-{i:03d}", "labels": {"type": "kwok"}},
                "spec": {
                    "capacity": {"storage": "10Ti"},
                    "storageClassName": "standard",
                    "accessModes": ["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "hostPath": {"path": path},
                },
            }
        )
    return {"apiVersion": "v1", "kind": "List", "items": items}


def print_access(state: State) -> None:
    print(f"kubeconfig: {state.kubeconfig}")
    print(f"export KUBECONFIG={state.kubeconfig}")


def down(state: State, quiet: bool = False) -> None:
    data = state.load()
    if not data and not quiet:
        log("not running")

    def stop_component(name: str) -> None:
        proc = data.get("processes", {}).get(name)
        if proc:
            stop(proc["pid"], proc["binary"])

    node.down(state.dir, data, stop_component)
    # Stop in reverse start order so no component logs errors about a vanished apiserver.
    for name in reversed(COMPONENTS):
        proc = data.get("processes", {}).get(name)
        if proc:
            stop(proc["pid"], proc["binary"])
    if data.get("etcd_data"):
        shutil.rmtree(data["etcd_data"], ignore_errors=True)
    shutil.rmtree(state.dir, ignore_errors=True)
    if not quiet:
        log("stopped")


def status(state: State) -> int:
    data = state.load()
    if not data:
        print("not running")
        return 1
    healthy = True
    for name in (*COMPONENTS, *(node.PROCESSES if "real_node" in data else ())):
        proc = data.get("processes", {}).get(name)
        running = bool(proc) and is_ours(proc["pid"], proc["binary"])
        healthy &= running
        print(
            f"{name:26} {'running' if running else 'STOPPED'}"
            f"{'  pid ' + str(proc['pid']) if proc else ''}"
        )
    print(f"server: {data['server']}")
    if healthy:
        subprocess.run(["kubectl", f"--kubeconfig={state.kubeconfig}", "get", "nodes"])
        print_access(state)
    return 0 if healthy else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument(
        "--real-node",
        action="store_true",
        help="up: one real node (kubelet + containerd) instead of the fake ones; needs root",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=REPO / ".cluster",
        help="state directory (default: .cluster/ in the repo)",
    )
    args = parser.parse_args()
    state = State(args.dir.resolve())
    if args.command == "up":
        try:
            up(state, real_node=args.real_node)
        except BaseException:
            log("start failed; stopping what was started")
            logs = state.dir / "logs"
            if logs.exists():
                kept = Path(tempfile.mkdtemp(prefix="trainforge-cluster-logs-"))
                shutil.copytree(logs, kept, dirs_exist_ok=True)
                log(f"component logs kept in {kept}")
            down(state, quiet=True)
            raise
        return 0
    if args.command == "down":
        down(state)
        return 0
    return status(state)


if __name__ == "__main__":
    sys.exit(main())
