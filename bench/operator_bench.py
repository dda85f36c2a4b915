"""Operator benchmark: many TrainingJobs at once on the real local control plane.

    .venv/bin/python bench/operator_bench.py [--jobs 200] [--rss-jobs 1000] [--workers 4]

Starts its own control plane (hack/cluster/cluster.py, its own state dir) with extra KWOK
nodes sized for the load, runs `trainforge run` as a subprocess, and measures:
  (a) seconds from the first job's creation until all pods exist,
  (b) per-job latency from the job's ADDED watch event to its last worker's ADDED event
      (median, p95), both seen by one watch in this process,
  (c) the operator's peak RSS (VmHWM),
  (d) API writes per job made by the operator until all workers exist (from the apiserver's
      audit log: writes in the benchmark namespace with the operator's client user agent).
Then creates --rss-jobs jobs for the RSS measurement, then --progress-jobs one-worker jobs
whose worker pushes live progress every 10 s for --progress-seconds (as the trainer does, with
a token bound to its pod), measuring the operator's status-write rate, CPU and RSS. Prints
JSON; bench/REPORT.md explains. Not a test: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from kubetest import free_port, make_kubectl, start_operator, wait_for  # noqa: E402

sys.path.insert(0, str(REPO / "trainer_image"))
from trainforge_trainer.push import push_progress  # noqa: E402

NAMESPACE = "bench"


def bench_nodes(count: int) -> dict[str, Any]:
    """Roomy KWOK nodes so thousands of small pods all get scheduled."""
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": f"kwok-bench-{i}",
                    "annotations": {"kwok.x-k8s.io/node": "fake"},
                    "labels": {"type": "kwok", "trainforge.io/bench": "true"},
                },
                "status": {
                    "allocatable": {"cpu": "1000", "memory": "4Ti", "pods": "1000"},
                    "capacity": {"cpu": "1000", "memory": "4Ti", "pods": "1000"},
                },
            }
            for i in range(count)
        ],
    }


def job(name: str, workers: int) -> dict[str, Any]:
    return {
        "apiVersion": "trainforge.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "workers": workers,
            "image": "example.com/trainer:1",
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
            "scheduling": {"nodeSelector": {"trainforge.io/bench": "true"}},
        },
    }


class Watcher:
    """Receive times of ADDED events for jobs and pods in the benchmark namespace."""

    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        self.job_added: dict[str, float] = {}
        self.job_running: dict[str, float] = {}  # first seen with status.phase Running
        self.pod_added: dict[str, float] = {}
        self._api = api
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._watch, args=(kind,), daemon=True)
            for kind in ("jobs", "pods")
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self, kind: str) -> None:
        # A watch the API server ends or breaks (likely on a loaded machine) starts again; its
        # first events re-list what exists, and only first sightings are kept.
        while not self._stop.is_set():
            try:
                self._watch_once(kind)
            except Exception as e:
                if self._stop.is_set():  # the cluster going away at the end is expected
                    return
                print(f"watch of {kind} broke, restarting: {e!r}", file=sys.stderr)
                time.sleep(1)

    def _watch_once(self, kind: str) -> None:
        w = kubernetes.watch.Watch()
        if kind == "jobs":
            custom = kubernetes.client.CustomObjectsApi(self._api)
            stream = w.stream(
                custom.list_namespaced_custom_object,
                "trainforge.io",
                "v1alpha1",
                NAMESPACE,
                "trainingjobs",
                timeout_seconds=3600,
            )
            seen = self.job_added
        else:
            core = kubernetes.client.CoreV1Api(self._api)
            stream = w.stream(
                core.list_namespaced_pod, NAMESPACE, timeout_seconds=3600, _preload_content=False
            )
            seen = self.pod_added
        try:
            for event in stream:
                if self._stop.is_set():
                    break
                if event["type"] not in ("ADDED", "MODIFIED"):
                    continue
                obj = event["object"]
                name = obj["metadata"]["name"] if isinstance(obj, dict) else obj.metadata.name
                if event["type"] == "ADDED":
                    seen.setdefault(name, time.monotonic())
                if kind == "jobs" and (obj.get("status") or {}).get("phase") == "Running":
                    self.job_running.setdefault(name, time.monotonic())
        finally:
            w.stop()


def serves(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except OSError:
        return False


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def component_pids(state_dir: Path, operator_pid: int) -> dict[str, int]:
    state = json.loads((state_dir / "state.json").read_text())
    pids = {name: proc["pid"] for name, proc in state["processes"].items()}
    return {**pids, "trainforge-operator": operator_pid}


def audit_lines(audit_log: Path) -> list[str]:
    return audit_log.read_text().splitlines() if audit_log.exists() else []


def operator_writes(lines: list[str]) -> list[dict[str, Any]]:
    """Writes by the operator: kube.py is its only writer, with the Python client's agent."""
    writes = []
    for line in lines:
        entry = json.loads(line)
        ref = entry.get("objectRef", {})
        if entry.get("stage") != "ResponseComplete" or ref.get("namespace") != NAMESPACE:
            continue
        agent = entry.get("userAgent", "")
        if entry["verb"] in ("create", "update", "patch", "delete") and agent.startswith(
            "OpenAPI-Generator"
        ):
            writes.append(entry)
    return writes


