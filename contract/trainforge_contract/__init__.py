"""What the operator and the trainer image agree on.

Imported by both sides: the operator (no torch) and the trainer image (no kopf), so this
module imports only the standard library. Changing a value here is a breaking change for
running jobs: the operator renders these names and the trainer reads them.
"""

from __future__ import annotations

GROUP = "trainforge.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# --- labels and annotations on every child ------------------------------------------------
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "trainforge"
LABEL_JOB_NAME = "trainforge.io/job-name"
LABEL_WORKER_INDEX = "trainforge.io/worker-index"
LABEL_RESTART_ATTEMPT = "trainforge.io/restart-attempt"
LABEL_INFERENCE_SERVICE = "trainforge.io/inference-service"
ANNOTATION_SPEC_HASH = "trainforge.io/spec-hash"

# --- worker pod environment -----------------------------------------------------------------
ENV_MASTER_ADDR = "MASTER_ADDR"
ENV_MASTER_PORT = "MASTER_PORT"
ENV_WORLD_SIZE = "WORLD_SIZE"
ENV_RANK = "RANK"
# Set by torchrun for each process it starts on a node (not rendered by the operator).
ENV_LOCAL_RANK = "LOCAL_RANK"
# Set with RANK when a worker runs one process, so plain `init_process_group("env://")` and
# `torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))` work without torchrun.
ENV_NNODES = "NNODES"
ENV_NODE_RANK = "NODE_RANK"
ENV_NPROC_PER_NODE = "NPROC_PER_NODE"
ENV_JOB_NAME = "TRAINFORGE_JOB_NAME"
ENV_RESTART_ATTEMPT = "TRAINFORGE_RESTART_ATTEMPT"
ENV_CHECKPOINT_DIR = "TRAINFORGE_CHECKPOINT_DIR"
# JSON of TrainingJob spec.trainer, read by the bundled trainer.
ENV_CONFIG = "TRAINFORGE_CONFIG"
# Port of the trainer's Prometheus metrics (rank 0 also serves GET /progress there).
ENV_METRICS_PORT = "TRAINFORGE_METRICS_PORT"

DEFAULT_MASTER_PORT = 29500
DEFAULT_METRICS_PORT = 9400
CONTAINER_NAME = "trainer"

# --- volumes ----------------------------------------------------------------------------------
DEFAULT_CHECKPOINT_MOUNT = "/checkpoints"
SHM_MOUNT = "/dev/shm"
# The rendered pods' root filesystem is read-only; this emptyDir is where the processes may
# write (tempfile, torchrun's logs, torch.compile's inductor and triton caches) and, through
# HOME, whatever keeps per-user files (~/.cache, ~/.triton). It is also the image's WORKDIR.
SCRATCH_MOUNT = "/tmp"

# --- the image's user -------------------------------------------------------------------------
# The numeric non-root uid and gid of the trainer image (trainer_image/Dockerfile) and of the
# operator image: the rendered pods run as them (runAsNonRoot needs a number) and own the
# checkpoint volume through fsGroup.
IMAGE_UID = 65532
IMAGE_GID = 65532

# --- exit codes -------------------------------------------------------------------------------
# The trainer exits with this after a SIGTERM-triggered checkpoint: retryable, and not the
# user's fault (the operator restarts the gang; it does not count as a failure of the code).
EXIT_PREEMPTED = 143
# A configuration error: retrying cannot help, the operator fails the job at once.
EXIT_CONFIG_ERROR = 78

# --- checkpoint layout in TRAINFORGE_CHECKPOINT_DIR --------------------------------------------
#   step-00000100/            one committed checkpoint (renamed into place when complete)
#     manifest.json           written last: step, time, trainer config, sha256 of every file
#     ...                     torch.distributed.checkpoint files
#   latest                    text file: name of the newest committed step directory
#   .tmp-step-00000200-*/     a save in progress; never read, removed on the next start
CHECKPOINT_STEP_PREFIX = "step-"
CHECKPOINT_MANIFEST = "manifest.json"
CHECKPOINT_LATEST = "latest"
CHECKPOINT_TMP_PREFIX = ".tmp-"
# causal-lm runs export the final model here (a Hugging Face directory) unless told otherwise.
EXPORT_DIR_NAME = "hf"


def checkpoint_dir_name(step: int) -> str:
    return f"{CHECKPOINT_STEP_PREFIX}{step:08d}"


# --- progress reporting without Kubernetes API permissions ------------------------------------
# The trainer writes a JSON progress record to the container's termination-message file
# (/dev/termination-log; rewritten in place as training goes, since a bind-mounted file cannot
# be replaced by rename). The kubelet copies it into
# pod.status.containerStatuses[].state.terminated.message when the container exits, so the
# operator learns the final step and last committed checkpoint of every attempt from the pod
# status it already watches. While running, rank 0 serves the same record at
# GET http://<pod-ip>:<metrics-port>/progress.
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
PROGRESS_KEYS = (
    "step",
    "totalSteps",
    "loss",
    "samplesPerSecond",
    "etaSeconds",
    "transport",
    "checkpoint",
)
# "checkpoint" is {"step": int, "path": str, "time": RFC 3339 str} or absent; "transport" is
# one of the TRANSPORT_* values below, once the trainer knows it.
# A trainer that stops on a configuration error (exit EXIT_CONFIG_ERROR) writes
# {"error": "<one line per bad field>"} instead, so the reason reaches the job's status.
PROGRESS_ERROR_KEY = "error"
# Overrides TERMINATION_MESSAGE_PATH (tests and `trainforge local run`, which have no kubelet).
ENV_TERMINATION_MESSAGE_PATH = "TRAINFORGE_TERMINATION_MESSAGE_PATH"


