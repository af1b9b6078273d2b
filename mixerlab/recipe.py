"""The DeiT training recipe as a LightningModule (Touvron et al. 2021; facebookresearch/deit main.py).

AdamW with no weight decay on 1-D parameters, position embedding and CLS token; LR = base x global batch /
512 with global batch = per-device batch x devices x nodes x accumulation; per-step linear warmup from
``warmup_lr`` then cosine to ``min_lr`` (``decay=constant``: the peak held); Mixup/CutMix with label
smoothing and soft-target cross-entropy; optional EMA (evaluated and reported separately) and gradient
clipping. The pieces are timm's and torch's.

Mixers reach the recipe through two contract mechanisms (mixers/contract.py): auxiliary losses
(``pop_aux_losses``, added to the training loss and logged as ``train/aux_loss``; ``train/loss`` stays the
classification loss so mixers compare on it) and per-parameter optimizer tags (``mark_optim``, honoured by
:func:`param_groups`). ``dense_finetune_epochs=k``: the last k epochs run with train-time-only mixer
options off (SSA's key subsampling; ``mixers.contract.set_dense``).
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable, Mapping, Sequence

import lightning as L
import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import group_parameters
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from mixerlab import pretrained
from mixerlab.errors import ConfigError, NonFiniteError
from mixerlab.fastpath import optimizer_impl_kwargs
from mixerlab.nonfinite import (
    NAN_POLICIES,
    check_finite_weights,
    loss_is_finite,
    nonfinite_loss_message,
)
from mixers.contract import OPTIM_KEYS, copy_unaveraged_buffers, pop_aux_losses, set_dense


def global_batch_size(per_device: int, world_size: int, accumulation: int) -> int:
    """Samples per optimizer step across every device: per-device x devices x nodes x accumulation."""
    return per_device * world_size * accumulation


def scaled_lr(base_lr: float, global_batch: int, lr_batch_base: int) -> float:
    """DeiT's linear scaling rule: ``base_lr x global_batch / lr_batch_base`` (base 512)."""
    return base_lr * global_batch / lr_batch_base


# After warmup: cosine to min_lr (DeiT), or the peak held to the end (short proxy runs, RESULTS.md).
DECAYS = ("cosine", "constant")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int,
    warmup_lr: float,
    min_lr: float,
) -> CosineLRScheduler:
    """Per-step schedule: linear warmup ``warmup_lr -> lr`` over ``warmup_steps``, then cosine to ``min_lr``
    at ``total_steps``."""
    return CosineLRScheduler(
        optimizer,
        t_initial=max(1, total_steps - warmup_steps),
        lr_min=min_lr,
        warmup_t=warmup_steps,
        warmup_lr_init=warmup_lr,
        warmup_prefix=True,
        t_in_epochs=False,
    )


