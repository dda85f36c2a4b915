"""Checkpoints: sharded (torch.distributed.checkpoint), atomic, checksummed, pruned.

Layout in TRAINFORGE_CHECKPOINT_DIR (see trainforge_contract):

    step-00000100/          a committed checkpoint: DCP files (.metadata, __<rank>_*.distcp)
      manifest.json         written last: format, step, time, worldSize, trainer config,
                            sha256 and size of every other file
    latest                  name of the newest committed step directory (for humans/tools)
    .tmp-step-00000200-0/   a save in progress: never read, removed when a trainer starts

A save writes every rank's shard into a `.tmp-` directory, then rank 0 (after all ranks are
done and every file is fsynced) writes the manifest, fsyncs, renames the directory to
`step-XXXXXXXX`, fsyncs the parent and replaces `latest`. A directory named `step-*` is thus
always complete; a crash at any point leaves at worst a `.tmp-` directory.

Public API (stable; the inference server uses it):

    latest_committed(checkpoint_dir, *, verify=True) -> CommittedCheckpoint | None
        The newest committed checkpoint whose files match their checksums; corrupt or
        incomplete ones are logged and skipped.
    load_model_weights(checkpoint, state, group=None)
        The model weights of a checkpoint into `state` (a model state dict), in this process;
        serve.model_store.load_model_for_inference rebuilds the model around them.
    CommittedCheckpoint: step (int), path (Path), manifest (dict), time (RFC 3339 str)
    read_checkpoint(path, *, verify=True) -> CommittedCheckpoint   (raises InvalidCheckpoint)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
from torch.distributed.checkpoint.state_dict_saver import AsyncSaveResponse

import trainforge_contract as contract
from trainforge_trainer import config as config_mod, logs
from trainforge_trainer.distributed import DistEnv

MANIFEST_FORMAT = "trainforge-checkpoint/1"
_STEP_DIR = re.compile(rf"^{re.escape(contract.CHECKPOINT_STEP_PREFIX)}(\d{{8}})$")
_CHUNK = 8 << 20


class InvalidCheckpoint(Exception):
    """A step directory that must not be loaded (missing manifest, bad checksum, ...)."""


@dataclass(frozen=True)
class CommittedCheckpoint:
    step: int
    path: Path
    manifest: dict[str, Any]
    time: str

    def record(self) -> dict[str, Any]:
        """The `checkpoint` entry of the progress record."""
        return {"step": self.step, "path": str(self.path), "time": self.time}


def _now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def committed_dirs(checkpoint_dir: Path) -> list[Path]:
    """`step-*` directories, newest first (the step is in the name)."""
    if not checkpoint_dir.is_dir():
        return []
    found = [p for p in checkpoint_dir.iterdir() if _STEP_DIR.match(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: p.name, reverse=True)


def read_checkpoint(path: Path, *, verify: bool = True) -> CommittedCheckpoint:
    """The checkpoint in a step directory; `verify` re-hashes every file against the manifest."""
    try:
        manifest = json.loads((path / contract.CHECKPOINT_MANIFEST).read_text())
    except FileNotFoundError:
        raise InvalidCheckpoint("no manifest.json (the save did not finish)") from None
    except (OSError, ValueError) as exc:
        raise InvalidCheckpoint(f"unreadable manifest.json: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise InvalidCheckpoint(f"manifest.json is not a {MANIFEST_FORMAT} manifest")
    if verify:
        for name, entry in manifest["files"].items():
            file = path / name
            if not file.is_file():
                raise InvalidCheckpoint(f"{name} is missing")
            if file.stat().st_size != entry["bytes"]:
                raise InvalidCheckpoint(f"{name} has the wrong size")
            if _sha256(file) != entry["sha256"]:
                raise InvalidCheckpoint(f"{name} does not match its sha256")
    return CommittedCheckpoint(int(manifest["step"]), path, manifest, manifest["time"])


def latest_committed(
    checkpoint_dir: str | Path, *, verify: bool = True
) -> CommittedCheckpoint | None:
    """The newest committed checkpoint that verifies; None if there is none."""
    for path in committed_dirs(Path(checkpoint_dir)):
        try:
            return read_checkpoint(path, verify=verify)
        except InvalidCheckpoint as exc:
            logs.warning("checkpoint_skipped", path=str(path), reason=str(exc))
    return None


def resolve(location: str | Path, field: str = "initFrom") -> CommittedCheckpoint:
    """A step directory, or the newest committed checkpoint of a checkpoint root (initFrom)."""
    path = Path(location)
    if (path / contract.CHECKPOINT_MANIFEST).is_file():
        try:
            return read_checkpoint(path)
        except InvalidCheckpoint as exc:
            raise config_mod.ConfigError([f"{field}: {exc} (got {str(path)!r})"]) from None
    found = latest_committed(path)
    if found is None:
        raise config_mod.ConfigError(
            [f"{field}: no committed checkpoint at {str(path)!r}; give a step-XXXXXXXX directory"]
        )
    return found


def architecture_mismatch(
    checkpoint: CommittedCheckpoint, model_state: dict[str, Any]
) -> str | None:
    """What differs between the checkpoint's model and `model_state` (None: they fit).

    Read from the checkpoint's metadata, before any load: loading into a different network
    fails deep inside DCP, and the same way on every restart.
    """
    metadata = dcp.FileSystemReader(checkpoint.path).read_metadata().state_dict_metadata
    saved = {
        key.removeprefix("model."): tuple(meta.size)
        for key, meta in metadata.items()
        if key.startswith("model.") and hasattr(meta, "size")
    }
    ours = {k: tuple(v.shape) for k, v in model_state.items() if isinstance(v, torch.Tensor)}
    problems = [f"{k}: this model has none" for k in sorted(saved.keys() - ours.keys())]
    problems += [f"{k}: the checkpoint has none" for k in sorted(ours.keys() - saved.keys())]
    problems += [
        f"{k}: shape {list(saved[k])} in the checkpoint, {list(ours[k])} here"
        for k in sorted(saved.keys() & ours.keys())
        if saved[k] != ours[k]
    ]
    if not problems:
        return None
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return "; ".join(problems[:3]) + more


def load_model_weights(
    checkpoint: CommittedCheckpoint, model_state: dict[str, Any], group: Any = None
) -> None:
    """Fill `model_state` (a model state dict, possibly sharded) from the checkpoint."""
    state = {"model": model_state}
    with warnings.catch_warnings():
        # DCP warns about loading without a process group even when that is asked for.
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        dcp.load(state, checkpoint_id=checkpoint.path, process_group=group, no_dist=group is None)


@dataclass(frozen=True)
class SaveTimes:
    """Seconds of one save: from its start to the commit, of which writing and hashing."""

    total: float
    write: float
    hash: float


class Checkpointer:
    """Saves and restores the training state of all ranks; rank 0 commits and prunes."""

    def __init__(
        self,
        directory: Path,
        dist_env: DistEnv,
        trainer_config: dict[str, Any],
        *,
        keep_last: int,
        async_save: bool,
        attempt: str,
        on_commit: Callable[[CommittedCheckpoint, SaveTimes], None],
        on_blocked: Callable[[float], None] = lambda seconds: None,
        validation: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        # The manifest's validation metrics (contract.MANIFEST_METRICS), as of save().
        self.validation = validation
        self._validation_at: dict[int, dict[str, Any]] = {}
        self.directory = directory
        self.dist = dist_env
        self.trainer_config = trainer_config
        self.keep_last = keep_last
        self.async_save = async_save
        self.attempt = attempt
        self.on_commit = on_commit
        # Seconds the training loop waited for checkpointing (in save() and wait_staged()).
        self.on_blocked = on_blocked
        self.last_saved_step: int | None = None
        self._pending: Future[None] | None = None
        self._staging: Future[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
        # One stager for the whole run: it keeps its CPU staging buffers between saves. It
        # copies in the background too; the loop calls wait_staged() before it next changes
        # the state, so the copy overlaps the forward and backward pass.
        self._stager = (
            DefaultStager(StagingOptions(False, False, True, False)) if async_save else None
        )

    def clean_stale(self) -> None:
        """Remove saves a previous attempt left half-done (rank 0, before any save starts)."""
        if not self.dist.is_main:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        for entry in self.directory.iterdir():
            if entry.name.startswith(contract.CHECKPOINT_TMP_PREFIX):
                logs.event("checkpoint_tmp_removed", path=str(entry))
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)

    def find_resume(self) -> CommittedCheckpoint | None:
        """The checkpoint to resume from: rank 0 verifies, every rank gets its answer."""
        found = latest_committed(self.directory) if self.dist.is_main else None
        return self.dist.broadcast_object(found)

    def load(self, checkpoint: CommittedCheckpoint, state: dict[str, Any]) -> None:
        dcp.load(state, checkpoint_id=checkpoint.path, process_group=self.dist.checkpoint_group)

    def save(self, step: int, state: dict[str, Any]) -> None:
        """Start (async) or do (sync) a save of `state` at `step`."""
        started = time.perf_counter()
        self.wait()
        self._validation_at = {step: self.validation()}
        tmp = self.directory / (
            f"{contract.CHECKPOINT_TMP_PREFIX}{contract.checkpoint_dir_name(step)}-{self.attempt}"
        )
        writer = dcp.FileSystemWriter(tmp, sync_files=True)
        group = self.dist.checkpoint_group
        logs.event("checkpoint_save_started", step=step, path=str(tmp), mode=self._mode)
        if self._stager is not None:
            response = dcp.async_save(
                state, storage_writer=writer, process_group=group, async_stager=self._stager
            )
            assert isinstance(response, AsyncSaveResponse)
            self._staging = response.staging_completion
            self._pending = self._executor.submit(
                self._commit_after, response.upload_completion, tmp, step, started
            )
        else:
            dcp.save(state, storage_writer=writer, process_group=group)
            self._commit(tmp, step, started)
        self.last_saved_step = step
        self.on_blocked(time.perf_counter() - started)

    @property
    def _mode(self) -> str:
        return "async" if self.async_save else "sync"

    def wait_staged(self) -> None:
        """Block until the save in flight has its own copy of the state (call before changing
        parameters, optimizer state or buffers)."""
        if self._staging is not None:
            started = time.perf_counter()
            self._await_staging()
            self.on_blocked(time.perf_counter() - started)

    def _await_staging(self) -> None:
        if self._staging is not None:
            staging, self._staging = self._staging, None
            staging.result()

    def wait(self) -> None:
        """Block until the save in flight (if any) is committed; re-raise its failure."""
        self._await_staging()
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._executor.shutdown()
            if self._stager is not None:
                self._stager.close()

    def _commit_after(self, upload: Future[Any], tmp: Path, step: int, started: float) -> None:
        upload.result()
        self._commit(tmp, step, started)

    def _hash_files(self, tmp: Path) -> dict[str, dict[str, Any]]:
        """sha256 of every file in `tmp`, the hashing spread over the ranks."""
        group = self.dist.checkpoint_group
        names = sorted(p.name for p in tmp.iterdir()) if self.dist.is_main else []
        names = self.dist.broadcast_object(names, group)
        mine = {
            name: {"sha256": _sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
            for name in names[self.dist.rank :: self.dist.world_size]
        }
        if self.dist.world_size == 1:
            return mine
        gathered: list[Any] = [None] * self.dist.world_size if self.dist.is_main else []
        dist.gather_object(mine, gathered if self.dist.is_main else None, dst=0, group=group)
        return {k: v for part in gathered for k, v in part.items()}

    def _commit(self, tmp: Path, step: int, started: float) -> None:
        written = time.perf_counter()
        files = self._hash_files(tmp)
        hashed = time.perf_counter()
        committed: CommittedCheckpoint | None = None
        if self.dist.is_main:
            committed = self._rename_into_place(tmp, step, files)
        # Every rank returns only once the checkpoint is committed (and learns where it is).
        committed = self.dist.broadcast_object(committed, self.dist.checkpoint_group)
        assert committed is not None
        done = time.perf_counter()
        self.on_commit(
            committed,
            SaveTimes(total=done - started, write=written - started, hash=hashed - written),
        )

    def _rename_into_place(
        self, tmp: Path, step: int, files: dict[str, dict[str, Any]]
    ) -> CommittedCheckpoint:
        manifest = {
            "format": MANIFEST_FORMAT,
            "step": step,
            "time": _now_rfc3339(),
            "worldSize": self.dist.world_size,
            "torchVersion": torch.__version__,
            "bytes": sum(f["bytes"] for f in files.values()),
            "config": self.trainer_config,
            "files": files,
            **self._validation_at.pop(step, {}),
        }
        _write_durably(tmp / contract.CHECKPOINT_MANIFEST, json.dumps(manifest, indent=1))
        _fsync_dir(tmp)
        final = self.directory / contract.checkpoint_dir_name(step)
        if final.exists():
            # Only a checkpoint that failed verification can be here (we resumed from an
            # older one and trained past it): replace it.
            logs.warning("checkpoint_replaced", path=str(final))
            self._discard(final)
        os.rename(tmp, final)
        _fsync_dir(self.directory)
        latest_tmp = (
            self.directory / f"{contract.CHECKPOINT_TMP_PREFIX}{contract.CHECKPOINT_LATEST}"
        )
        _write_durably(latest_tmp, final.name + "\n")
        os.replace(latest_tmp, self.directory / contract.CHECKPOINT_LATEST)
        _fsync_dir(self.directory)
        for old in committed_dirs(self.directory)[self.keep_last :]:
            self._discard(old)
        return CommittedCheckpoint(step, final, manifest, manifest["time"])

    def _discard(self, path: Path) -> None:
        # Rename first: a crash mid-delete must leave a `.tmp-` (ignored, cleaned), not a
        # half-deleted `step-` directory.
        doomed = path.with_name(f"{contract.CHECKPOINT_TMP_PREFIX}delete-{path.name}")
        os.rename(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
