"""recipe.nan_policy: a NaN loss stops the run naming its step, or the step is skipped and counted."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from mixerlab.build import build_backbone, build_datamodule, build_recipe, compose_config
from mixerlab.errors import ConfigError, NonFiniteError
from mixerlab.nonfinite import check_finite_weights
from tests.faults import ENV as FAULTS_ENV
from tests.faults import InjectNonFinite


def _fit(policy: str, nan_at_step: int, monkeypatch) -> L.LightningModule:
    monkeypatch.setenv(FAULTS_ENV, "1")
    cfg = compose_config([f"recipe.nan_policy={policy}", "data.batch_size=32"])
    recipe = build_recipe(cfg, build_backbone(cfg))
    trainer = L.Trainer(max_epochs=1, limit_train_batches=nan_at_step + 2, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, accelerator="cpu", use_distributed_sampler=False,
                        callbacks=[InjectNonFinite(at_step=nan_at_step)])
    trainer.fit(recipe, datamodule=build_datamodule(cfg))
    return recipe


def test_nan_loss_stops_the_run_with_a_message_naming_the_step(monkeypatch):
    with pytest.raises(NonFiniteError, match=r"non-finite loss \(nan\) at step 1 \(epoch 0, batch 1\)"):
        _fit("stop", nan_at_step=1, monkeypatch=monkeypatch)


def test_skip_policy_drops_the_step_counts_it_and_keeps_weights_finite(monkeypatch, capsys):
    recipe = _fit("skip", nan_at_step=1, monkeypatch=monkeypatch)
    assert recipe.skipped_steps == 1
    assert recipe.history[-1]["train/skipped_steps"] == 1
    assert recipe.trainer.global_step == 3  # the skipped batch still counts as a step of the schedule
    assert all(torch.isfinite(p).all() for p in recipe.backbone.parameters())
    assert "step skipped (recipe.nan_policy=skip)" in capsys.readouterr().out


def test_non_finite_weights_are_never_checkpointed():
    layer = torch.nn.Linear(2, 2)
    check_finite_weights(layer, step=5)
    with torch.no_grad():
        layer.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"non-finite weights at step 5 \(weight\)"):
        check_finite_weights(layer, step=5)


def test_unknown_nan_policy_is_a_config_error():
    cfg = compose_config(["recipe.nan_policy=ignore"])
    with pytest.raises(Exception, match=r"recipe.nan_policy='ignore': use one of stop, skip") as error:
        build_recipe(cfg, build_backbone(cfg))
    assert isinstance(error.value, ConfigError) or isinstance(error.value.__cause__, ConfigError)
