"""The contract's mechanisms: auxiliary losses, optimizer tags, step-seeded randomness, EMA-copied state."""

from __future__ import annotations

import pytest
import torch
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import nn

from mixerlab.errors import ConfigError
from mixerlab.recipe import Recipe, param_groups
from mixers.contract import copy_unaveraged_buffers, mark_optim, pop_aux_losses, step_generator
from tests.conftest import tiny_vit


def group_of(groups: list[dict], param: nn.Parameter) -> dict:
    (group,) = [g for g in groups if any(p is param for p in g["params"])]
    return group


def test_marked_parameters_get_their_own_weight_decay_and_lr_scale():
    model = tiny_vit()
    mixer = model.blocks[0].mixer
    mark_optim(mixer.qkv.weight, weight_decay=0.0)
    mark_optim(mixer.proj.weight, lr_scale=0.1)
    mark_optim(mixer.proj.bias, lr_scale=0.1)
    groups = Recipe(model, weight_decay=0.05).build_optimizer().param_groups
    assert group_of(groups, mixer.qkv.weight)["weight_decay"] == 0.0
    assert group_of(groups, mixer.proj.weight)["lr_scale"] == 0.1
    assert group_of(groups, mixer.proj.weight)["weight_decay"] == 0.05  # the tag changes only the LR
    assert group_of(groups, mixer.proj.bias)["weight_decay"] == 0.0  # 1-D: still no decay
    assert group_of(groups, mixer.proj.bias)["lr_scale"] == 0.1
    plain = group_of(groups, model.blocks[1].mixer.qkv.weight)
    assert plain["weight_decay"] == 0.05 and "lr_scale" not in plain
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert len({(g["weight_decay"], g.get("lr_scale", 1.0)) for g in groups}) == len(groups) == 4


def test_timm_schedulers_multiply_a_groups_lr_by_its_lr_scale():
    model = tiny_vit()
    mark_optim(model.head.weight, lr_scale=0.25)
    optimizer = torch.optim.AdamW(param_groups(model, 0.05, lr_scales={"head.bias": 0.5}), lr=1e-3)
    CosineLRScheduler(optimizer, t_initial=10, t_in_epochs=False).step_update(0)
    assert group_of(optimizer.param_groups, model.head.weight)["lr"] == pytest.approx(2.5e-4)
    assert group_of(optimizer.param_groups, model.head.bias)["lr"] == pytest.approx(5e-4)
    assert group_of(optimizer.param_groups, model.pos_embed)["lr"] == pytest.approx(1e-3)


def test_an_unknown_optimizer_tag_names_the_parameter():
    model = tiny_vit()
    model.head.weight._optim = {"lr": 1e-3}  # an absolute LR is not a tag the recipe knows
    with pytest.raises(ConfigError, match=r"head\.weight has _optim keys \['lr'\]"):
        param_groups(model, 0.05)


class Penalised(nn.Module):
    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = weight
        self.aux_loss = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.aux_loss = self.weight * x.pow(2).mean()
        return x


def test_aux_losses_are_summed_over_modules_and_reset():
    model = nn.Sequential(Penalised(1.0), nn.Linear(3, 3), Penalised(2.0))
    x = torch.ones(2, 3)
    y = model(x)
    total = pop_aux_losses(model)
    torch.testing.assert_close(total, 1.0 + 2.0 * y.pow(2).mean())
    assert pop_aux_losses(model) is None and all(getattr(m, "aux_loss", None) is None for m in model)
    model.eval()(x)
    assert pop_aux_losses(model) is None  # evaluation forwards set none


def test_step_generators_depend_only_on_seed_layer_and_step():
    draw = lambda *key: torch.randn(4, generator=step_generator(*key, torch.device("cpu")))  # noqa: E731
    torch.manual_seed(1)
    a = draw(0, 2, 100)
    torch.manual_seed(2)  # the global RNG plays no part
    assert torch.equal(a, draw(0, 2, 100))
    assert not torch.equal(a, draw(0, 3, 100)) and not torch.equal(a, draw(0, 2, 101))
    assert not torch.equal(a, draw(1, 2, 100))


class WithRandomMatrix(nn.Module):
    ema_copy_buffers = ("matrix",)

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("matrix", torch.zeros(2, 2))
        self.register_buffer("running", torch.zeros(2))
        self.weight = nn.Parameter(torch.zeros(2))


def test_ema_copies_the_buffers_a_module_marks_and_averages_the_rest():
    model = nn.Sequential(WithRandomMatrix())
    ema = ModelEmaV3(model, decay=0.5)
    model[0].matrix.fill_(4.0)
    model[0].running.fill_(4.0)
    ema.update(model, step=10)
    copy_unaveraged_buffers(ema.module, model)
    assert (ema.module[0].matrix == 4.0).all() and (ema.module[0].running == 2.0).all()


def test_the_recipe_optimises_the_classification_loss_plus_the_aux_losses():
    from types import SimpleNamespace

    from mixers.attention import Attention

    class PenalisedAttention(Attention):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = super().forward(x)
            self.aux_loss = 0.5 * y.pow(2).mean() if self.training else None
            return y

    model = tiny_vit(lambda **kw: PenalisedAttention(num_heads=2, **kw))
    recipe = Recipe(model, label_smoothing=0.0, mixup={"prob": 0.0})
    recipe._trainer = SimpleNamespace(strategy=None, progress_bar_callback=None)
    images, targets = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(0)
    loss = recipe.training_step((images, targets), 0)
    assert pop_aux_losses(model) is None  # the recipe took them: none left for the next step
    torch.manual_seed(0)
    logits = model(images)
    aux = pop_aux_losses(model)
    assert aux is not None and aux > 0
    task = torch.nn.functional.cross_entropy(logits, targets)
    torch.testing.assert_close(loss, task + aux)
    torch.testing.assert_close(recipe.train_aux_loss.compute(), aux.detach())
    torch.testing.assert_close(recipe.train_loss.compute(), task.detach())  # train/loss: classification only
