"""A real Kueue manager (built from its Go module by hack/cluster/build-kueue.sh) as a host
process on loopback, configured the way docs/install.md tells a platform team: TrainingJob
as an external framework, so Kueue treats the Workloads trainforge owns as a job's.

Its webhooks are served on 127.0.0.1 with a self-signed certificate, but no webhook
configuration points at them: the API server of the local control plane cannot reach a
Service, and Kueue's admission webhooks only default and validate Kueue objects (this file
writes them complete) and the built-in kinds, which are not enabled here. The visibility
API server (VisibilityOnDemand) is off: it would listen on every interface.

Without Kueue's internal certificate management (which waits for webhook configurations it can
inject a CA into) the manager reads its metrics certificate from the fixed path
/etc/kueue/metrics/certs; it runs in a private mount namespace whose /etc is an overlay with
that folder, so the host's /etc is never written (this needs root, as the real node does).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kubetest import REPO, Kubectl, Process, free_port, wait_for

EXTERNAL_FRAMEWORK = "TrainingJob.v1alpha1.trainforge.io"


def kueue_dir() -> Path:
    out = subprocess.run(
        ["bash", str(REPO / "hack/cluster/build-kueue.sh")],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


class Kueue(Process):
    """Kueue's manager, a host process on the test control plane."""


def install_crds(kubectl: Kubectl) -> None:
    crds = sorted((kueue_dir() / "crds").glob("*.yaml"))
    kubectl("apply", "--server-side", "--force-conflicts", *(f"-f={c}" for c in crds))
    kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")


def start_kueue(kubeconfig: Path, workdir: Path) -> Kueue:
    certs = workdir / "certs"
    certs.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(certs / "tls.key"), "-out", str(certs / "tls.crt"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    health = free_port()
    config = {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": "kueue-system",
        "manageJobsWithoutQueueName": False,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"},
        "metrics": {"bindAddress": f"127.0.0.1:{free_port()}"},
        "webhook": {"host": "127.0.0.1", "port": free_port(), "certDir": str(certs)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "integrations": {"frameworks": [], "externalFrameworks": [EXTERNAL_FRAMEWORK]},
    }
    (workdir / "config.yaml").write_text(json.dumps(config))
    log = workdir / "kueue.log"
    out = open(log, "ab")  # noqa: SIM115 - the child process owns it
    overlay = workdir / "etc-overlay"
    overlay.mkdir(exist_ok=True)
    etc = (
        f"mount -t tmpfs none {overlay} && mkdir -p {overlay}/up/kueue/metrics {overlay}/work"
        f" && cp -r {certs} {overlay}/up/kueue/metrics/certs && mount -t overlay overlay"
        f" -o lowerdir=/etc,upperdir={overlay}/up,workdir={overlay}/work /etc"
        ' && exec "$@"'
    )
    argv = [
        str(kueue_dir() / "bin" / "kueue"),
        f"--config={workdir / 'config.yaml'}",
        f"--kubeconfig={kubeconfig}",
        "--feature-gates=VisibilityOnDemand=false",
        "--zap-log-level=2",
    ]
    process = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", etc, "kueue", *argv],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    out.close()
    kueue = Kueue(process, log)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"kueue exited ({process.returncode}):\n{kueue.logs()[-4000:]}")
        probe = subprocess.run(
            ["curl", "-sf", f"http://127.0.0.1:{health}/readyz"], capture_output=True
        )
        return probe.returncode == 0

    wait_for(ready, "Kueue's readiness probe", timeout=120, interval=0.5)
    return kueue


@contextmanager
def running_kueue(kubeconfig: Path, kubectl: Kubectl, workdir: Path) -> Iterator[Kueue]:
    """Kueue's CRDs installed and its manager running, stopped at the end; a panic in its log
    fails the test."""
    install_crds(kubectl)
    manager = start_kueue(kubeconfig, workdir)
    try:
        yield manager
    finally:
        manager.stop()
    assert "panic" not in manager.logs(), manager.logs()[-5000:]
