"""Experiment loggers (conf/logger/): metrics.csv always, a local dashboard or Weights & Biases when asked.

- ``logger=csv`` (default): :class:`ResumableCSVLogger`, one row per epoch in ``<run dir>/metrics.csv``.
- ``logger=tensorboard``: :class:`SweepTensorBoardLogger`, event files in ``<run dir>/tensorboard/``, so
  ``tensorboard --logdir runs/sweeps/<sweep>`` shows one sweep's runs together, each with its mixer, seed
  and full config in the HParams tab.
- ``logger=mlflow``: :class:`SweepMLflowLogger`, a local sqlite store (``runs/mlflow.db``), one MLflow
  experiment per sweep, mixer and seed as run parameters; ``mlflow ui`` opens it. No account, no server.
- ``logger=wandb``: Lightning's ``WandbLogger`` from :func:`wandb_logger`, grouped by sweep, with the full
  resolved config. Without an API key or a network it runs offline and says how to ``wandb sync`` later.
- ``logger=[csv,wandb]``, ``logger=[csv,tensorboard,mlflow]`` or ``logger=many`` (csv and wandb): several.

Each job of a multirun finishes its wandb run (:func:`finish_loggers`); otherwise the next job's
``WandbLogger`` would attach to the same wandb run (../shared/docs/REFERENCE.md section 6).
"""

from __future__ import annotations

import csv
import fcntl
import logging
import netrc
import os
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from mixerlab.config import flatten
from mixerlab.redact import redacted_config
from mixerlab.run import atomic_write_text

log = logging.getLogger("mixerlab.loggers")

WANDB_DEFAULT_URL = "https://api.wandb.ai"


