"""Turn a composed config into objects: the one place train.py, model_info.py and the benchmarks share."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
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


def mixer_preset(name: str, key: str) -> DictConfig:
    """The mixer node of ``conf/mixer/<name>.yaml`` (for a global-package yaml, its ``mixer:`` alone: the
    backbone settings it also makes are for a model of that mixer throughout, not for a few layers)."""
    path = CONF_DIR / "mixer" / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in (CONF_DIR / "mixer").glob("*.yaml"))
        raise ConfigError(f"{key}={name!r} is not a mixer; valid names (conf/mixer/): {names}")
    node = OmegaConf.load(path)
    return node.mixer if "_target_" not in node and "mixer" in node else node


def backbone_config(cfg: DictConfig) -> DictConfig:
    """``cfg.backbone`` with each schedule segment's or stage's ``mixer: NAME`` replaced by
    conf/mixer/NAME.yaml, its interpolations (``${backbone.num_heads}``) resolved against this run's config;
    a stage's ``mixer_options`` are merged onto its mixer (``{head_dim: 32}``) and dropped."""
    segments = [("schedule", seg) for seg in cfg.backbone.get("schedule") or []]
    segments += [("stages", stage) for stage in cfg.backbone.get("stages") or []]
    if not any(isinstance(seg.get("mixer"), str) or seg.get("mixer_options") for _, seg in segments):
        return cfg.backbone
    cfg = cfg.copy()
    with open_dict(cfg):
        for group in ("schedule", "stages"):
            for i, seg in enumerate(cfg.backbone.get(group) or []):
                if isinstance(seg.get("mixer"), str):
                    seg.mixer = mixer_preset(seg.mixer, f"backbone.{group}[{i}].mixer")
                options = seg.pop("mixer_options", None)
                if options and seg.get("mixer") is not None:
                    seg.mixer = OmegaConf.merge(seg.mixer, options)
                elif options:
                    seg.mixer_options = options  # the backbone names the missing mixer
    return cfg.backbone


def _instantiate(node, **kwargs):
    """``hydra.utils.instantiate``, with a ConfigError (or DatasetError) from the constructor raised as is:
    Hydra wraps constructor errors in an InstantiationException, which would hide ours behind a traceback."""
    try:
        return instantiate(node, **kwargs)
    except ConfigError:
        raise
    except Exception as error:
        cause = error
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        raise


def build_backbone(cfg: DictConfig) -> nn.Module:
    """Backbone with its mixer(s); raises ConfigError naming keys for impossible combinations."""
    mixer = _instantiate(cfg.mixer)
    return _instantiate(backbone_config(cfg), mixer=mixer, _convert_="all")


def build_recipe(cfg: DictConfig, backbone: nn.Module) -> L.LightningModule:
    return _instantiate(cfg.recipe, backbone=backbone, _convert_="all")


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """Constructing a data module checks its paths and settings; it loads nothing until ``setup``."""
    return _instantiate(cfg.data, _convert_="all")


def mixer_name(cfg: DictConfig) -> str:
    """The mixer as a sweep reads it: the ``mixer=`` choice, plus any per-layer schedule or per-stage mixers
    (``sepconvx3+sepconvx3+attentionx9+attentionx3``)."""
    name = None
    if HydraConfig.initialized():
        name = HydraConfig.get().runtime.choices.get("mixer")
    name = name or str(cfg.mixer.get("_target_", "?")).rsplit(".", 1)[-1]
    stages = cfg.backbone.get("stages") or []
    if any(stage.get("mixer") for stage in stages):
        return "+".join(f"{_segment_mixer(stage.get('mixer'), name)}x{stage['depth']}" for stage in stages)
    schedule = cfg.backbone.get("schedule") or []
    if schedule:
        parts = [
            f"{_segment_mixer(seg.get('mixer'), name)}x{seg['layers']}"
            for seg in schedule
        ]
        name = "+".join(parts + [name])
    return name


def _segment_mixer(mixer, default: str) -> str:
    if isinstance(mixer, str):
        return mixer
    return str((mixer or {}).get("_target_", default)).rsplit(".", 1)[-1]
