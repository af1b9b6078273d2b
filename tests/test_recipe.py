"""The DeiT recipe: LR scaling and schedule, no-weight-decay groups, Mixup wiring."""

from __future__ import annotations

import pytest
import torch

from mixerlab.recipe import Recipe, build_scheduler, global_batch_size, scaled_lr
from tests.conftest import tiny_vit


def test_global_batch_counts_devices_nodes_and_accumulation():
    assert global_batch_size(per_device=64, world_size=8 * 2, accumulation=1) == 1024
    assert global_batch_size(per_device=128, world_size=4, accumulation=2) == 1024


def test_lr_scales_linearly_with_global_batch_from_base_512():
    assert scaled_lr(5e-4, 1024, 512) == pytest.approx(1e-3)  # DeiT: 8 GPUs x 2 nodes x 64
    assert scaled_lr(5e-4, 256, 512) == pytest.approx(2.5e-4)


def test_schedule_warms_up_per_step_then_decays_by_cosine_to_min_lr():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=1e-3)
    sched = build_scheduler(opt, total_steps=1000, warmup_steps=100, warmup_lr=1e-6, min_lr=1e-5)

    def lr_at(step):
        sched.step_update(step)
        return opt.param_groups[0]["lr"]

    assert lr_at(0) == pytest.approx(1e-6)  # warmup start
    assert lr_at(50) == pytest.approx(1e-6 + 50 * (1e-3 - 1e-6) / 100)  # linear inside warmup
    assert lr_at(100) == pytest.approx(1e-3)  # end of warmup: peak
    assert lr_at(550) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))  # cosine half way
    assert lr_at(1000) == pytest.approx(1e-5)  # end of training: min lr


def test_no_weight_decay_groups_hold_exactly_1d_params_pos_embed_and_cls():
    model = tiny_vit()
    recipe = Recipe(model, weight_decay=0.05)
    groups = recipe.build_optimizer().param_groups
    by_id = {id(p): name for name, p in model.named_parameters()}
    no_decay = {by_id[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    decay = {by_id[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    expected = {n for n, p in model.named_parameters() if p.ndim <= 1} | {"pos_embed", "cls_token"}
    assert no_decay == expected
    assert decay == {n for n, _ in model.named_parameters()} - expected
    assert all(
        g["weight_decay"] == 0.05 for g in groups if g["params"] and by_id[id(g["params"][0])] in decay
    )


def test_mixup_switches_the_loss_to_soft_targets_with_label_smoothing():
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    mixed = Recipe(
        tiny_vit(), mixup={"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "prob": 1.0, "switch_prob": 0.5}
    )
    assert isinstance(mixed.train_loss_fn, SoftTargetCrossEntropy)
    assert mixed.mixup_fn.label_smoothing == 0.1 and mixed.mixup_fn.switch_prob == 0.5
    plain = Recipe(tiny_vit(), mixup={"prob": 0.0})
    assert plain.mixup_fn is None and isinstance(plain.train_loss_fn, LabelSmoothingCrossEntropy)


def test_ema_is_a_separate_copy_that_follows_the_weights():
    recipe = Recipe(tiny_vit(), ema_decay=0.5)
    assert recipe.ema is not None
    before = recipe.ema.module.head.weight.clone()
    with torch.no_grad():
        recipe.backbone.head.weight.add_(1.0)
    recipe.ema.update(recipe.backbone, step=10)
    torch.testing.assert_close(recipe.ema.module.head.weight, before + 0.5)