def writes_until_workers_exist(writes: list[dict[str, Any]], names: list[str]) -> float:
    """Mean per job of the operator's writes up to its last worker pod's creation (the
    issue's measure), attributing each write to its job by object name."""
    by_job: dict[str, list[tuple[str, str, str]]] = {n: [] for n in names}
    for entry in writes:
        ref = entry["objectRef"]
        job = ref.get("name", "").split("-worker-")[0]
        if job in by_job:
            by_job[job].append((entry["stageTimestamp"], ref["resource"], entry["verb"]))
    counts = []
    for entries in by_job.values():
        last = max(t for t, resource, verb in entries if resource == "pods" and verb == "create")
        counts.append(sum(1 for t, _, _ in entries if t <= last))
    return statistics.mean(counts)


def create_jobs(kubectl: Any, names: list[str], workers: int) -> None:
    items = [job(n, workers) for n in names]
    kubectl(
        "create",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}),
        timeout=600,
    )


def scenario(
    kubectl: Any, watcher: Watcher, operator_pid: int, state_dir: Path, jobs: int, workers: int
) -> dict[str, Any]:
    names = [f"job-{i:04d}" for i in range(jobs)]
    audit_log = state_dir / "logs" / "audit.log"
    audit_before = len(audit_lines(audit_log))
    pids = component_pids(state_dir, operator_pid)
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    start = time.monotonic()
    create_jobs(kubectl, names, workers)
    expected = {f"{n}-worker-{w}" for n in names for w in range(workers)}
    wait_for(
        lambda: expected <= watcher.pod_added.keys(),
        "all pods to exist",
        timeout=1800,
        interval=0.5,
    )
    all_pods = max(watcher.pod_added[p] for p in expected) - start
    cpu = {name: round(cpu_seconds(pid) - cpu_before[name], 1) for name, pid in pids.items()}
    wait_for(
        lambda: set(names) <= watcher.job_running.keys(),
        "all jobs to be Running",
        timeout=1800,
        interval=0.5,
    )
    all_running = max(watcher.job_running[n] for n in names) - start
    operator_cpu = cpu_seconds(operator_pid) - cpu_before["trainforge-operator"]
    latencies = sorted(
        max(watcher.pod_added[f"{n}-worker-{w}"] for w in range(workers)) - watcher.job_added[n]
        for n in names
    )
    time.sleep(5)  # let the audit log flush and the status writes settle
    writes = operator_writes(audit_lines(audit_log)[audit_before:])
    status_writes = [
        e
        for e in writes
        if e["objectRef"].get("resource") == "trainingjobs"
        and e["objectRef"].get("subresource") == "status"
    ]
    return {
        "jobs": jobs,
        "workers": workers,
        "pods": jobs * workers,
        "seconds_until_all_pods_exist": round(all_pods, 2),
        "job_latency_p50_s": round(statistics.median(latencies), 3),
        "job_latency_p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3),
        "operator_peak_rss_mb": round(peak_rss_mb(operator_pid), 1),
        "operator_writes_per_job_until_workers_exist": round(
            writes_until_workers_exist(writes, names), 2
        ),
        "operator_writes_per_job_including_status_updates": round(len(writes) / jobs, 2),
        # The jobs stay Running on KWOK: every status write of the scenario is one until Running.
        "status_writes_per_job_until_running": round(len(status_writes) / jobs, 2),
        "seconds_until_all_jobs_running": round(all_running, 2),
        "operator_cpu_seconds_until_all_running": round(operator_cpu, 1),
        "operator_cpu_seconds_per_job_until_running": round(operator_cpu / jobs, 4),
        "cpu_seconds_until_all_pods_exist": cpu,
    }


