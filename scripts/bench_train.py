"""Training-step throughput of any backbone x mixer, against timm's DeiT, Lightning and the hardware.

    python scripts/bench_train.py backbone=vit_small data=synthetic data.batch_size=32 --compare-timm
    python scripts/bench_train.py --real-data --lightning-only                # the default digits run
    python scripts/bench_train.py --smoke --compare-timm                      # tiny sizes (CI)
    python scripts/bench_train.py --full-run experiment=proxy_odd_one_out mixer=spectral   # run vs step
    python scripts/bench_train.py --compare-precision bf16-mixed experiment=proxy_odd_one_out mixer=attention

Measured in one process, warm-up steps excluded, medians over rounds:
  ours       a plain training step (forward, loss, backward, optimizer step, zero_grad) of the configured
             model on synthetic tensors already on the device, with the configured fast path
             (``fastpath.*``, ``trainer.precision``, ``recipe.opt_impl``).
  timm       (--compare-timm) timm's matching DeiT built with ``pretrained=False`` (deit_tiny/small/base
             _patch16_224, or timm's VisionTransformer with the same widths), same batch, precision, loss and
             optimizer hyper-parameters, with timm's defaults otherwise (the optimizer kernel torch picks,
             no compile); ``--timm-like-ours`` gives timm our fast path too, which isolates the model code.
             ours and timm alternate (ABBA order) each round; the ratio is the median of per-round ratios.
  lightning  Recipe + lightning.Trainer (as train.py builds it, minus checkpoints and loggers) against a
             plain loop doing the same work (same DataLoader, optimizer, LR schedule, loss), alternating.
  full run   (--full-run) the bare step above (the recipe's loss and optimizer on synthetic tensors of the
             preset's batch) against the real ``train.py`` path for the same config: mixerlab.training.train
             in this process, a fresh run directory each round, with the preset's data, callbacks, progress
             bar, checkpoints and loggers. Its figure is the run's own ``train_images_per_s`` (summary.json:
             training images / the epoch's training seconds, data, hooks and checkpoints included,
             validation not); rounds alternate, the ratio is the median of per-round ratios. The bare step
             is timed over one epoch's steps of the run unless --steps says otherwise, so that both sides
             sample the machine over the same stretch of time.
  precision  (--compare-precision P) the bare step in the configured precision against the same model (same
             initial weights, same batch) in precision P, alternating (ABBA); the ratio is P's images/s over
             the configured one's, the median of per-round ratios. Decides a mixer's precision by measurement.
  flops      fwd+bwd FLOPs per step (torch.utils.flop_counter) -> achieved TFLOP/s; on a GPU, MFU against
             the device's dense bf16 peak (conf/hardware/accelerators.yaml or --peak-tflops).

The last stdout line is one JSON object with the headline figures, the settings and the machine state
(load average before and after: on a shared machine, trust the side-by-side ratios over absolute figures).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict, read_write  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from mixerlab.build import build_backbone, build_datamodule, build_recipe, compose_config, mixer_name  # noqa: E402
from mixerlab.costs import count_parameters  # noqa: E402
from mixerlab.fastpath import apply_fast_path, autocast_for, optimizer_impl_kwargs  # noqa: E402
from mixerlab.run import git_commit  # noqa: E402
from mixerlab.training import quiet_lightning  # noqa: E402

TIMM_DEIT = {
    (192, 12, 3): "deit_tiny_patch16_224",
    (384, 12, 6): "deit_small_patch16_224",
    (768, 12, 12): "deit_base_patch16_224",
}
SMOKE_FULL_RUN_OVERRIDES = [
    "experiment=proxy_odd_one_out",
    "data.samples_per_epoch=256",
    "data.val_samples=64",
    "data.batch_size=32",
    "backbone.depth=1",
    "backbone.embed_dim=32",
]
SMOKE_OVERRIDES = [
    "data=synthetic",
    "data.img_size=32",
    "data.batch_size=4",
    "data.num_classes=10",
    "data.num_train=16",
    "data.num_val=4",
    "data.bank_size=4",
    "backbone=vit_micro",
    "backbone.patch_size=8",
    "backbone.depth=2",
    "backbone.embed_dim=32",
]


# ------------------------------------------------------------------------------------------ timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepLoop:
    """One model's training step on fixed tensors: forward, loss, backward, optimizer step."""

    def __init__(
        self,
        name: str,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        images: torch.Tensor,
        targets: torch.Tensor,
        loss_fn: nn.Module,
        precision: str,
        memory_base_mb: float = 0.0,
    ) -> None:
        self.name, self.model, self.optimizer = name, model, optimizer
        self.memory_base_mb = memory_base_mb  # CUDA memory other things held before this model was built
        self.images, self.targets, self.loss_fn = images, targets, loss_fn
        self.autocast, needs_scaler = autocast_for(precision, images.device)
        self.scaler = torch.amp.GradScaler(images.device.type) if needs_scaler else None
        self.images_per_s: list[float] = []
        self.cpu_s_per_step: list[float] = []
        self.peak_memory_mb: float | None = None

    def step(self) -> None:
        with self.autocast:
            loss = self.loss_fn(self.model(self.images), self.targets)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def warm_up(self, steps: int) -> None:
        device = self.images.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(steps):
            self.step()
        synchronize(device)
        self.peak_memory_mb = peak_memory_mb(device) - (self.memory_base_mb if device.type == "cuda" else 0.0)

    def timed(self, steps: int) -> None:
        synchronize(self.images.device)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self.step()
        synchronize(self.images.device)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        self.images_per_s.append(steps * self.images.shape[0] / wall)
        self.cpu_s_per_step.append(cpu / steps)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated since the last reset. CPU: the process's peak resident set so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def allocated_mb(device: torch.device) -> float:
    return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0