def param_groups(
    model: nn.Module,
    weight_decay: float,
    lr_scales: Mapping[str, float] | None = None,
) -> list[dict]:
    """Optimizer groups keyed by (weight decay, LR scale), in the order parameters first appear.

    Weight decay as timm's ``param_groups_weight_decay``: none on 1-D parameters, biases and the names (or
    fnmatch patterns) in ``model.no_weight_decay()``. A parameter's ``_optim`` tag (``mark_optim``) overrides
    both. ``lr_scales`` maps parameter names to an LR multiplier (e.g. layer-wise decay); the tag's
    ``lr_scale`` multiplies it. timm's schedulers set each group's LR to the scheduled value x ``lr_scale``.
    """
    no_wd = getattr(model, "no_weight_decay", None)
    no_wd = set(no_wd()) if callable(no_wd) else set()
    groups: dict[tuple[float, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        tags = dict(getattr(param, "_optim", {}))
        unknown = set(tags) - set(OPTIM_KEYS)
        if unknown:
            raise ConfigError(f"parameter {name} has _optim keys {sorted(unknown)}; use {list(OPTIM_KEYS)}")
        excluded = param.ndim <= 1 or name.endswith(".bias") or any(fnmatch.fnmatch(name, p) for p in no_wd)
        decay = float(tags.get("weight_decay", 0.0 if excluded or not weight_decay else weight_decay))
        scale = float((lr_scales or {}).get(name, 1.0)) * float(tags.get("lr_scale", 1.0))
        group = groups.setdefault((decay, scale), {"params": [], "weight_decay": decay})
        if scale != 1.0:
            group["lr_scale"] = scale
        group["params"].append(param)
    return list(groups.values())


def layer_decay_scales(model: nn.Module, decay: float) -> dict[str, float]:
    """Layer-wise LR decay as timm's ``param_groups_layer_decay`` computes it (BEiT): layer ids from the
    model's ``group_matcher``, scale ``decay ** (last - id)``, parameters no group matches at the last layer
    (the head: full LR). As a name -> scale map, so :func:`param_groups` can combine it with mixers' tags."""
    layer_map = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    last = max(layer_map.values()) if layer_map else 0
    return {name: decay ** (last - layer_map.get(name, last)) for name, _ in model.named_parameters()}


class Recipe(L.LightningModule):
    def __init__(
        self,
        backbone: nn.Module,
        lr: float = 5e-4,
        lr_batch_base: int = 512,
        scale_lr: bool = True,
        min_lr: float = 1e-5,
        warmup_lr: float = 1e-6,
        warmup_epochs: float = 5,
        decay: str = "cosine",
        weight_decay: float = 0.05,
        opt: str = "adamw",
        opt_eps: float = 1e-8,
        betas: Sequence[float] = (0.9, 0.999),
        opt_kwargs: Mapping | None = None,
        opt_impl: str = "auto",
        label_smoothing: float = 0.1,
        mixup: Mapping | None = None,
        ema_decay: float | None = None,
        clip_grad: float | None = None,
        nan_policy: str = "stop",
        dense_finetune_epochs: int = 0,
        freeze: Sequence[str] = (),
        layer_decay: float | None = None,
    ) -> None:
        super().__init__()
        if nan_policy not in NAN_POLICIES:
            raise ConfigError(f"recipe.nan_policy={nan_policy!r}: use one of {', '.join(NAN_POLICIES)}")
        if decay not in DECAYS:
            raise ConfigError(f"recipe.decay={decay!r}: use one of {', '.join(DECAYS)}")
        if not isinstance(dense_finetune_epochs, int) or dense_finetune_epochs < 0:
            raise ConfigError(f"recipe.dense_finetune_epochs={dense_finetune_epochs!r}: give an integer >= 0")
        if dense_finetune_epochs and not set_dense(backbone, False):
            raise ConfigError(
                f"recipe.dense_finetune_epochs={dense_finetune_epochs} but no module of this model has a "
                "train-time-only option to switch off (e.g. mixer.ssa={factor:4} of attention): set it to 0"
            )
        if layer_decay is not None and not 0 < layer_decay <= 1:
            raise ConfigError(f"recipe.layer_decay={layer_decay}: use a factor in (0, 1], or null for none")
        self.save_hyperparameters(ignore=["backbone"])
        optimizer_impl_kwargs(opt_impl, opt, opt_kwargs)  # a bad recipe.opt_impl fails here, before any data
        self.backbone = backbone
        self.frozen = pretrained.freeze(backbone, freeze)  # before the EMA copy, which then matches
        num_classes = backbone.num_classes
        mixup = dict(mixup or {})
        self.mixup_fn = None
        mixing = mixup.get("mixup_alpha", 0) > 0 or mixup.get("cutmix_alpha", 0) > 0
        if mixup.get("prob", 1.0) > 0 and mixing:
            self.mixup_fn = Mixup(label_smoothing=label_smoothing, num_classes=num_classes, **mixup)
            self.train_loss_fn: nn.Module = SoftTargetCrossEntropy()
        elif label_smoothing > 0:
            self.train_loss_fn = LabelSmoothingCrossEntropy(smoothing=label_smoothing)
        else:
            self.train_loss_fn = nn.CrossEntropyLoss()
        self.eval_loss_fn = nn.CrossEntropyLoss()
        self.ema = None
        if ema_decay:
            self.ema = ModelEmaV3(backbone, decay=ema_decay)
            self.ema.requires_grad_(False)
        top5 = min(5, num_classes)
        self.metrics = nn.ModuleDict(
            {
                "top1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
                "top5": MulticlassAccuracy(num_classes, top_k=top5, average="micro"),
            }
        )
        if self.ema is not None:
            ema_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
            self.ema_metrics = nn.ModuleDict({"top1": ema_top1})
        self.train_loss = MeanMetric()
        self.train_aux_loss = MeanMetric()  # mixers' auxiliary losses (mixers.contract.pop_aux_losses)
        self._has_aux_loss = False
        self.val_loss = MeanMetric()
        self.global_batch = 0
        self.peak_lr = lr
        self.throughput: list[float] = []  # train images/s per epoch (all ranks)
        self._epoch_start: float | None = None  # None: no epoch timed yet in this process
        self._epoch_images = 0
        self._validated_this_epoch = False
        self._train_seconds: float | None = None
        self.history: list[dict] = []  # one row per epoch; kept in checkpoints
        self.first_step_at: float | None = None  # perf_counter at the first optimizer step (start-up)
        self.attempt_wall_s: Callable[[], float] | None = None  # seconds of this attempt so far (train())
        # seconds earlier attempts took up to the checkpoint this one resumed from; None: the checkpoint
        # predates this record
        self.earlier_wall_s: float | None = 0.0
        self.skipped_steps = 0  # non-finite losses skipped under nan_policy=skip
        self._dense_stage: bool | None = None  # recipe.dense_finetune_epochs: the stage last set

    # ---------------------------------------------------------------- set-up
    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        trainer = self.trainer
        batch = trainer.datamodule.batch_size
        self.global_batch = global_batch_size(batch, trainer.world_size, trainer.accumulate_grad_batches)
        hp = self.hparams
        self.peak_lr = scaled_lr(hp.lr, self.global_batch, hp.lr_batch_base) if hp.scale_lr else hp.lr
        epochs, finetune = trainer.max_epochs, hp.dense_finetune_epochs
        if finetune and (epochs is None or epochs < finetune):
            raise ConfigError(
                f"recipe.dense_finetune_epochs={finetune} needs an epoch budget of at least as many epochs "
                f"(trainer.max_epochs={epochs}): the stage is the last epochs of the run"
            )
        if self.mixup_fn is not None and batch % 2:
            raise ConfigError(f"data.batch_size={batch} must be even when Mixup/CutMix is on (recipe.mixup)")

    def build_optimizer(self) -> torch.optim.Optimizer:
        """AdamW (timm) over :func:`param_groups`: no weight decay for 1-D parameters and the backbone's
        no_weight_decay(), mixers' ``_optim`` tags honoured.

        Frozen parameters (``recipe.freeze``) are left out. ``recipe.layer_decay=d``: timm's layer-wise LR
        decay (BEiT), each parameter's LR scale = d^(depth + 1 - layer) over the backbone's
        ``group_matcher`` layers (:func:`layer_decay_scales`), times a mixer's own ``lr_scale`` tag."""
        hp = self.hparams
        scales = layer_decay_scales(self.backbone, hp.layer_decay) if hp.layer_decay is not None else None
        return create_optimizer_v2(
            param_groups(self.backbone, hp.weight_decay, scales),
            opt=hp.opt,
            lr=self.peak_lr,
            weight_decay=hp.weight_decay,
            eps=hp.opt_eps,
            betas=tuple(hp.betas),
            **optimizer_impl_kwargs(hp.opt_impl, hp.opt, hp.opt_kwargs, cuda=self.device.type == "cuda"),
            **dict(hp.opt_kwargs or {}),
        )

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = self.build_optimizer()
        total = int(self.trainer.estimated_stepping_batches)
        steps_per_epoch = total / max(1, self.trainer.max_epochs or 1)
        if self.trainer.max_epochs in (None, -1):
            steps_per_epoch = total  # a max_steps budget: warmup_epochs counts as a fraction of it
        warmup = min(total, round(hp.warmup_epochs * steps_per_epoch))
        min_lr = self.peak_lr if hp.decay == "constant" else hp.min_lr
        scheduler = build_scheduler(optimizer, total, warmup, hp.warmup_lr, min_lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler, metric) -> None:
        scheduler.step_update(num_updates=self.global_step)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        clip = self.hparams.clip_grad or gradient_clip_val
        if clip:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")

    # ---------------------------------------------------------------- training
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def on_train_epoch_start(self) -> None:
        self._start_epoch_timer()

    def on_train_start(self) -> None:
        # Lightning skips on_train_epoch_start when it resumes mid-epoch: time the rest of that epoch from
        # here, counting only the images this process trains on (the epoch-start hook restarts it otherwise)
        self._start_epoch_timer()

    def _start_epoch_timer(self) -> None:
        self._epoch_start = time.perf_counter()
        self._epoch_images = 0
        self._train_seconds = None

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # the dense fine-tune stage, set from the epoch before every batch: Lightning skips the epoch-start
        # hook when it resumes mid-epoch, and a resumed run must be in the stage the uninterrupted one was
        finetune = self.hparams.dense_finetune_epochs
        dense = bool(finetune) and self.current_epoch >= self.trainer.max_epochs - finetune
        if finetune and dense != self._dense_stage:
            set_dense(self.backbone, dense)
            self._dense_stage = dense

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        if self.first_step_at is None:
            self.first_step_at = time.perf_counter()
        if self.mixup_fn is not None:
            images, targets = self.mixup_fn(images, targets)
        loss = self.train_loss_fn(self(images), targets)
        aux_loss = pop_aux_losses(self.backbone)
        task_loss = loss
        if aux_loss is not None:
            loss = loss + aux_loss
        if not loss_is_finite(loss, self.trainer.strategy):
            message = nonfinite_loss_message(loss, self.global_step, self.current_epoch, batch_idx,
                                             self.hparams.nan_policy)
            if self.hparams.nan_policy == "stop":
                raise NonFiniteError(message)
            self.skipped_steps += 1
            print(message, flush=True)
            return None  # Lightning skips backward and the update for this batch
        self.train_loss.update(task_loss.detach())
        if aux_loss is not None:
            self._has_aux_loss = True
            self.train_aux_loss.update(aux_loss.detach())
        self._epoch_images += images.shape[0]
        if self._bar_redraws(batch_idx):
            self.log("loss", loss.detach(), prog_bar=True, logger=False)
        return loss

    def _bar_redraws(self, batch_idx: int) -> bool:
        """Whether the progress bar shows this step: ``self.log`` costs ~5 ms a call (Lightning's result
        metrics), 15% of a digits step, so the per-step loss is logged only for the steps the bar draws."""
        bar = self.trainer.progress_bar_callback
        every = getattr(bar, "refresh_rate", 1) if bar is not None and bar.is_enabled else 0
        n = batch_idx + 1
        return every > 0 and (n % every == 0 or n == self.trainer.num_training_batches)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # EMA follows each optimizer step here, not in on_train_batch_end: callbacks (checkpoints) run
        # before that hook, and a checkpoint must hold the EMA of the weights it holds.
        if self.ema is not None:
            self.ema.update(self.backbone, step=self.global_step + 1)  # this step counted
            copy_unaveraged_buffers(self.ema.module, self.backbone)  # e.g. random features: copied

    # ---------------------------------------------------------------- evaluation
    def on_validation_epoch_start(self) -> None:
        if self._fitting() and self._train_seconds is None and self._epoch_start is not None:
            self._train_seconds = time.perf_counter() - self._epoch_start

    def _fitting(self) -> bool:
        """Inside ``Trainer.fit`` (its validation loop included), not a ``Trainer.validate`` call."""
        return self.trainer.state.fn == "fit"

    def validation_step(self, batch, batch_idx: int) -> None:
        images, targets = batch
        logits = self(images)
        # weighted by batch size: a per-sample mean whatever the batching (devices, last partial batch)
        self.val_loss.update(self.eval_loss_fn(logits, targets), weight=targets.shape[0])
        for metric in self.metrics.values():
            metric.update(logits, targets)
        if self.ema is not None:
            self.ema_metrics["top1"].update(self.ema(images), targets)

    def on_validation_epoch_end(self) -> None:
        values = {f"val/{name}": 100 * metric.compute() for name, metric in self.metrics.items()}
        if self.ema is not None:
            values["val/top1_ema"] = 100 * self.ema_metrics["top1"].compute()
            self.ema_metrics["top1"].reset()
        values["val/loss"] = self.val_loss.compute()
        for metric in self.metrics.values():
            metric.reset()
        self.val_loss.reset()
        self.log_dict(values, prog_bar=True, logger=False)
        if self._fitting() and not self.trainer.sanity_checking:
            self._validated_this_epoch = True

    def on_train_epoch_end(self) -> None:
        started = self._epoch_start if self._epoch_start is not None else time.perf_counter()
        seconds = self._train_seconds or (time.perf_counter() - started)
        images = torch.tensor(float(self._epoch_images), device=self.device)
        images = self.all_gather(images).sum() if self.trainer.world_size > 1 else images
        row = {
            "epoch": self.current_epoch,
            "step": self.global_step,
            "train/loss": float(self.train_loss.compute()),
            "lr": self.trainer.optimizers[0].param_groups[0]["lr"],
            "train/skipped_steps": self.skipped_steps,
        }
        if float(images) > 0:  # resumed at the epoch's very end: no image trained here, no rate to give
            row["train/images_per_s"] = float(images) / max(seconds, 1e-9)
            self.throughput.append(row["train/images_per_s"])
        self.train_loss.reset()
        if self._has_aux_loss:
            row["train/aux_loss"] = float(self.train_aux_loss.compute())
            self.train_aux_loss.reset()
        if self._validated_this_epoch:  # callback_metrics keeps an older epoch's val/ values otherwise
            row.update(self._val_metrics())
        self._validated_this_epoch = False
        self._epoch_start = None
        self.history.append(row)
        for logger in self.loggers:
            logger.log_metrics(row, step=self.current_epoch)

    def _val_metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")}

    @property
    def needs_final_validation(self) -> bool:
        """Whether training ended without validating its final weights: a step budget that stops inside an
        epoch (``trainer.max_steps``), or a last epoch that ``check_val_every_n_epoch`` skips."""
        return bool(self.history) and "val/top1" not in self.history[-1]

    def record_final_validation(self) -> None:
        """Fold a post-fit ``Trainer.validate`` into the last epoch's row, and log it at that epoch, so every
        completed run's summary has the top-1 of the weights it ends with."""
        values = self._val_metrics()
        self.history[-1].update(values)
        epoch = self.history[-1]["epoch"]
        for logger in self.loggers:
            logger.log_metrics({"epoch": epoch, **values}, step=epoch)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        check_finite_weights(self.backbone, self.global_step)
        checkpoint["mixer_families"] = pretrained.mixer_families(self.backbone)  # for init.checkpoint surgery
        checkpoint["history"] = list(self.history)
        checkpoint["skipped_steps"] = self.skipped_steps
        if self.earlier_wall_s is not None and self.attempt_wall_s is not None:
            checkpoint["wall_s"] = self.earlier_wall_s + self.attempt_wall_s()
        # the epoch's running train loss is per rank: keep every rank's, so a run resumed mid-epoch
        # reports the same epoch mean (all ranks are in here; all_gather stacks them on a new first dim)
        checkpoint["has_aux_loss"] = self._has_aux_loss
        for key, metric in self._per_rank_metrics():
            states = metric.metric_state
            if self.trainer.world_size > 1:
                checkpoint[key] = {k: self.all_gather(v).cpu() for k, v in states.items()}
            else:
                checkpoint[key] = {k: v.detach().cpu()[None] for k, v in states.items()}

    def _per_rank_metrics(self) -> tuple[tuple[str, MeanMetric], ...]:
        return ("train_loss_per_rank", self.train_loss), ("aux_loss_per_rank", self.train_aux_loss)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("history", []))
        self.skipped_steps = int(checkpoint.get("skipped_steps", 0))
        self.earlier_wall_s = float(checkpoint["wall_s"]) if "wall_s" in checkpoint else None
        self._has_aux_loss = bool(checkpoint.get("has_aux_loss", False))
        rank = self.trainer.global_rank if self._trainer is not None else 0
        for key, metric in self._per_rank_metrics():
            for name, per_rank in (checkpoint.get(key) or {}).items():
                if rank < len(per_rank):
                    setattr(metric, name, per_rank[rank].to(self.device))
