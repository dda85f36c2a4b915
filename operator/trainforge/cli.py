"""`trainforge` command line: run the operator, or run a TrainingJob locally."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path

from trainforge.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainforge", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the operator (kopf) against the current cluster")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        dest="namespaces",
        help="watch this namespace (repeat for several; default: all)",
    )
    scope.add_argument(
        "--all-namespaces", "-A", action="store_true", help="watch every namespace (the default)"
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        default=Settings.metrics_port,
        help="serve Prometheus /metrics here (0 disables)",
    )
    run.add_argument(
        "--liveness-port",
        type=int,
        default=Settings.liveness_port,
        help="serve the liveness probe at /healthz here (0 disables)",
    )
    run.add_argument(
        "--listen-address",
        default=Settings.listen_address,
        help="address the metrics and liveness endpoints bind to",
    )
    run.add_argument(
        "--workers", type=int, default=Settings.workers, help="objects reconciled in parallel"
    )
    run.add_argument(
        "--resync-seconds",
        type=float,
        default=Settings.resync_seconds,
        help="reconcile every object at least this often",
    )
    run.add_argument(
        "--leader-election-lease",
        default="",
        metavar="NAMESPACE/NAME",
        help="HA: replicas elect a leader on this coordination.k8s.io Lease and only the "
        "leader reconciles (default: no election, for a single replica)",
    )
    run.add_argument(
        "--lease-duration-seconds",
        type=int,
        default=Settings.lease_duration_seconds,
        help="a leader that has not renewed its lease for this long is replaced",
    )
    run.add_argument(
        "--progress-port",
        type=int,
        default=Settings.progress_port,
        help="accept live progress pushed by workers here, on --listen-address (0 disables)",
    )
    run.add_argument(
        "--progress-url",
        default="",
        help="the URL workers push progress to (the operator Service's progress port, e.g. "
        "http://trainforge-progress.trainforge-system.svc:8443/v1/progress); rendered into "
        "worker pods with a projected ServiceAccount token",
    )
    run.add_argument(
        "--kueue",
        action="store_true",
        help="admit TrainingJobs with gang policy Kueue through Kueue Workloads (Kueue must be "
        "installed, with TrainingJob.v1alpha1.trainforge.io in integrations.externalFrameworks)",
    )
    run.add_argument(
        "--trainer-image", default=None, help="image for TrainingJobs that do not set spec.image"
    )
    run.add_argument(
        "--default-runtime",
        default="",
        metavar="NAME",
        help="ClusterTrainingRuntime for TrainingJobs without spec.runtimeRef (docs/platform.md)",
    )
    run.add_argument("--log-format", choices=("json", "plain"), default="json")
    run.add_argument("--verbose", "-v", action="store_true", help="debug logging")

    local = commands.add_parser("local", help="run a TrainingJob on this machine").add_subparsers(
        dest="local_command", required=True
    )
    local_run = local.add_parser(
        "run",
        help="run a TrainingJob manifest's workers as local processes, with the "
        "operator's restart rules and a live progress bar",
    )
    local_run.add_argument("manifest", type=Path, help="a YAML file with one TrainingJob")
    local_run.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="checkpoints and logs (default: .trainforge/<job name>)",
    )
    local_run.add_argument(
        "--inject-failure",
        type=int,
        default=None,
        metavar="STEP",
        help="SIGKILL the last worker once training reaches STEP, to see "
        "the whole gang restart from the last checkpoint",
    )
    return parser


def run_operator(args: argparse.Namespace) -> int:
    import kopf

    import trainforge.handlers  # registers the handlers with kopf
    from trainforge.render.common import RenderSettings

    render = RenderSettings(
        **({"default_image": args.trainer_image} if args.trainer_image else {}),
        progress_url=args.progress_url,
        default_runtime=args.default_runtime,
    )
    lease_namespace, _, lease_name = args.leader_election_lease.rpartition("/")
    if args.leader_election_lease and not (lease_namespace and lease_name):
        logging.error(
            "--leader-election-lease: expected NAMESPACE/NAME (got %r)", args.leader_election_lease
        )
        return 2
    settings = Settings(
        namespaces=tuple(args.namespaces),
        metrics_port=args.metrics_port,
        liveness_port=args.liveness_port,
        listen_address=args.listen_address,
        workers=args.workers,
        resync_seconds=args.resync_seconds,
        lease_namespace=lease_namespace,
        lease_name=lease_name,
        lease_duration_seconds=args.lease_duration_seconds,
        # The pod name in a cluster (the chart sets POD_NAME); host and PID elsewhere.
        progress_port=args.progress_port,
        identity=os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}",
        render=render,
        kueue=args.kueue,
    )
    if settings.kueue:
        trainforge.handlers.watch_kueue_workloads()
    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    if not args.verbose:
        # kopf logs every handled watch event at INFO; with thousands of pods that drowns
        # the operator's own messages.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    memo = kopf.Memo(settings=settings)
    kopf.run(
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        standalone=True,  # HA is the Lease-based election (leader.py), not kopf peering
        liveness_endpoint=(
            f"http://{settings.listen_address}:{settings.liveness_port}/healthz"
            if settings.liveness_port
            else None
        ),
        memo=memo,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return run_operator(args)
    if args.command == "local":
        from trainforge.local.run import run

        return run(args.manifest, args.workdir, args.inject_failure)
    logging.error("unknown command %s", args.command)
    return 2


if __name__ == "__main__":
    sys.exit(main())
