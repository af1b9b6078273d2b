"""One training run from a composed config: build, fit, and record the run's summary."""

from __future__ import annotations

import logging
import os
import statistics
import time
import traceback
import warnings
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from mixerlab.build import build_backbone, build_datamodule, build_recipe, mixer_name
from mixerlab.checkpointing import AtomicCheckpointIO, RunCheckpoint, resume_point
from mixerlab.costs import count_flops, count_parameters, step_memory, weights_sha256
from mixerlab.errors import ConfigError
from mixerlab.fastpath import apply_fast_path
from mixerlab.loggers import finish_loggers, start_loggers
from mixerlab.preemption import RequeueOnSignal, owns_requeue
from mixerlab.pretrained import apply_init
from mixerlab.randomness import StepSeeding
from mixerlab.recipe import Recipe
from mixerlab.run import RunDirectory, git_commit, peak_memory_mb, stop_status
from mixerlab.schema import validate
from mixerlab.storage import disk_full

log = logging.getLogger("mixerlab")


def process_age_s() -> float:
    """Seconds since this process started (Linux /proc), so wall time includes interpreter start-up."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        start = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
        return float(Path("/proc/uptime").read_text().split()[0]) - start
    except (OSError, ValueError, IndexError):
        return 0.0


def quiet_lightning() -> None:
    """Keep the console to the progress bar and our own lines."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", message=r".*Experiment logs directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*`srun` command is available on your system.*")
    # the data module carries the data order's position in checkpoints (data/base.py), not the loader
    warnings.filterwarnings("ignore", message=r".*resuming from a checkpoint that ended before the epoch.*")


def run_directory(cfg: DictConfig) -> RunDirectory:
    if HydraConfig.initialized():
        return RunDirectory(HydraConfig.get().runtime.output_dir)
    return RunDirectory(cfg.get("run_dir") or "runs/default/unnamed")


def trainer_plugins() -> list:
    """Atomic, pickle-free checkpoints; on SLURM, Lightning's signal-handler requeue off (preemption.py)."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    plugins: list = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins


def check_launcher(trainer: L.Trainer) -> None:
    """Several processes must be started outside Lightning (torchrun, srun), never by Lightning re-running
    ``sys.argv``: under Hydra that starts new runs and multiplies output directories."""
    environment = getattr(trainer.strategy, "cluster_environment", None)
    if trainer.world_size > 1 and environment is not None and not environment.creates_processes_externally:
        raise ConfigError(
            f"trainer.devices={trainer.num_devices}, trainer.num_nodes={trainer.num_nodes}: start one "
            "process per device yourself: `torchrun --standalone "
            f"--nproc_per_node={trainer.num_devices} train.py trainer=ddp ...` on one machine, "
            "`sbatch slurm/train.sbatch ...` on SLURM (docs/scale-out.md)"
        )


_process_started_before = False  # jobs of a multirun share one process: only the first pays its start-up


def _wall(recipe: Recipe, t_start: float, resumed: bool) -> dict:
    """``wall_s``: the seconds this run's result took over all its attempts: this one, plus what the earlier
    ones took up to the checkpoint it resumed from (steps lost after that checkpoint and done again count
    once). A resumed run also gets ``attempt_wall_s``, this attempt alone; where its checkpoint predates the
    record, ``wall_s`` is this attempt's alone and ``wall_s_covers`` says so."""
    attempt = round(time.perf_counter() - t_start, 2)
    if not resumed:
        return {"wall_s": attempt}
    if recipe.earlier_wall_s is None:
        return {"wall_s": attempt, "attempt_wall_s": attempt,
                "wall_s_covers": "the last attempt only: its checkpoint holds no wall time"}
    return {"wall_s": round(recipe.earlier_wall_s + attempt, 2), "attempt_wall_s": attempt}


