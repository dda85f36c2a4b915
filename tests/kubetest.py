"""Helpers for tests that talk to the local control plane (imported by conftest and tests)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLUSTER_SCRIPT = REPO / "hack" / "cluster" / "cluster.py"

Kubectl = Callable[..., "subprocess.CompletedProcess[str]"]


@dataclass(frozen=True)
class Cluster:
    kubeconfig: Path
    state_dir: Path | None  # None when reusing a cluster this session did not start

    @property
    def bin_dir(self) -> Path:
        out = subprocess.run(
            ["bash", str(REPO / "hack/cluster/build.sh")],
            check=True,
            capture_output=True,
            text=True,
        )
        return Path(out.stdout.strip().splitlines()[-1])


@contextmanager
def control_plane(prefix: str = "trainforge-test-cluster-") -> Iterator[Cluster]:
    """A local control plane (hack/cluster/cluster.py) in a new state directory, stopped and
    removed on exit."""
    state_dir = Path(tempfile.mkdtemp(prefix=prefix))
    up = subprocess.run(
        [sys.executable, str(CLUSTER_SCRIPT), "up", "--dir", str(state_dir)],
        capture_output=True,
        text=True,
    )
    try:
        if up.returncode != 0:
            raise AssertionError(f"the local control plane did not start:\n{up.stderr[-4000:]}")
        yield Cluster(state_dir / "kubeconfig", state_dir)
    finally:
        subprocess.run(
            [sys.executable, str(CLUSTER_SCRIPT), "down", "--dir", str(state_dir)],
            capture_output=True,
        )


def make_kubectl(kubeconfig: Path) -> Kubectl:
    def kubectl(
        *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["kubectl", f"--kubeconfig={kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stderr}{result.stdout}"
            )
        return result

    return kubectl


def wait_for(
    condition: Callable[[], object], what: str, timeout: float = 60, interval: float = 0.25
) -> object:
    """Poll `condition` until it returns something truthy; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextmanager
def fresh_namespace(kubectl: Kubectl, test_name: str) -> Iterator[str]:
    """A namespace named after the test, ready for pods (its default ServiceAccount exists),
    deleted afterwards without waiting (its pods stop in the background)."""
    slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    name = f"{slug}-{uuid.uuid4().hex[:5]}"
    kubectl("create", "namespace", name)
    wait_for(
        lambda: kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
        "the namespace's default ServiceAccount",
    )
    try:
        yield name
    finally:
        kubectl("delete", "namespace", name, "--wait=false", check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Process:
    """A program the tests started, with its output in `log`."""

    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Operator(Process):
    """`trainforge run` as a subprocess, as a user would start it (loopback endpoints)."""

    metrics_port: int

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies under the operator."""
        self.process.kill()
        self.process.wait(timeout=30)


def start_operator(
    kubeconfig: Path, log: Path, *args: str, env: dict[str, str] | None = None
) -> Operator:
    metrics_port = free_port()
    out = open(log, "ab")  # noqa: SIM115 - the child process owns it
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trainforge.cli",
            "run",
            "--listen-address=127.0.0.1",
            f"--metrics-port={metrics_port}",
            f"--liveness-port={free_port()}",
            "--resync-seconds=5",
            *args,
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, "KUBECONFIG": str(kubeconfig), **(env or {})},
    )
    out.close()
    return Operator(process, log, metrics_port)