def alternate(loops: list[StepLoop], rounds: int, steps: int) -> None:
    """ABBA order: round r runs the loops forwards when r is even, backwards when odd (cancels drift)."""
    for r in range(rounds):
        for loop in loops if r % 2 == 0 else loops[::-1]:
            loop.timed(steps)


def ratios(a: list[float], b: list[float]) -> list[float]:
    return [x / y for x, y in zip(a, b, strict=True)]


def median(values: list[float], digits: int = 3) -> float | None:
    return round(statistics.median(values), digits) if values else None


# ------------------------------------------------------------------------------------------ models
def make_optimizer(
    model: nn.Module, recipe_cfg: DictConfig, lr: float, impl: str | None, device: torch.device
):
    """The recipe's optimizer (timm create_optimizer_v2, no-wd groups); impl None: torch's default kernel."""
    from timm.optim import create_optimizer_v2

    opt_kwargs = dict(recipe_cfg.get("opt_kwargs") or {})
    impl_kwargs = (
        optimizer_impl_kwargs(impl, recipe_cfg.opt, opt_kwargs, cuda=device.type == "cuda") if impl else {}
    )
    return create_optimizer_v2(
        model,
        opt=recipe_cfg.opt,
        lr=lr,
        weight_decay=recipe_cfg.weight_decay,
        eps=recipe_cfg.opt_eps,
        betas=tuple(recipe_cfg.betas),
        **impl_kwargs,
        **opt_kwargs,
    )