def train(cfg: DictConfig, validated: bool = False) -> dict:
    """One run; ``validated``: the caller has already run :func:`mixerlab.schema.validate` on ``cfg``."""
    global _process_started_before
    if not validated:
        validate(cfg)
    t_start = time.perf_counter() - (0.0 if _process_started_before else process_age_s())
    _process_started_before = True
    quiet_lightning()
    run = run_directory(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    backbone = build_backbone(cfg)  # impossible configs fail here, before any data is read
    init_report = apply_init(cfg.get("init"), backbone)  # before the recipe's EMA copy and the fast path
    datamodule = build_datamodule(cfg)
    recipe = build_recipe(cfg, backbone)
    recipe.attempt_wall_s = lambda: time.perf_counter() - t_start  # checkpoints carry it across attempts
    loggers = start_loggers([instantiate(c) for c in (cfg.get("logger") or {}).values() if c], cfg)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    callbacks.append(StepSeeding(cfg.seed))  # exact replay after a resume, whatever the callbacks config
    checkpoint = next((c for c in callbacks if isinstance(c, RunCheckpoint)), None)
    if checkpoint is not None and owns_requeue():
        callbacks.append(RequeueOnSignal(checkpoint))
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks,
                                     plugins=trainer_plugins())
    check_launcher(trainer)
    per_device_batch = datamodule.resolve_batch_size(trainer.world_size, trainer.accumulate_grad_batches)
    # a run whose data fills no batch would end "completed" with no step taken: refuse it before fit
    datamodule.check_optimizer_steps(trainer.world_size, cfg.trainer.get("limit_train_batches"))

    summary = {
        "status": "running",
        "mixer": mixer_name(cfg),
        "backbone": HydraConfig.get().runtime.choices.get("backbone") if HydraConfig.initialized() else None,
        "data": HydraConfig.get().runtime.choices.get("data") if HydraConfig.initialized() else None,
        "experiment": cfg.get("name"),
        "seed": cfg.seed,
        "params": count_parameters(backbone),
        **_flops(backbone, cfg),
        "world_size": trainer.world_size,
        "num_nodes": trainer.num_nodes,
        "per_device_batch": per_device_batch,
        "git_commit": git_commit(),
        "run_dir": str(run.path),
    }
    if init_report is not None:
        summary["init"] = init_report
    summary.update(_step_memory(backbone, recipe, trainer, cfg, per_device_batch))
    # after the FLOP count, the memory step and the EMA copy, all of which want the eager module
    summary["fast_path"] = apply_fast_path(cfg.get("fastpath"), backbone, num_workers=datamodule.num_workers)
    if trainer.is_global_zero:
        run.save_config(cfg)
    resume = resume_point(run.checkpoints)  # the newest checkpoint that loads
    if resume:
        # durable evidence of a resume (a requeue's kill can cut the log before a line reaches it)
        summary["resumed_from_step"] = resume.step
        if resume.passed_over:
            summary["resume_passed_over"] = [f"{path} {why}" for path, why in resume.passed_over]
            if checkpoint is not None:
                checkpoint.damaged = [path for path, _ in resume.passed_over]
        if os.environ.get("SLURM_RESTART_COUNT"):
            summary["slurm_restart_count"] = int(os.environ["SLURM_RESTART_COUNT"])
        if trainer.is_global_zero:
            if resume.passed_over:
                log.warning("%s", resume.fallback_line())
            log.info("resuming from %s (step %d)", resume.path, resume.step)
    try:
        ckpt_path = str(resume.path) if resume else None
        trainer.fit(recipe, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        if recipe.needs_final_validation:  # the budget ended where no validation ran: validate once here
            trainer.validate(recipe, datamodule=datamodule, verbose=False)
            recipe.record_final_validation()
    except BaseException as error:
        full = disk_full(error, getattr(error, "filename", None) or run.path)
        message = f"{type(full or error).__name__}: {full or error}"
        summary.update(
            status=stop_status(message, bool(getattr(trainer, "received_sigterm", False))),
            error=message,
            traceback=traceback.format_exc(limit=8),
            **_wall(recipe, t_start, resumed=resume is not None),
        )
        if trainer.is_global_zero:
            if full is not None:
                log.error("%s", message)  # train.log: the summary below may not fit on the disk
            try:
                run.write_summary(summary)
            except OSError as write_error:  # a full disk: the line above and the console still say why
                log.error("summary.json not written: %s", write_error)
            print(f"{summary['status'].upper()} {summary['mixer']} | {summary['error']} | run: {run.path}",
                  flush=True)
        finish_loggers(loggers, failed=True)
        if full is not None and full is not error:
            raise full from None
        raise

    history = recipe.history
    top1s = [row["val/top1"] for row in history if "val/top1" in row]
    last = history[-1] if history else {}
    rates = [row["train/images_per_s"] for row in history if "train/images_per_s" in row]
    throughput = rates[1:] or rates  # the first timed epoch pays the warm-up
    summary.update(
        status="completed",
        top1=_round(last.get("val/top1")),
        top5=_round(last.get("val/top5")),
        best_top1=_round(max(top1s) if top1s else None),
        top1_ema=_round(last.get("val/top1_ema")),
        train_loss=_round(last.get("train/loss"), 4),
        train_images_per_s=_round(statistics.median(throughput) if throughput else None, 1),
        process_peak_memory_mb=round(peak_memory_mb(), 1),
        **_wall(recipe, t_start, resumed=resume is not None),
        startup_s=_round(recipe.first_step_at - t_start if recipe.first_step_at else None, 2),
        epochs=trainer.current_epoch,
        steps=trainer.global_step,
        global_batch=recipe.global_batch,
        lr=recipe.peak_lr,
        weights_sha256=weights_sha256(recipe.backbone),
    )
    if summary["top1_ema"] is None:
        summary.pop("top1_ema")
    if trainer.is_global_zero:
        run.write_summary(summary)
        print(
            f"{summary['mixer']} | top1 {summary['top1']}% (best {summary['best_top1']}%) | "
            f"{summary['params']:,} params | {summary['train_images_per_s']} img/s | "
            f"{summary['wall_s']} s | run: {run.path}",
            flush=True,
        )
    finish_loggers(loggers, failed=False)
    return summary


def _flops(backbone, cfg: DictConfig) -> dict:
    flops = count_flops(backbone, cfg.data.img_size, cfg.data.in_chans)
    out = {"flops": flops["flops"]}
    if flops["note"]:
        out["flops_note"] = flops["note"]
    return out


def _step_memory(backbone, recipe, trainer: L.Trainer, cfg: DictConfig, batch_size: int) -> dict:
    """Peak tensor memory of one training step at this run's per-device batch (mixerlab.costs.step_memory),
    on a copy of the model, before fit: the run's weights and random streams are untouched. Cross-entropy on
    hard labels stands in for the recipe's loss (Mixup's soft targets change no activation's size)."""
    import torch
    from timm.optim import create_optimizer_v2

    device = trainer.strategy.root_device
    d, hp = cfg.data, recipe.hparams
    images = torch.zeros(batch_size, d.in_chans, d.img_size, d.img_size, device=device)
    targets = torch.zeros(batch_size, dtype=torch.long, device=device)

    def make_optimizer(model):
        return create_optimizer_v2(model, opt=hp.opt, lr=hp.lr, weight_decay=hp.weight_decay, eps=hp.opt_eps,
                                   betas=tuple(hp.betas), **dict(hp.opt_kwargs or {}))

    return step_memory(backbone, images, targets, torch.nn.functional.cross_entropy, make_optimizer,
                       forward_context=trainer.precision_plugin.forward_context)


def _round(value, digits: int = 2):
    return None if value is None else round(float(value), digits)



