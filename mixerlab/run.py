"""A run's directory: resolved config, metrics, checkpoints and ``summary.json``.

    runs/<experiment>/<run id>/
        config.yaml        the resolved config: the experiment record
        metrics.csv        one row per epoch (CSV logger)
        checkpoints/       last.ckpt (atomic), previous.ckpt (the one last.ckpt replaced)
        summary.json       status, accuracy, cost and a digest of the final weights
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mixerlab.redact import redacted_config
from mixerlab.storage import disk_full, read_derived_json

REPO_ROOT = Path(__file__).resolve().parents[1]
# a run's checkpoints, newest first (mixerlab/checkpointing.py): named here, where no torch import is paid
LAST_CHECKPOINT = "last.ckpt"
PREVIOUS_CHECKPOINT = "previous.ckpt"
SUMMARY_FIX = ("read as missing: the same command run again resumes from the run's checkpoint and rewrites "
               "it")


def atomic_write_text(path: Path, text: str) -> None:
    """Write through a temporary file in the same directory and rename: readers never see half a file, and
    on a full disk the old file stays as it was (:class:`~mixerlab.errors.DiskFullError` names ``path``)."""
    with atomic_path(path, tmp_suffix=".tmp") as tmp, open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def atomic_path(path: Path, tmp_suffix: str | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to, renamed over ``path`` when the block ends. It ends in
    ``tmp_suffix``, by default ``.tmp`` plus ``path``'s suffix (writers such as matplotlib and numpy choose
    the format from it). On an error it is removed and ``path`` stays as it was; a full disk is a
    :class:`~mixerlab.errors.DiskFullError` naming ``path``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        suffix = f".tmp{path.suffix}" if tmp_suffix is None else tmp_suffix
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
        os.close(fd)
    except OSError as error:
        raise (disk_full(error, path) or error) from None
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        full = disk_full(error, path)
        if full is not None:
            raise full from None
        raise


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def peak_memory_mb() -> float:
    """The process's peak: accelerator memory allocated (CUDA) or, on the CPU, the peak resident set size.

    A process figure (``process_peak_memory_mb``), not a run's cost: the jobs of one multirun share it and
    on the CPU the runtime dominates it; a run's cost is ``step_memory_mb`` (mixerlab.costs.step_memory)."""
    import torch  # here: train.py checks its config before torch is imported

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# Errors that mean the run was stopped from outside (Ctrl-C, a requeue's SIGTERM, submitit's exit after a
# preemption, mixerlab's own requeue, a full disk): such a run resumes from its checkpoint. SignalException
# is how older summaries recorded a signal.
STOPPED_FROM_OUTSIDE = ("Requeued", "SIGTERMException", "SystemExit", "KeyboardInterrupt", "SignalException",
                        "DiskFullError")


def stop_status(error: str, received_sigterm: bool = False) -> str:
    """"interrupted" (resume from the checkpoint) or "failed" (start afresh), for a run that stopped with
    ``error`` as its summary records it ("Type: message"). The one rule both the run and the sweep apply.

    A requeue sends SIGTERM to every process of the job, so a loader worker can die of it first and the
    error the main process sees is the DataLoader's "worker ... killed by signal: Terminated", often before
    this process's own SIGTERM handler has run. Nothing in mixerlab sends SIGTERM to a worker, so that is an
    interruption too; a worker killed by SIGKILL, as the out-of-memory killer does, stays a failure."""
    if received_sigterm or error.startswith(STOPPED_FROM_OUTSIDE):
        return "interrupted"
    if error.startswith("RuntimeError") and "killed by signal: Terminated" in error:
        return "interrupted"
    return "failed"


def checkpoint_files(run_dir: Path) -> list[Path]:
    """A run's resumable checkpoints that exist, newest first."""
    paths = [Path(run_dir) / "checkpoints" / name for name in (LAST_CHECKPOINT, PREVIOUS_CHECKPOINT)]
    return [p for p in paths if p.is_file()]


class RunDirectory:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def checkpoint_files(self) -> list[Path]:
        return checkpoint_files(self.path)

    def save_config(self, cfg: DictConfig) -> None:
        # secrets (an API key that slipped into an override) never reach the experiment record
        atomic_write_text(self.path / "config.yaml", OmegaConf.to_yaml(redacted_config(cfg)))

    def read_summary(self) -> dict | None:
        """The run's summary; ``None`` if it has none or it is damaged (one warning line says so)."""
        return read_derived_json(self.summary_path, "run summary", SUMMARY_FIX)

    def write_summary(self, summary: dict) -> None:
        atomic_write_text(self.summary_path, json.dumps(summary, indent=2, sort_keys=False) + "\n")