def timm_counterpart(cfg: DictConfig) -> tuple[nn.Module, str]:
    """timm's DeiT with our widths (pretrained=False: nothing is downloaded)."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    b, d = cfg.backbone, cfg.data
    common = dict(
        img_size=d.img_size,
        in_chans=d.in_chans,
        num_classes=d.num_classes,
        drop_path_rate=b.drop_path_rate,
        drop_rate=b.drop_rate,
    )
    name = TIMM_DEIT.get((b.embed_dim, b.depth, b.num_heads))
    if name and b.patch_size == 16 and b.mlp_ratio == 4.0 and b.head == "cls":
        return timm.create_model(name, pretrained=False, **common), name
    pool = (
        {"class_token": True, "global_pool": "token"}
        if b.head == "cls"
        else {"class_token": False, "global_pool": "avg"}
    )
    model = VisionTransformer(
        patch_size=b.patch_size,
        embed_dim=b.embed_dim,
        depth=b.depth,
        num_heads=b.num_heads,
        mlp_ratio=b.mlp_ratio,
        qkv_bias=True,
        **pool,
        **common,
    )
    return model, f"timm VisionTransformer(D={b.embed_dim}, L={b.depth}, h={b.num_heads}, P={b.patch_size})"


def step_flops(model: nn.Module, cfg: DictConfig, device: torch.device) -> int:
    """FLOPs of one image's forward + backward (torch.utils.flop_counter, multiply-add = 2), eager model.

    Attention and FFT ops (forward and backward) are counted by mixerlab.costs' formulas on any torch,
    whichever SDPA backend runs; FLOPs scale with batch.
    """
    d = cfg.data
    images = torch.randn(1, d.in_chans, d.img_size, d.img_size, device=device)
    with FlopCounterMode(display=False) as counter:
        model(images).float().sum().backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str | None]:
    if override:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name(device)
    table = OmegaConf.load(REPO / "conf" / "hardware" / "accelerators.yaml").bf16_peak_tflops
    for key, value in table.items():
        if key.lower() in name.lower():
            return float(value), f"conf/hardware/accelerators.yaml[{key}] ({name})"
    return None, f"{name} not in conf/hardware/accelerators.yaml: pass --peak-tflops"


# ------------------------------------------------------------------------------------------ ours vs timm
def synthetic_batch(cfg: DictConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of the configured shape (``data.batch_size`` images and labels), drawn after seeding torch
    with ``cfg.seed``: every comparison times its models on the same tensors."""
    d = cfg.data
    torch.manual_seed(cfg.seed)
    images = torch.randn(d.batch_size, d.in_chans, d.img_size, d.img_size, device=device)
    return images, torch.randint(0, d.num_classes, (d.batch_size,), device=device)


def model_vs_timm(cfg: DictConfig, args, device: torch.device, report: dict) -> None:
    d = cfg.data
    batch = d.batch_size
    images, targets = synthetic_batch(cfg, device)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=float(cfg.recipe.get("label_smoothing", 0.0)))
    lr = float(cfg.recipe.lr)
    precision = str(cfg.trainer.precision)

    base = allocated_mb(device)
    ours = build_backbone(cfg).to(device)
    flops = step_flops(ours, cfg, device) * batch
    applied = apply_fast_path(cfg.get("fastpath"), ours, num_workers=0)
    impl = cfg.recipe.get("opt_impl", "auto")
    loops = [
        StepLoop(
            "ours",
            ours,
            make_optimizer(ours, cfg.recipe, lr, impl, device),
            images,
            targets,
            loss_fn,
            precision,
            base,
        )
    ]
    loops[0].warm_up(args.warmup)  # before timm exists, so the CPU peak RSS is ours alone
    report.update(fast_path=applied, opt_impl=impl, params=count_parameters(ours))
    report["peak_memory_note"] = (
        "peak CUDA memory allocated in the model's warm-up, above what was allocated before it was built"
        if device.type == "cuda"
        else "process peak RSS after the model's warm-up (ours first, so timm's figure includes ours)"
    )
    if args.compare_timm:
        base = allocated_mb(device)
        timm_model, timm_name = timm_counterpart(cfg)
        timm_model = timm_model.to(device)
        timm_impl = impl if args.timm_like_ours else None
        if args.timm_like_ours:
            apply_fast_path(cfg.get("fastpath"), timm_model, num_workers=0)
        loops.append(
            StepLoop(
                "timm",
                timm_model,
                make_optimizer(timm_model, cfg.recipe, lr, timm_impl, device),
                images,
                targets,
                loss_fn,
                precision,
                base,
            )
        )
        loops[1].warm_up(args.warmup)
        report["timm_model"] = timm_name
        report["timm_params"] = count_parameters(timm_model)
        report["timm_settings"] = (
            "our fast path" if args.timm_like_ours else "timm defaults (torch's optimizer kernel, no compile)"
        )
        if report["timm_params"] != report["params"]:
            report["note"] = (
                "parameter counts differ: the timm model is DeiT attention, ours uses " + report["mixer"]
            )
    if args.profile:
        profile_steps(loops)
    alternate(loops, args.rounds, args.steps)

    for loop in loops:
        report[loop.name] = {
            "images_per_s": median(loop.images_per_s, 2),
            "images_per_s_rounds": [round(x, 2) for x in loop.images_per_s],
            "cpu_s_per_step": median(loop.cpu_s_per_step, 4),
            "peak_memory_mb": round(loop.peak_memory_mb, 1),
        }
        line = (
            f"{loop.name:>5}: {report[loop.name]['images_per_s']} img/s (median of {args.rounds} rounds x "
            f"{args.steps} steps), peak memory {report[loop.name]['peak_memory_mb']} MB"
        )
        print(line, flush=True)
    if args.compare_timm:
        wall = ratios(loops[0].images_per_s, loops[1].images_per_s)
        cpu = ratios(loops[1].cpu_s_per_step, loops[0].cpu_s_per_step)
        report["ratio_ours_timm"] = median(wall)
        report["ratio_ours_timm_rounds"] = [round(x, 3) for x in wall]
        report["ratio_ours_timm_cpu_time"] = median(cpu)
        print(
            f"ours / timm throughput: {report['ratio_ours_timm']} "
            f"(per round {report['ratio_ours_timm_rounds']}; "
            f"by process CPU time {report['ratio_ours_timm_cpu_time']})",
            flush=True,
        )

    step_s = batch / report["ours"]["images_per_s"]
    report["flops_per_step"] = flops
    report["achieved_tflops"] = round(flops / step_s / 1e12, 4)
    peak, source = peak_tflops(device, args.peak_tflops)
    report["peak_tflops"], report["peak_source"] = peak, source
    report["mfu"] = round(report["achieved_tflops"] / peak, 4) if peak else None
    mfu = f", MFU {100 * report['mfu']:.1f}% of {peak} TFLOP/s" if peak else ""
    print(
        f"model FLOPs {flops / 1e9:.1f} GFLOP/step (fwd+bwd) -> {report['achieved_tflops']} TFLOP/s{mfu}",
        flush=True,
    )


