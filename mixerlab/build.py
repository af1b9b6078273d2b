"""Turn a composed config into objects: the one place train.py, model_info.py and the benchmarks share."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from mixerlab.config import register_resolvers
from mixerlab.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose ``conf/train.yaml`` with overrides outside ``@hydra.main`` (scripts, tests, benchmarks).

    The Hydra config is registered too, so ``${hydra:...}`` interpolations and group choices resolve.
    """
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def build_backbone(cfg: DictConfig) -> nn.Module:
    """Backbone with its mixer(s); raises ConfigError naming keys for impossible combinations."""
    return _instantiate(lambda: instantiate(cfg.backbone, mixer=instantiate(cfg.mixer), _convert_="all"))


def build_recipe(cfg: DictConfig, backbone: nn.Module) -> L.LightningModule:
    return _instantiate(lambda: instantiate(cfg.recipe, backbone=backbone, _convert_="all"))


def _instantiate(make):
    try:
        return make()
    except ConfigError:
        raise
    except Exception as error:  # Hydra wraps constructor errors: surface ours with its message intact
        cause = error
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        raise


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """Constructing a data module checks its paths and settings; it loads nothing until ``setup``."""
    return instantiate(cfg.data, _convert_="all")


def mixer_name(cfg: DictConfig) -> str:
    """The mixer as a sweep reads it: the ``mixer=`` choice, plus any per-layer schedule."""
    name = None
    if HydraConfig.initialized():
        name = HydraConfig.get().runtime.choices.get("mixer")
    name = name or str(cfg.mixer.get("_target_", "?")).rsplit(".", 1)[-1]
    schedule = cfg.backbone.get("schedule") or []
    if schedule:
        parts = [
            f"{str(seg.get('mixer', {}).get('_target_', name)).rsplit('.', 1)[-1]}x{seg['layers']}"
            for seg in schedule
        ]
        name = "+".join(parts + [name])
    return name