# ---------------------------------------------------------------------------------------------- CSV
class _AppendingWriter(ExperimentWriter):
    """Lightning's writer deletes an existing metrics.csv when it starts; a resumed run appends to it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` survives a resume: rows of the epochs before the checkpoint stay,
    the resumed epochs are appended (a reader keeps the last row of an epoch logged twice)."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


# ------------------------------------------------------------------------------------- local dashboards
# The epoch metrics the recipe logs (mixerlab/recipe.py): the dashboards' comparison columns.
TRACKED_METRICS = ("val/top1", "val/top5", "val/loss", "train/loss")


def _flat_params(params: Any, run_params: dict[str, Any]) -> dict[str, str | int | float | bool]:
    """The run's identity (sweep, job, mixer, seed) first, then every config key as ``a.b.c``; values a
    dashboard cannot hold (None, lists) as text."""
    if isinstance(params, DictConfig):
        params = OmegaConf.to_container(params, resolve=True)
    flat = flatten(dict(params or {}))
    out = {**run_params, **{k: v for k, v in flat.items() if k not in run_params}}
    return {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in out.items()}


class SweepTensorBoardLogger(TensorBoardLogger):
    """Lightning's ``TensorBoardLogger`` whose HParams tab lists every run of a sweep as one row: its
    ``run_params`` (sweep, job, mixer, seed), its full config, and the last value of each of
    ``TRACKED_METRICS``.

    Lightning fills that tab only by logging a metric value at step 0 (``default_hp_metric``), which puts a
    false point on every curve; this declares the metric tags alone, and TensorBoard takes their values from
    the run's own scalars."""

    def __init__(self, *args: Any, run_params: dict[str, Any] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("default_hp_metric", False)
        super().__init__(*args, **kwargs)
        self.run_params = {k: v for k, v in (run_params or {}).items() if v is not None}

    @rank_zero_only
    def log_hyperparams(self, params: Any, metrics: Any = None) -> None:
        super().log_hyperparams(params, metrics)  # hparams.yaml beside the event files
        from torch.utils.tensorboard.summary import hparams

        flat = _flat_params(params, self.run_params)
        writer = self.experiment._get_file_writer()
        for summary in hparams(flat, dict.fromkeys(TRACKED_METRICS, 0.0)):
            writer.add_summary(summary)


class SweepMLflowLogger(MLFlowLogger):
    """Lightning's ``MLFlowLogger`` on a local store, safe for the jobs of a parallel sweep and for resume:

    - the store is created (a sqlite store runs its schema migrations on first use) and the experiment
      looked up or created under an exclusive file lock beside the database: two jobs starting at once
      would otherwise both migrate the schema or both create the experiment, and one would fail;
    - the run's MLflow id is kept in ``<run dir>/mlflow_run_id``, so a resumed run logs on into the same
      MLflow run instead of starting a second one;
    - the run's identity (sweep, job, mixer, seed) are its first parameters and its tags, the full
      config the rest of its parameters."""

    def __init__(self, *args: Any, run_dir: str | None = None, run_params: dict[str, Any] | None = None,
                 **kwargs: Any) -> None:
        self.id_file = Path(run_dir) / "mlflow_run_id" if run_dir else None
        if self.id_file is not None and self.id_file.is_file() and not kwargs.get("run_id"):
            kwargs["run_id"] = self.id_file.read_text().strip()
        self.run_params = {k: v for k, v in (run_params or {}).items() if v is not None}
        kwargs["tags"] = {**{k: str(v) for k, v in self.run_params.items()}, **(kwargs.get("tags") or {})}
        self._tracking_uri = kwargs.get("tracking_uri")
        with self._store_lock():
            super().__init__(*args, **kwargs)

    def _lock_path(self) -> Path | None:
        uri = self._tracking_uri or ""
        if uri.startswith("sqlite:///"):
            return Path(uri[len("sqlite:///"):] + ".lock")
        if uri.startswith("file:"):
            return Path(urlparse(uri).path) / ".lock"
        return None

    @contextmanager
    def _store_lock(self) -> Iterator[None]:
        lock_path = self._lock_path()
        if lock_path is None:
            yield
            return
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._initialized:
            return self._mlflow_client
        with self._store_lock():
            return MLFlowLogger.experiment.fget(self)

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        super().log_hyperparams(_flat_params(params, self.run_params))
        if self.id_file is not None and not self.id_file.is_file():
            atomic_write_text(self.id_file, self.run_id + "\n")


# ---------------------------------------------------------------------------------------------- wandb
def _wandb_host() -> tuple[str, int]:
    url = urlparse(os.environ.get("WANDB_BASE_URL", WANDB_DEFAULT_URL))
    return url.hostname or "api.wandb.ai", url.port or (80 if url.scheme == "http" else 443)


def has_wandb_api_key(host: str) -> bool:
    """An API key in the environment or in the netrc that ``wandb login`` writes (only its presence)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def reachable(host: str, port: int, timeout_s: float) -> bool:
    """A TCP connection within ``timeout_s``. The lookup runs in a daemon thread because a DNS query on a
    machine without network can block far longer than any socket timeout."""
    ok = threading.Event()

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                ok.set()
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return ok.is_set()


def choose_wandb_mode(requested: str = "auto", timeout_s: float = 3.0) -> tuple[str, str]:
    """``(mode, why)``: an explicit ``mode`` or ``WANDB_MODE`` wins; ``auto`` goes online only with an API
    key and a reachable server, else offline."""
    if requested not in ("auto", "online", "offline", "disabled"):
        raise ValueError(f"logger.wandb.mode={requested!r}: use auto, online, offline or disabled")
    if requested != "auto":
        return requested, f"logger.wandb.mode={requested}"
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env:
        return ("offline" if env == "dryrun" else env), f"WANDB_MODE={env}"
    host, port = _wandb_host()
    if not has_wandb_api_key(host):
        return "offline", "no API key (set WANDB_API_KEY or run `wandb login`)"
    if not reachable(host, port, timeout_s):
        return "offline", f"{host}:{port} not reachable within {timeout_s:g} s"
    return "online", f"API key found and {host} reachable"


def wandb_logger(
    project: str = "mixerlab",
    save_dir: str = ".",
    mode: str = "auto",
    group: str | None = None,
    job_type: str | None = None,
    name: str | None = None,
    entity: str | None = None,
    tags: list[str] | None = None,
    log_model: bool | str = False,
    probe_timeout_s: float = 3.0,
    **init_kwargs: Any,
) -> WandbLogger:
    """Lightning's ``WandbLogger`` in the mode :func:`choose_wandb_mode` picks (``mode`` is passed to
    ``wandb.init`` rather than Lightning's ``offline=True``, which would set WANDB_MODE for the whole process
    and so for every later job of a sweep)."""
    chosen, why = choose_wandb_mode(mode, probe_timeout_s)
    if chosen != "online" and log_model:
        log.warning("wandb %s: log_model=%s needs an online run; checkpoints stay in the run directory",
                    chosen, log_model)
        log_model = False
    print(f"wandb: {chosen} mode ({why})", flush=True)
    return WandbLogger(
        project=project, save_dir=save_dir, name=name, log_model=log_model, mode=chosen, group=group,
        job_type=job_type, entity=entity, tags=list(tags or []), **init_kwargs,
    )


# ------------------------------------------------------------------------------------------ a run's loggers
def start_loggers(loggers: list[Logger], cfg: DictConfig) -> list[Logger]:
    """Give every logger the full resolved config (secrets redacted): in wandb it is what runs are compared
    and grouped by (mixer, backbone, recipe, seed); the CSV logger writes it to hparams.yaml. A logger that
    cannot start (wandb's service fails, a full disk) is dropped with a warning instead of failing the run."""
    config = redacted_config(cfg)
    started = []
    for logger in loggers:
        try:
            logger.log_hyperparams(config)
            started.append(logger)
        except Exception as error:
            log.warning("logger %s could not start and is left out of this run: %s", type(logger).__name__,
                        error)
            print(f"WARNING: {type(logger).__name__} left out: {error}", flush=True)
    return started


def finish_loggers(loggers: list[Logger], failed: bool) -> None:
    """Close what a run opened: ``wandb.finish`` (exit code 1 marks a failed run) and, for offline runs, the
    command that uploads them later. Never raises: the run's result is already on disk."""
    for logger in loggers:
        if not isinstance(logger, WandbLogger) or logger._experiment is None:
            continue
        try:
            run = logger.experiment
            offline = run.settings.mode in ("offline", "dryrun") if hasattr(run, "settings") else False
            run_dir = Path(run.dir).parent if getattr(run, "dir", None) else None
            run.finish(exit_code=1 if failed else 0)
            logger._experiment = None
            if offline and run_dir is not None:
                print(f"wandb: offline run saved in {run_dir}\n"
                      f"wandb: upload it later with: wandb sync {run_dir}", flush=True)
        except Exception as error:  # logging must never turn a finished run into a failed one
            log.warning("wandb.finish failed: %s", error)


def finish_stray_wandb_run() -> None:
    """Finish a wandb run that a job left open (it failed before its loggers were closed)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        try:
            wandb.finish(exit_code=1)
        except Exception as error:
            log.warning("wandb.finish failed: %s", error)
