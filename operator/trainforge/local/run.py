"""`trainforge local run`: a TrainingJob manifest on this machine, without a cluster.

The operator's own code decides everything: the worker pods are rendered by
`render.trainingjob.desired_children` and the lifecycle (gang restart, maxRestarts,
failOnExitCodes, deadline) is `reconcile.trainingjob.plan`. This module only plays the
kubelet: it starts each rendered worker's command as a local process with the pod's
environment (rendezvous on loopback, the checkpoint volume mapped to a local directory)
and reports how the processes end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

import trainforge_contract as contract
from trainforge.api import InvalidSpec, parse_training_job
from trainforge.api.trainingjob import RuntimeRef
from trainforge.reconcile.runtime import RuntimeSource, effective_spec
from trainforge.reconcile.trainingjob import OTHER_CHILD_KINDS, TERMINAL, Observed, PodView, plan
from trainforge.render.common import RenderSettings
from trainforge.render.trainingjob import expand_env_references

POLL_SECONDS = 0.5
STOP_GRACE_SECONDS = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalWorker:
    """One rendered worker pod, running as a process group on this machine."""

    view: PodView
    process: subprocess.Popen[bytes]
    progress_file: Path
    log_file: Path

    def observe(self) -> PodView:
        code = self.process.poll()
        phase = "Running" if code is None else ("Succeeded" if code == 0 else "Failed")
        # A signal death is reported like the kubelet does: 128 + signal number.
        exit_code = None if code is None else (128 - code if code < 0 else code)
        return PodView(
            name=self.view.name,
            uid=self.view.uid,
            index=self.view.index,
            attempt=self.view.attempt,
            phase=phase,
            exit_code=exit_code,
            progress=read_progress(self.progress_file) if code is not None else None,
        )

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # the trainer checkpoints on SIGTERM
        try:
            self.process.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def read_progress(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # not written yet, or caught mid-rewrite
    return record if isinstance(record, dict) else None


def process_command(
    pod: dict[str, Any], overrides: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    """The worker container's argv and environment, as the kubelet would build them, with
    cluster-only values (addresses, mount paths, ports) replaced by local ones."""
    container = pod["spec"]["containers"][0]
    env = {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}
    env.update(overrides)
    argv = [
        expand_env_references(part, env)
        for part in [*container.get("command", []), *container.get("args", [])]
    ]
    if not argv:
        raise SystemExit(
            f"{pod['metadata']['name']}: no command; the image's entrypoint "
            "cannot run locally: set spec.command"
        )
    if argv[0] == "torchrun":
        argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
    elif argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv, {**os.environ, **env}


@dataclass
class LocalRun:
    manifest: dict[str, Any]
    workdir: Path
    inject_failure_at_step: int | None = None
    console: Console = field(default_factory=lambda: Console(stderr=True))
    workers: dict[str, LocalWorker] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    master_port: int = 0
    injected: bool = False

    @property
    def name(self) -> str:
        return str(self.manifest["metadata"]["name"])

    @property
    def checkpoint_dir(self) -> Path:
        return self.workdir / "checkpoints"

    def job(self) -> dict[str, Any]:
        return {
            **self.manifest,
            "metadata": {
                "namespace": "local",
                "uid": f"local-{self.name}",
                "generation": 1,
                **self.manifest["metadata"],
            },
            "status": self.status,
        }

    def run(self) -> int:
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("step"),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
        )
        try:
            with Progress(*columns, console=self.console, transient=False) as bar:
                task = bar.add_task(self.name, total=None, stats="starting workers")
                while self.status.get("phase") not in TERMINAL:
                    self.step()
                    self.show(bar, task)
                    time.sleep(POLL_SECONDS)
        finally:
            for worker in self.workers.values():
                worker.stop()
        self.report()
        return 0 if self.status["phase"] == "Succeeded" else 1

    def step(self) -> None:
        """One reconcile: observe the processes, plan with the operator's rules, apply."""
        views = [w.observe() for w in self.workers.values()]
        result = plan(
            # No cluster: the service, claim and group the plan would create are not needed.
            Observed(
                job=self.job(),
                pods=views,
                now=datetime.now(UTC),
                children_present=OTHER_CHILD_KINDS,
            ),
            RenderSettings(),
        )
        if result.status.get("restartAttempt") != self.status.get("restartAttempt"):
            self.master_port = free_port()  # a fresh rendezvous port for every gang
        self.status = result.status
        for view in result.delete_pods:
            self.workers.pop(view.name).stop()
        for pod in result.create:
            if pod["kind"] == "Pod":
                self.start(pod)
        for type_, reason, message in result.events:
            style = "yellow" if type_ == "Warning" else "cyan"
            self.console.print(f"[{style}]{reason}[/]: {message}")
        self.maybe_inject_failure()

    def start(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        index = int(meta["labels"][contract.LABEL_WORKER_INDEX])
        attempt = int(meta["labels"][contract.LABEL_RESTART_ATTEMPT])
        stem = f"{meta['name']}-attempt-{attempt}"
        progress_file = self.workdir / "logs" / f"{stem}.progress.json"
        progress_file.unlink(missing_ok=True)
        overrides = {
            contract.ENV_MASTER_ADDR: "127.0.0.1",
            "PET_MASTER_ADDR": "127.0.0.1",
            contract.ENV_MASTER_PORT: str(self.master_port),
            "PET_MASTER_PORT": str(self.master_port),
            contract.ENV_CHECKPOINT_DIR: str(self.checkpoint_dir),
            contract.ENV_METRICS_PORT: str(free_port()),
            contract.ENV_TERMINATION_MESSAGE_PATH: str(progress_file),
            # The pod's HOME is its scratch volume; here the user's own home serves.
            "HOME": str(Path.home()),
        }
        argv, env = process_command(pod, overrides)
        log_file = self.workdir / "logs" / f"{stem}.log"
        with open(log_file, "wb") as log:
            process = subprocess.Popen(
                argv,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        view = PodView(
            name=meta["name"],
            uid=f"{meta['name']}-{attempt}",
            index=index,
            attempt=attempt,
            phase="Running",
        )
        self.workers[meta["name"]] = LocalWorker(view, process, progress_file, log_file)

    def leader_progress(self) -> dict[str, Any] | None:
        leader = next((w for w in self.workers.values() if w.view.index == 0), None)
        return read_progress(leader.progress_file) if leader else None

    def maybe_inject_failure(self) -> None:
        """--inject-failure: SIGKILL the last worker once, so the gang restart can be seen."""
        if self.injected or self.inject_failure_at_step is None:
            return
        progress = self.leader_progress() or {}
        if progress.get("step", -1) < self.inject_failure_at_step:
            return
        victim = max(self.workers.values(), key=lambda w: w.view.index)
        self.console.print(
            f"[red]injecting a failure[/]: SIGKILL {victim.view.name} at step {progress['step']}"
        )
        os.killpg(victim.process.pid, signal.SIGKILL)
        self.injected = True

    def show(self, bar: Progress, task: TaskID) -> None:
        progress = self.leader_progress() or {}
        total = progress.get("totalSteps")
        stats = [self.status.get("phase", "")]
        if progress.get("loss") is not None:
            stats.append(f"loss {progress['loss']:.4f}")
        if progress.get("samplesPerSecond"):
            stats.append(f"{progress['samplesPerSecond']:.1f} samples/s")
        if self.status.get("restarts"):
            stats.append(f"restarts {self.status['restarts']}")
        bar.update(task, total=total, completed=progress.get("step", 0), stats="  ".join(stats))

    def report(self) -> None:
        """The final status, as a table and as status.json (what the operator would write)."""
        (self.workdir / "status.json").write_text(json.dumps(self.status, indent=2))
        table = Table(title=f"TrainingJob {self.name}", show_header=False)
        status = self.status
        failed = next(
            (
                c
                for c in status.get("conditions", [])
                if c["type"] == "Failed" and c["status"] == "True"
            ),
            None,
        )
        rows = [
            ("phase", status.get("phase", "")),
            ("restarts", str(status.get("restarts", 0))),
            ("checkpoints", str(self.checkpoint_dir)),
            ("logs", str(self.workdir / "logs")),
        ]
        if status.get("checkpoint"):
            rows.append(("last checkpoint", f"step {status['checkpoint']['step']}"))
        if status.get("progress", {}).get("loss") is not None:
            rows.append(("final loss", f"{status['progress']['loss']:.4f}"))
        if failed:
            rows.append(("reason", f"{failed['reason']}: {failed['message']}"))
        for key, value in rows:
            table.add_row(key, value)
        self.console.print(table)


def load_manifest(path: Path) -> dict[str, Any]:
    """The TrainingJob in `path`, validated by the same models as the API server's schema;
    with spec.runtimeRef, resolved over the runtime in the same file (there is no cluster to
    read it from)."""
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    jobs = [d for d in documents if d.get("kind") == "TrainingJob"]
    if len(jobs) != 1:
        raise SystemExit(f"{path}: expected exactly one TrainingJob, found {len(jobs)}")
    try:
        parsed = parse_training_job(jobs[0])
        spec = parsed.spec
        if spec.runtime_ref is not None:
            spec = effective_spec(jobs[0]["spec"], _runtime_in(path, documents, spec.runtime_ref))
    except InvalidSpec as e:
        raise SystemExit(f"{path}: invalid TrainingJob:\n  " + "\n  ".join(e.messages)) from None
    return {
        "apiVersion": contract.API_VERSION,
        "kind": "TrainingJob",
        "metadata": {"name": parsed.metadata.name},
        "spec": spec.to_json(),
    }


def _runtime_in(path: Path, documents: list[dict[str, Any]], ref: RuntimeRef) -> RuntimeSource:
    for doc in documents:
        if (doc.get("kind"), doc.get("metadata", {}).get("name")) == (ref.kind, ref.name):
            return RuntimeSource(ref.kind, ref.name, spec=doc.get("spec") or {})
    raise SystemExit(
        f"{path}: spec.runtimeRef: {ref.kind} {ref.name} is not in this file; a local run "
        "reads no cluster, so add the runtime to the file as another YAML document"
    )


def run(path: Path, workdir: Path | None, inject_failure_at_step: int | None) -> int:
    manifest = load_manifest(path)
    workdir = workdir or Path(".trainforge") / manifest["metadata"]["name"]
    return LocalRun(manifest, workdir.resolve(), inject_failure_at_step).run()
