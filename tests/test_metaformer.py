"""The hierarchical MetaFormer backbone (mixerlab/metaformer.py): every mixer through the contract at each
stage's grid, timm's presets with timm's logits, config-time errors that name the stage, a run on digits.

No weights are downloaded: timm builds its MetaFormers with random init, the tests save them as files.
"""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models import metaformer as timm_metaformer

from mixerlab.build import build_backbone, compose_config, mixer_name
from mixerlab.errors import ConfigError
from mixerlab.pretrained import load_pretrained
from mixerlab.recipe import Recipe
from mixers.contract import TokenLayout, pop_aux_losses
from mixers.metaformer import Pooling
from mixers.sepconv import SepConv
from tests.test_mixers import CASES

# timm.create_model(name).state_dict() -> the same logits in experiment=<name> (MIXERS-III s1.3 counts)
TIMM_PRESETS = ["poolformer_s12", "poolformerv2_s12", "convformer_s18", "caformer_s18"]


def metaformer(*overrides: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_backbone(compose_config(["backbone=metaformer", *overrides]))


# ---------------------------------------------------------------- every mixer, hierarchically
@pytest.mark.parametrize("case", list(CASES))
def test_every_mixer_trains_at_every_stage_grid_and_survives_a_checkpoint(case):
    """conf/mixer/*.yaml x the hierarchical layout: a new mixer is covered here with no test edit."""
    overrides = [o for o in CASES[case] if not o.startswith("backbone.")]
    try:
        model = metaformer(*overrides)
    except ConfigError as error:  # a mixer that cannot run at some stage says which, before any data
        assert "backbone.stages[" in str(error), error
        return
    assert [stage.layout.grid for stage in model.stages] == [(8, 8), (4, 4), (2, 2)]
    images = torch.randn(3, 1, 16, 16)
    logits = model(images)
    (logits.logsumexp(-1).sum() + (pop_aux_losses(model) or 0)).backward()
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and
               (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not missing, f"no finite gradient reaches {missing}"
    fresh = metaformer(*overrides, seed=1)
    fresh.load_state_dict(model.state_dict())
    model.eval(), fresh.eval()
    torch.testing.assert_close(fresh(images), model(images), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("overrides", "stage", "reason"),
    [
        (["mixer=random", "mixer.num_tokens=64"], 1, r"mixer\.num_tokens=64"),  # 8x8 fits, 4x4 does not
        (["mixer=halo", "mixer.block_size=4"], 2, r"block_size"),  # divides 8 and 4, not 2
        (["mixer=spectral", "mixer.filter_size=[8,8]"], 1, r"mixer\.filter_size"),
        (["mixer=attention", "backbone.stages.0.dim=30", "mixer.num_heads=4"], 0, r"num_heads=4"),
    ],
)
def test_a_mixer_that_cannot_run_at_a_stage_fails_at_config_time_naming_it(overrides, stage, reason):
    with pytest.raises(ConfigError, match=rf"backbone\.stages\[{stage}\] \(.* grid, width \d+\).*{reason}"):
        metaformer(*overrides)


def test_too_many_stages_for_the_image_name_the_stage():
    deep = "backbone.stages=[{depth:1,dim:8},{depth:1,dim:8},{depth:1,dim:8},{depth:1,dim:8}]"
    with pytest.raises(ConfigError, match=r"backbone\.stages\[3\]: data\.img_size=16 leaves no tokens"):
        metaformer(deep, "backbone.downsample.padding=0", "mixer=pooling")  # 8x8, 3x3, 1x1, then none


def test_each_stage_takes_its_own_mixer_and_block_options():
    stages = ("backbone.stages=[{depth:2,dim:16,mixer:sepconv},{depth:1,dim:32,mixer:attention,"
              "mixer_options:{head_dim:16,qkv_bias:false},block:{res_scale:1.0,mlp_act:gelu}}]")
    cfg = compose_config(["backbone=metaformer", "mixer=pooling", stages])
    model = build_backbone(cfg)
    kinds = [type(block.mixer).__name__ for block in model.blocks]
    assert kinds == ["SepConv", "SepConv", "Attention"]
    attention = model.blocks[2].mixer
    assert attention.num_heads == 2 and attention.qkv.bias is None  # 32 / head_dim 16
    assert model.blocks[2].res_scale1.scale.shape == (32,) and isinstance(model.blocks[0].res_scale1,
                                                                         torch.nn.Identity)
    assert isinstance(model.blocks[2].mlp.act, torch.nn.GELU)
    assert mixer_name(cfg) == "sepconvx2+attentionx1"
    assert model.block_prefixes() == ["stages.0.blocks.0", "stages.0.blocks.1", "stages.1.blocks.0"]


def test_layer_decay_groups_follow_the_stages():
    model = metaformer("mixer=pooling")
    groups = Recipe(model, layer_decay=0.5).build_optimizer().param_groups
    scales = sorted({g.get("lr_scale", 1.0) for g in groups})
    assert len(scales) >= 4 and scales[-1] == 1.0  # stem < downsampling and blocks by depth < head


# ---------------------------------------------------------------- timm's operators and presets
def test_pooling_and_sepconv_are_timms_operators_on_tokens():
    torch.manual_seed(0)
    grid = torch.randn(2, 8, 5, 6)
    tokens = grid.flatten(2).transpose(1, 2)  # (B, h*w, C)
    layout = TokenLayout(grid=(5, 6))
    ours = Pooling(8, layout)(tokens)
    assert torch.equal(ours, timm_metaformer.Pooling()(grid).flatten(2).transpose(1, 2))
    theirs = timm_metaformer.SepConv(8)
    mixer = SepConv(8, layout)
    state = {k: v.flatten(1) if v.ndim == 4 and k.startswith("pwconv") else v
             for k, v in theirs.state_dict().items()}
    mixer.load_state_dict(state)
    torch.testing.assert_close(mixer(tokens), theirs(grid).flatten(2).transpose(1, 2))


@pytest.mark.parametrize("name", TIMM_PRESETS)
def test_timm_metaformer_state_dict_gives_timms_logits_in_our_preset(tmp_path, name):
    """Every tensor loads, none is left initialised; the logits agree to float32 rounding (timm's conv stages
    run 1x1 convolutions and norms on NCHW/NHWC memory, ours Linear layers and norms on tokens: the same
    sums in another order, |difference| ~1e-6 at logits of magnitude ~1)."""
    torch.manual_seed(0)
    theirs = timm.create_model(name, pretrained=False).eval()
    with torch.no_grad():  # move norms, scales and StarReLUs off their init so that a wrong one shows
        for p in theirs.parameters():
            if p.ndim <= 1:
                p.add_(0.1 * torch.randn_like(p))
    path = tmp_path / f"{name}.pth"
    torch.save(theirs.state_dict(), path)
    model = build_backbone(compose_config([f"experiment={name}"])).eval()
    report = load_pretrained(model, path)
    assert report.source == "timm_metaformer" and not report.initialised and not report.ignored
    assert report.loaded == list(model.state_dict())
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(image)
        torch.testing.assert_close(model(image), expected, rtol=0, atol=1e-5)


def test_metaformer_trains_on_digits_and_its_checkpoint_loads_back(train_run, tmp_path):
    proc, summary = train_run("backbone=metaformer", "mixer=sepconv", "trainer.max_epochs=1",
                              "recipe.ema_decay=0.9", "callbacks.checkpoint.every_n_steps=0")
    assert summary["status"] == "completed" and summary["top1"] is not None
    assert summary["backbone"] == "metaformer" and summary["params"] == 322_298
    run_dir = next(tmp_path.glob("run*"))
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    stored = torch.load(checkpoint, map_location="cpu", weights_only=True)
    for ema in (False, True):
        model = metaformer("mixer=sepconv", seed=1)
        report = load_pretrained(model, checkpoint, ema=ema)
        assert report.source == "mixerlab" and not report.initialised and not report.ignored
        prefix = "ema.module." if ema else "backbone."
        for key, value in model.state_dict().items():
            assert torch.equal(value, stored["state_dict"][prefix + key]), key
    assert stored["mixer_families"] == ["sepconv"] * 4


def test_receptive_fields_read_each_blocks_stage_grid():
    """Block 0 sits at the 8x8 grid (2-px patches), the last at 2x2: each map centres on its own stage's
    centre token; pooling's first map stays local, the last covers the image."""
    from mixerlab.erf import centre_token, effective_receptive_fields

    model = metaformer("mixer=pooling").eval()
    assert centre_token(model, 64, layer=0) == 4 * 8 + 4 and centre_token(model, 4, layer=3) == 1 * 2 + 1
    maps = effective_receptive_fields(model, torch.randn(2, 1, 16, 16), [0, -1])
    assert maps[0].shape == (16, 16) and maps[0][:2].max() == 0 and maps[3].min() > 0