def current_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def progress_scenario(
    kubectl: Any,
    api: kubernetes.client.ApiClient,
    operator_pid: int,
    state_dir: Path,
    url: str,
    jobs: int,
    seconds: float,
) -> dict[str, Any]:
    """`jobs` running one-worker jobs, each pushing progress every 10 s as rank 0 would."""
    names = [f"live-{i:04d}" for i in range(jobs)]
    create_jobs(kubectl, names, 1)
    core = kubernetes.client.CoreV1Api(api)

    def running() -> dict[str, str] | None:
        pods = core.list_namespaced_pod(NAMESPACE, label_selector="trainforge.io/job-name").items
        uids = {
            p.metadata.name: p.metadata.uid
            for p in pods
            if p.status.phase == "Running" and p.metadata.name.startswith("live-")
        }
        return uids if len(uids) == jobs else None

    uids: dict[str, str] = wait_for(running, "all progress jobs running", timeout=1800, interval=5)  # type: ignore[assignment]
    tokens = {}
    for pod, uid in uids.items():
        request = {
            "spec": {
                "audiences": ["trainforge-progress"],
                "expirationSeconds": 3600,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid},
            }
        }
        tokens[pod] = core.create_namespaced_service_account_token(
            "default", NAMESPACE, request
        ).status.token
    time.sleep(35)  # the jobs' Running status writes are done; the write interval has passed
    audit_log = state_dir / "logs" / "audit.log"
    audit_before = len(audit_lines(audit_log))
    cpu_before = cpu_seconds(operator_pid)
    codes: dict[int, int] = {}
    lock = threading.Lock()
    pods = sorted(tokens)
    start = time.monotonic()

    def pusher(offset: int) -> None:
        # One thread per 1/16 of the pods; each pod pushes every 10 s, spread over the period.
        mine = pods[offset::16]
        step = 0
        while time.monotonic() - start < seconds:
            step += 1
            for i, pod in enumerate(mine):
                due = start + (step - 1) * 10 + (i * 10 / max(1, len(mine)))
                time.sleep(max(0.0, due - time.monotonic()))
                code, _ = push_progress(url, tokens[pod], {"step": step * 10, "loss": 1.0 / step})
                with lock:
                    codes[code] = codes.get(code, 0) + 1

    threads = [threading.Thread(target=pusher, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    cpu = cpu_seconds(operator_pid) - cpu_before
    time.sleep(5)
    status_writes = [
        e
        for e in operator_writes(audit_lines(audit_log)[audit_before:])
        if e["objectRef"].get("subresource") == "status"
        and e["objectRef"].get("resource") == "trainingjobs"
    ]
    pushes = sum(codes.values())
    return {
        "jobs": jobs,
        "seconds": round(elapsed, 1),
        "pushes": pushes,
        "push_answers": {str(k): v for k, v in sorted(codes.items())},
        "pushes_per_second": round(pushes / elapsed, 1),
        "status_writes": len(status_writes),
        "status_writes_per_job_per_hour": round(len(status_writes) / jobs / (elapsed / 3600), 1),
        "operator_cpu_seconds": round(cpu, 1),
        "operator_cpu_cores_mean": round(cpu / elapsed, 3),
        "operator_rss_mb": round(current_rss_mb(operator_pid), 1),
        "operator_peak_rss_mb": round(peak_rss_mb(operator_pid), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--rss-jobs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--progress-jobs", type=int, default=1000)
    parser.add_argument("--progress-seconds", type=float, default=120)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "operator.json")
    parser.add_argument(
        "--py-spy",
        type=Path,
        help="a py-spy binary: profile the operator during the --jobs scenario into "
        "bench/out/operator-profile.txt (collapsed stacks; py-spy is not a dependency)",
    )
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)

    state_dir = Path(tempfile.mkdtemp(prefix="trainforge-bench-cluster-"))
    cluster = [sys.executable, str(REPO / "hack/cluster/cluster.py")]
    subprocess.run([*cluster, "up", "--dir", str(state_dir)], check=True, stdout=subprocess.DEVNULL)
    operator = None
    try:
        kubeconfig = state_dir / "kubeconfig"
        kubectl = make_kubectl(kubeconfig)
        kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        kubectl("wait", "--for=condition=Established", "crd", "--all")
        nodes = max(1, (args.rss_jobs * args.workers) // 900 + 1, args.progress_jobs // 900 + 1)
        kubectl("apply", "-f", "-", input=json.dumps(bench_nodes(nodes)))
        kubectl("create", "namespace", NAMESPACE)
        wait_for(
            lambda: kubectl("get", "sa", "default", "-n", NAMESPACE, check=False).returncode == 0,
            "default ServiceAccount",
        )
        progress_port = free_port()
        progress_url = f"http://127.0.0.1:{progress_port}/v1/progress"
        operator = start_operator(
            kubeconfig,
            state_dir / "operator.log",
            "--log-format=plain",
            "--resync-seconds=300",
            f"--progress-port={progress_port}",
            f"--progress-url={progress_url}",
        )
        api = kubernetes.config.new_client_from_config(str(kubeconfig))
        watcher = Watcher(api)
        watcher.start()
        # Started (imports done, metrics served from its startup handler), watches connected:
        # the scenarios measure the operator's work, not its start.
        wait_for(
            lambda: serves(f"http://127.0.0.1:{operator.metrics_port}/metrics"),
            "the operator's metrics endpoint",
            timeout=120,
        )
        time.sleep(3)

        results: dict[str, Any] = {}
        if args.jobs:
            profiler = None
            if args.py_spy:
                profiler = subprocess.Popen(
                    [
                        str(args.py_spy),
                        "record",
                        "--nonblocking",
                        "--threads",
                        "--format",
                        "raw",
                        "--rate",
                        "50",
                        "--output",
                        str(args.out.parent / "operator-profile.txt"),
                        "--pid",
                        str(operator.process.pid),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            results["load"] = scenario(
                kubectl, watcher, operator.process.pid, state_dir, args.jobs, args.workers
            )
            if profiler:
                profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                profiler.wait(timeout=60)
        if args.rss_jobs:
            kubectl("delete", "trainingjobs", "--all", "-n", NAMESPACE, "--wait=false")
            wait_for(
                lambda: (
                    not json.loads(kubectl("get", "pods", "-n", NAMESPACE, "-o", "json").stdout)[
                        "items"
                    ]
                ),
                "pods to be garbage-collected",
                timeout=900,
                interval=2,
            )
            watcher.job_added.clear()
            watcher.job_running.clear()
            watcher.pod_added.clear()
            results["rss"] = scenario(
                kubectl, watcher, operator.process.pid, state_dir, args.rss_jobs, args.workers
            )
        if args.progress_jobs:
            results["progress"] = progress_scenario(
                kubectl,
                api,
                operator.process.pid,
                state_dir,
                progress_url,
                args.progress_jobs,
                args.progress_seconds,
            )
        watcher.stop()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
        print(json.dumps(results, indent=2))
    finally:
        if operator:
            operator.stop()
        subprocess.run(
            [*cluster, "down", "--dir", str(state_dir)], check=False, stdout=subprocess.DEVNULL
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