# --- the inference server (python -m trainforge_trainer serve) --------------------------------
# Its settings as env (the flags of the same name win); the checkpoint directory is
# ENV_CHECKPOINT_DIR, as for the trainer.
ENV_SERVE_MODEL_NAME = "TRAINFORGE_SERVE_MODEL_NAME"
ENV_SERVE_HOST = "TRAINFORGE_SERVE_HOST"
ENV_SERVE_PORT = "TRAINFORGE_SERVE_PORT"
ENV_SERVE_MAX_BATCH_SIZE = "TRAINFORGE_SERVE_MAX_BATCH_SIZE"
ENV_SERVE_MAX_BATCH_DELAY_MS = "TRAINFORGE_SERVE_MAX_BATCH_DELAY_MS"
ENV_SERVE_QUANTIZE = "TRAINFORGE_SERVE_QUANTIZE"  # none | int8
ENV_SERVE_DEVICE = "TRAINFORGE_SERVE_DEVICE"  # auto | cpu | cuda
ENV_SERVE_RELOAD_INTERVAL_SECONDS = "TRAINFORGE_SERVE_RELOAD_INTERVAL_SECONDS"
ENV_SERVE_MAX_REQUEST_BYTES = "TRAINFORGE_SERVE_MAX_REQUEST_BYTES"
# After SIGTERM the server keeps answering this long with readiness failing, so endpoints
# drop the pod before it stops listening; keep it below terminationGracePeriodSeconds.
ENV_SERVE_DRAIN_SECONDS = "TRAINFORGE_SERVE_DRAIN_SECONDS"
# torch intra-op threads on CPU (0: torch's default, one per core).
ENV_SERVE_TORCH_THREADS = "TRAINFORGE_SERVE_TORCH_THREADS"
# Quality-gated reload: switch only to a checkpoint whose manifest metric (e.g. val_loss) is
# no worse than the served one's; mode min (lower is better) or max.
ENV_SERVE_RELOAD_METRIC = "TRAINFORGE_SERVE_RELOAD_METRIC"
ENV_SERVE_RELOAD_MODE = "TRAINFORGE_SERVE_RELOAD_MODE"
# The manifest's "metrics": the newest validation results when the checkpoint was saved,
# as {"val_loss": float, "val_<metric>": float}, and "metricsStep", the step they were
# measured at.
MANIFEST_METRICS = "metrics"
MANIFEST_METRICS_STEP = "metricsStep"

SERVE_DEFAULT_PORT = 8080
SERVE_PORT_NAME = "http"
SERVE_CONTAINER_NAME = "server"
# Probes: live as soon as the process listens; ready once a checkpoint is loaded (and not
# while draining). Metrics (Prometheus text) are on the same port.
SERVE_PATH_LIVE = "/v2/health/live"
SERVE_PATH_READY = "/v2/health/ready"
SERVE_PATH_METRICS = "/metrics"


# --- live progress: rank 0 pushes to the operator (operator/trainforge/progress/) ----------------
# POST <TRAINFORGE_PROGRESS_URL> with the progress record as JSON and
# `Authorization: Bearer <projected ServiceAccount token>` (audience PROGRESS_AUDIENCE, bound to
# the pod). The operator checks the token with a TokenReview and accepts the record only for
# the job that owns the pod the token is bound to. Unset URL: no push (termination message only).
ENV_PROGRESS_URL = "TRAINFORGE_PROGRESS_URL"
ENV_PROGRESS_TOKEN_PATH = "TRAINFORGE_PROGRESS_TOKEN_PATH"
PROGRESS_AUDIENCE = "trainforge-progress"
PROGRESS_TOKEN_DIR = "/var/run/secrets/trainforge.io/progress"
PROGRESS_TOKEN_FILE = "token"
# The kubelet refreshes a projected token at 80% of its life; 600 s is the shortest allowed.
PROGRESS_TOKEN_EXPIRATION_SECONDS = 600
PROGRESS_PATH = "/v1/progress"
# A push body larger than this is refused (413): the record is a few hundred bytes.
PROGRESS_MAX_BODY = 4096
# The trainer pushes at most this often (and on every committed checkpoint).
PROGRESS_PUSH_INTERVAL_SECONDS = 10.0
# "transport" in the record: what NCCL (or gloo) carries the collectives over.
TRANSPORT_INFINIBAND, TRANSPORT_ROCE, TRANSPORT_SOCKET = "InfiniBand", "RoCE", "Socket"
# An inference server pushes {SERVED_STEP_KEY: <step it serves>} to the same endpoint with its
# own projected token, after every load and every minute; the operator shows the lowest step
# its replicas serve in the InferenceService's status.model.servedStep.
SERVED_STEP_KEY = "servedStep"
# ... and, under a reload policy, the newest step it refused as worse.
SKIPPED_STEP_KEY = "skippedStep"