def profile_steps(loops: list[StepLoop]) -> None:
    """One profiled step per model: the operator table is the evidence for where time goes."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    for loop in loops:
        with profile(activities=activities) as prof:
            loop.step()
            synchronize(loop.images.device)
        sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        print(f"--- profile: {loop.name}, one step ---")
        print(prof.key_averages().table(sort_by=sort, row_limit=18, max_name_column_width=50), flush=True)


# ---------------------------------------------------------------------------------- Lightning vs plain
def clock_reading() -> tuple[float, float]:
    """(wall, this process's CPU time): on a shared CPU the CPU-time figure is the steadier one."""
    return time.perf_counter(), time.process_time()


class StepClock(L.Callback):
    """Clock readings after every training batch (after a device sync), as the plain loop records them."""

    def __init__(self) -> None:
        self.times: list[tuple[float, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        synchronize(pl_module.device)
        self.times.append(clock_reading())


def lightning_vs_plain(cfg: DictConfig, args, device: torch.device, report: dict) -> None:
    """Images/s of Recipe + Trainer vs a plain loop over the same DataLoader, model and optimizer settings."""
    from mixerlab.recipe import build_scheduler

    if not args.real_data:
        cfg = cfg.copy()
        d = cfg.data
        cfg.data = OmegaConf.create(
            {
                "_target_": "data.synthetic.SyntheticDataModule",
                "img_size": d.img_size,
                "in_chans": d.in_chans,
                "num_classes": d.num_classes,
                "batch_size": d.batch_size,
                "num_workers": d.get("num_workers", 0),
                "pin_memory": True,
                "seed": cfg.seed,
                "num_train": d.batch_size * (args.warmup + args.steps),
                "num_val": d.batch_size,
                "bank_size": min(64, d.batch_size * 2),
            }
        )
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    backbone = build_backbone(cfg)
    recipe = build_recipe(cfg, backbone)
    apply_fast_path(cfg.get("fastpath"), backbone, num_workers=datamodule.num_workers)
    recipe.to(device)
    steps_total = args.warmup + args.steps
    precision = str(cfg.trainer.precision)
    autocast, needs_scaler = autocast_for(precision, device)

    def throughput(times: list[tuple[float, float]]) -> tuple[float, float]:
        """(images/s by wall clock, images per CPU-second) over the timed steps."""
        (wall0, cpu0), (wall1, cpu1) = times[args.warmup - 1], times[steps_total - 1]
        images = args.steps * datamodule.batch_size
        return images / (wall1 - wall0), images / max(cpu1 - cpu0, 1e-9)

    def plain_round() -> tuple[float, float]:
        """A nanoGPT-style loop doing the recipe's per-step work."""
        hp = recipe.hparams
        optimizer = make_optimizer(backbone, cfg.recipe, hp.lr, hp.get("opt_impl", "auto"), device)
        scheduler = build_scheduler(optimizer, steps_total, 0, hp.warmup_lr, hp.min_lr)
        scaler = torch.amp.GradScaler(device.type) if needs_scaler else None
        loader = datamodule.train_dataloader()
        times, step, epoch = [], 0, 0
        backbone.train()
        while step < steps_total:
            loader.sampler.set_epoch(epoch)
            for images, targets in loader:
                images = images.to(device, non_blocking=True)
                targets = targets.to(device, non_blocking=True)
                if recipe.mixup_fn is not None:
                    images, targets = recipe.mixup_fn(images, targets)
                with autocast:
                    loss = recipe.train_loss_fn(backbone(images), targets)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                scheduler.step_update(num_updates=step)
                synchronize(device)
                times.append(clock_reading())
                if step == steps_total:
                    break
            epoch += 1
        return throughput(times)

    def lightning_round() -> tuple[float, float]:
        clock = StepClock()
        callbacks = [clock]
        progress = (cfg.get("callbacks") or {}).get("progress")
        if progress:  # train.py's progress bar is part of the path being measured
            callbacks.append(instantiate(progress))
        trainer = instantiate(
            cfg.trainer,
            logger=False,
            callbacks=callbacks,
            enable_checkpointing=False,
            max_steps=steps_total,
            max_epochs=-1,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            enable_progress_bar=bool(progress),
            enable_model_summary=False,
            default_root_dir=str(args.scratch),
        )
        trainer.fit(recipe, datamodule=datamodule)
        return throughput(clock.times)

    plain, lightning = [], []
    for r in range(args.rounds):
        for name in ("plain", "lightning") if r % 2 == 0 else ("lightning", "plain"):
            (plain if name == "plain" else lightning).append(
                plain_round() if name == "plain" else lightning_round()
            )
    overhead = [p[0] / li[0] - 1 for p, li in zip(plain, lightning, strict=True)]
    overhead_cpu = [p[1] / li[1] - 1 for p, li in zip(plain, lightning, strict=True)]
    report["lightning"] = {
        "data": "configured data module"
        if args.real_data
        else "synthetic tensors through the configured loader",
        "plain_images_per_s": median([p[0] for p in plain], 2),
        "lightning_images_per_s": median([li[0] for li in lightning], 2),
        "overhead_pct": round(100 * statistics.median(overhead), 2),
        "overhead_pct_rounds": [round(100 * x, 2) for x in overhead],
        "overhead_pct_cpu_time": round(100 * statistics.median(overhead_cpu), 2),
        "overhead_pct_cpu_time_rounds": [round(100 * x, 2) for x in overhead_cpu],
    }
    lt = report["lightning"]
    print(
        f"Lightning {lt['lightning_images_per_s']} img/s vs plain loop {lt['plain_images_per_s']} img/s: "
        f"overhead {lt['overhead_pct']}% (per round {lt['overhead_pct_rounds']}); by process CPU time "
        f"{lt['overhead_pct_cpu_time']}% (per round {lt['overhead_pct_cpu_time_rounds']})",
        flush=True,
    )


# ---------------------------------------------------------------------------------- full run vs bare step
def full_run_vs_step(cfg: DictConfig, args, device: torch.device, report: dict) -> None:
    """Images/s of the bare training step against ``train.py``'s whole path for the same config, alternating.

    The bare step is what the model alone allows: the recipe's loss, the preset's optimizer settings and
    fast path, synthetic tensors of the preset's batch already in memory. The full run adds everything a
    user's run does per step (batches made, Lightning's loop, callbacks, the progress bar, checkpoints).
    """
    from mixerlab.training import train as train_run

    images, targets = synthetic_batch(cfg, device)
    backbone = build_backbone(cfg).to(device)
    recipe = build_recipe(cfg, backbone)
    datamodule = build_datamodule(cfg)
    workers = datamodule.num_workers
    if args.steps is None:  # the run's epoch: 20 steps caught a 2-core VM's fast or slow spells
        args.steps = datamodule.check_optimizer_steps(1, cfg.trainer.get("limit_train_batches"))
    applied = apply_fast_path(cfg.get("fastpath"), backbone, num_workers=workers)
    optimizer = make_optimizer(backbone, cfg.recipe, float(cfg.recipe.lr), cfg.recipe.get("opt_impl", "auto"),
                               device)
    bare = StepLoop("bare", backbone, optimizer, images, targets, recipe.train_loss_fn,
                    str(cfg.trainer.precision))
    bare.warm_up(args.warmup)
    report.update(fast_path=applied, params=count_parameters(backbone), data_workers=workers)

    full_rate: list[float] = []
    full_wall: list[float] = []
    digests: list[str] = []

    def full_round(r: int) -> None:
        run_cfg = cfg.copy()
        runtime = run_cfg.hydra.runtime
        with read_write(runtime), open_dict(runtime):
            runtime.output_dir = str(args.scratch / f"full_run_{r}")  # a fresh directory: never a resume
        HydraConfig.instance().set_config(run_cfg)
        summary = train_run(run_cfg)
        full_rate.append(float(summary["train_images_per_s"]))
        full_wall.append(float(summary["wall_s"]))
        digests.append(summary["weights_sha256"])

    for r in range(args.rounds):
        for side in ("bare", "full") if r % 2 == 0 else ("full", "bare"):
            if side == "bare":
                bare.timed(args.steps)
            else:
                full_round(r)
    per_round = ratios(full_rate, bare.images_per_s)
    report["full_run"] = {
        "bare_images_per_s": median(bare.images_per_s, 1),
        "bare_images_per_s_rounds": [round(x, 1) for x in bare.images_per_s],
        "bare_steps_per_round": args.steps,
        "full_images_per_s": median(full_rate, 1),
        "full_images_per_s_rounds": [round(x, 1) for x in full_rate],
        "full_wall_s_rounds": full_wall,
        "ratio": median(per_round),
        "ratio_rounds": [round(x, 3) for x in per_round],
        "same_weights_every_round": len(set(digests)) == 1,
        "weights_sha256": digests[0],
        "full_run_note": "train_images_per_s of summary.json: training images / the epoch's training "
        "seconds (data, hooks, checkpoints included; validation and start-up not)",
    }
    fr = report["full_run"]
    print(
        f"bare step {fr['bare_images_per_s']} img/s (median of {args.rounds} rounds x {args.steps} steps) | "
        f"full run {fr['full_images_per_s']} img/s (train_images_per_s, median of {args.rounds} runs) | "
        f"full / bare {fr['ratio']} (per round {fr['ratio_rounds']})",
        flush=True,
    )


def precision_vs_configured(cfg: DictConfig, args, device: torch.device, report: dict) -> None:
    """The bare step in the configured precision against the same model in ``args.compare_precision``.

    Two copies of one initialisation, each with its own optimizer, on the same synthetic batch, alternating
    ABBA. Only speed is compared: a lower precision changes the results, so it stays opt-in.
    """
    import copy

    images, targets = synthetic_batch(cfg, device)
    backbone = build_backbone(cfg).to(device)
    recipe = build_recipe(cfg, backbone)
    applied = apply_fast_path(cfg.get("fastpath"), backbone, num_workers=0)
    impl = cfg.recipe.get("opt_impl", "auto")
    configured, other = str(cfg.trainer.precision), str(args.compare_precision)
    loops = []
    for name, precision in ((configured, configured), (other, other)):
        model = backbone if not loops else copy.deepcopy(backbone)
        optimizer = make_optimizer(model, cfg.recipe, float(cfg.recipe.lr), impl, device)
        loops.append(StepLoop(name, model, optimizer, images, targets, recipe.train_loss_fn, precision))
        loops[-1].warm_up(args.warmup)
    alternate(loops, args.rounds, args.steps)
    per_round = ratios(loops[1].images_per_s, loops[0].images_per_s)
    report.update(fast_path=applied, params=count_parameters(backbone))
    report["precision_compare"] = {
        "configured": configured,
        "other": other,
        "configured_images_per_s": median(loops[0].images_per_s, 1),
        "other_images_per_s": median(loops[1].images_per_s, 1),
        "ratio": median(per_round),
        "ratio_rounds": [round(x, 3) for x in per_round],
    }
    pr = report["precision_compare"]
    print(
        f"{mixer_name(cfg)} | {configured} {pr['configured_images_per_s']} img/s | {other} "
        f"{pr['other_images_per_s']} img/s | {other} / {configured} {pr['ratio']} (per round "
        f"{pr['ratio_rounds']}; {args.rounds} rounds x {args.steps} steps)",
        flush=True,
    )


# ------------------------------------------------------------------------------------------ main
def machine() -> dict:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def versions() -> dict:
    import timm

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "lightning": L.__version__,
        "cuda": torch.version.cuda,
    }


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--compare-timm", action="store_true", help="alternate with timm's matching DeiT")
    parser.add_argument(
        "--timm-like-ours", action="store_true", help="give timm our fast path (compile, optimizer kernel)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (medians are over rounds)")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed steps per model per round (default 3; with --full-run, the steps of one training epoch "
        "of the run, so that the bare step and the run are timed over the same stretch of time)",
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compile happens here)")
    parser.add_argument(
        "--lightning-only", action="store_true", help="only the Lightning vs plain loop comparison"
    )
    parser.add_argument(
        "--no-lightning", action="store_true", help="skip the Lightning vs plain loop comparison"
    )
    parser.add_argument(
        "--real-data",
        action="store_true",
        help="Lightning comparison on the configured data module instead of synthetic tensors",
    )
    parser.add_argument(
        "--profile", action="store_true", help="print a torch.profiler table of one step per model"
    )
    parser.add_argument(
        "--full-run",
        action="store_true",
        help="the bare step vs train.py's whole path for the same config (proxy presets), alternating",
    )
    parser.add_argument(
        "--compare-precision",
        metavar="PRECISION",
        default=None,
        help="the bare step in the configured precision vs this one (e.g. bf16-mixed), alternating",
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak (MFU)")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny model and sizes: checks the machinery (CI)"
    )
    args, overrides = parser.parse_known_args(argv)
    unknown = [o for o in overrides if o.startswith("--")]
    if unknown:
        parser.error(f"unknown options {unknown}; Hydra overrides look like key=value")
    if args.smoke:
        overrides = (SMOKE_FULL_RUN_OVERRIDES if args.full_run else SMOKE_OVERRIDES) + overrides
        args.rounds, args.warmup = min(args.rounds, 2), 1
        args.steps = None if args.steps is None else min(args.steps, 2)
    if args.steps is None and not args.full_run:
        args.steps = 3
    if args.warmup < 1 or (args.steps is not None and args.steps < 1) or args.rounds < 1:
        parser.error("--warmup, --steps and --rounds must be at least 1")
    return args, overrides


def main(argv: list[str]) -> dict:
    args, overrides = parse_args(argv)
    quiet_lightning()
    logging.getLogger("timm.scheduler").setLevel(logging.ERROR)  # "no effect" notes for short schedules
    cfg = compose_config(overrides)
    device = torch.device(
        "cuda" if torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda") else "cpu"
    )
    args.scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_train_{os.getpid()}"
    choices = HydraConfig.get().runtime.choices
    report: dict = {
        "bench": "train_step",
        "command": "python scripts/bench_train.py " + " ".join(argv),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "backbone": choices.get("backbone"),
        "mixer": mixer_name(cfg),
        "data": choices.get("data"),
        "img_size": cfg.data.img_size,
        "batch": cfg.data.batch_size,
        "precision": str(cfg.trainer.precision),
        "device": str(device),
        "machine": machine(),
        "versions": versions(),
        "git_commit": git_commit(),
    }
    print(
        f"bench_train: {report['backbone']} x {report['mixer']}, {report['img_size']} px, batch "
        f"{report['batch']}, {report['precision']} on {device} ({report['machine']['cpu']}, "
        f"{report['machine']['cores']} cores, load {report['machine']['load_avg']})",
        flush=True,
    )
    if args.full_run:
        full_run_vs_step(cfg, args, device, report)
    elif args.compare_precision:
        precision_vs_configured(cfg, args, device, report)
    elif not args.lightning_only:
        model_vs_timm(cfg, args, device, report)
    if not args.no_lightning and not args.full_run and not args.compare_precision:
        lightning_vs_plain(cfg, args, device, report)
    report["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report), flush=True)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
