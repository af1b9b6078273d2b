"""Paper presets (conf/experiment/) reproduce the papers' parameter counts and FLOPs (REFERENCE.md s3)."""

from __future__ import annotations

from functools import cache

import pytest

from mixerlab.build import CONF_DIR, build_backbone, compose_config
from mixerlab.errors import ConfigError
from scripts.model_info import model_info

PRESETS = [
    "deit_tiny",
    "deit_small",
    "deit_base",
    "ffonly_tiny",
    "ffonly_base",
    "ffonly_large",
    "attnonly_tiny",
    "gfnet_ti",
    "gfnet_xs",
    "gfnet_s",
    "gfnet_b",
    "spectformer_t",
    "spectformer_xs",
    "spectformer_s",
    "spectformer_b",
    "fibottention_vit_t",
    "fibottention_vit_s",
    "fibottention_vit_b",
    "tost_tiny",
    "tost_small",
    "convit_tiny",
    "convit_small",
    "convit_base",
    "axial_vit_tiny",
    "poolformer_s12",
    "poolformerv2_s12",
    "convformer_s18",
    "caformer_s18",
    "hpx_a_former_s18",
    "tnt_s_patch16_224",
    "sgformer_s",
    "sgformer_m",
    "sgformer_b",
]

EXACT_PARAMS = {
    "deit_tiny": 5_717_416,
    "deit_small": 22_050_664,
    "spectformer_t": 9_158_376,
    "spectformer_xs": 20_028_520,
    "spectformer_s": 32_449_768,
    "spectformer_b": 57_159_656,
    "fibottention_vit_t": 5_717_416,
    "fibottention_vit_s": 22_050_664,  # masks add no parameters
    "tost_tiny": 5_769_328,  # tost_cab_tiny_12_p16 as the official definition computes
    "tost_small": 22_589_944,  # tost_cab_small_12_p16
    "convit_tiny": 5_710_512,  # timm.create_model("convit_tiny") (tests/test_mixers_gpsa.py builds it)
    "convit_small": 27_777_322,
    "convit_base": 86_540_040,
    "axial_vit_tiny": 5_717_416,  # an axis layer has MHSA's parameters
    "poolformer_s12": 11_915_176,  # timm.create_model(name) (tests/test_metaformer.py: identical logits)
    "poolformerv2_s12": 11_891_712,
    "convformer_s18": 26_774_448,
    "caformer_s18": 26_341_656,
    "hpx_a_former_s18": 27_928_674,  # the official model, frozen distance maps counted (MIXERS-III s6)
    "tnt_s_patch16_224": 23_768_584,  # timm.create_model(name) (tests/test_tnt.py: identical logits)
    "sgformer_s": 22_545_981,  # the official sgformer_s, sgformer_m, sgformer_b modules, built
    "sgformer_m": 38_689_316,
    "sgformer_b": 77_950_293,
}
APPROX_PARAMS = {  # reported to 3-4 significant digits: within 0.5%
    "deit_base": 86.57e6,
    "ffonly_tiny": 7.676e6,
    "ffonly_base": 61.94e6,
    "ffonly_large": 206.2e6,
    "gfnet_ti": 7.51e6,
    "gfnet_xs": 15.99e6,
    "gfnet_s": 24.87e6,
    "gfnet_b": 43.12e6,
    "attnonly_tiny": 4.0e6,
}
GMACS = {  # forward, per image; the spectral models' FFTs are counted analytically
    "deit_tiny": 1.26,
    "deit_small": 4.61,
    "deit_base": 17.58,
    "gfnet_ti": 1.3,
    "gfnet_xs": 2.8,
    "gfnet_s": 4.5,
    "gfnet_b": 7.9,
    "spectformer_t": 1.8,
    "spectformer_xs": 4.0,
    "spectformer_s": 6.6,
    "spectformer_b": 11.5,
    "poolformer_s12": 1.8,  # sail-sg/poolformer and sail-sg/metaformer READMEs
    "poolformerv2_s12": 1.8,
    "convformer_s18": 3.9,
    "caformer_s18": 4.1,
    "tnt_s_patch16_224": 5.2,  # the paper's Table ("FLOPs" 5.2B: multiply-adds)
    "sgformer_s": 4.8,  # as later papers' comparison tables give them (the paper's own table unread)
    "sgformer_m": 7.5,
    "sgformer_b": 15.6,
}


@cache
def info(preset: str) -> dict:
    return model_info([f"experiment={preset}"])


def test_every_paper_preset_is_listed():
    papers = [p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")  # proxy tasks, controls: small
              if not p.stem.startswith("proxy_") and not p.stem.endswith("_control")]
    assert sorted(papers) == sorted(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_pins_imagenet_at_224px(preset):
    cfg = compose_config([f"experiment={preset}"])
    assert (cfg.data.img_size, cfg.data.in_chans, cfg.data.num_classes) == (224, 3, 1000)
    assert cfg.data._target_ == "data.imagenet_folder.ImageNetFolderDataModule"
    assert cfg.recipe._target_ == "mixerlab.recipe.Recipe" and cfg.trainer.max_epochs >= 100


@pytest.mark.parametrize("preset", sorted(EXACT_PARAMS))
def test_preset_has_the_reference_parameter_count_exactly(preset):
    assert info(preset)["params"] == EXACT_PARAMS[preset]


@pytest.mark.parametrize("preset", sorted(APPROX_PARAMS))
def test_preset_parameter_count_is_within_half_a_percent(preset):
    assert info(preset)["params"] == pytest.approx(
        APPROX_PARAMS[preset], rel=0.005 if preset != "attnonly_tiny" else 0.0125
    )


@pytest.mark.parametrize("preset", sorted(GMACS))
def test_preset_forward_flops_are_within_3_percent_of_the_papers(preset):
    assert info(preset)["flops"] == pytest.approx(2e9 * GMACS[preset], rel=0.03)


def test_spectral_presets_count_their_ffts():
    import torch

    from mixerlab.costs import REGISTERED, flop_breakdown

    def fft_flops(preset):
        with torch.device("meta"):
            model = build_backbone(compose_config([f"experiment={preset}"])).eval()
            _, per_op = flop_breakdown(model, torch.zeros(1, 3, 224, 224))
        return sum(n for op, n in per_op.items() if op.startswith("_fft"))

    assert 0 < fft_flops("spectformer_t") < fft_flops("gfnet_ti")  # 4 of 12 layers, on any torch
    assert {"_fft_r2c", "_fft_c2r"} <= set(REGISTERED)  # mixerlab's FFT formulas, on every torch
    assert "_fft_r2c" in info("gfnet_ti")["flops_note"]


def test_spectformer_is_four_spectral_blocks_then_attention():
    model = build_backbone(compose_config(["experiment=spectformer_t"]))
    kinds = [type(block.mixer).__name__ for block in model.blocks]
    styles = [block.spec.style for block in model.blocks]
    assert kinds == ["GlobalFilter"] * 4 + ["Attention"] * 8
    assert styles == ["single_residual"] * 4 + ["prenorm"] * 8
    assert model.cls_token is None and model.head_type == "gap"


@pytest.mark.parametrize(
    ("preset", "key"), [("ffonly_tiny", "mixer.num_tokens"), ("gfnet_ti", "mixer.filter_size")]
)
def test_fixed_size_presets_refuse_another_resolution(preset, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_backbone(compose_config([f"experiment={preset}", "data.img_size=256"]))
