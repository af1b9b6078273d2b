"""Pretrained weights through mixerlab/pretrained.py: timm's DeiT files give identical logits in our presets;
resampled grids, new heads, mixer surgery, freezing and layer-wise LR decay; a fine-tune run records it all.

No weights are downloaded: timm builds its models with random init, the tests save them as files.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from mixerlab.build import build_backbone, build_recipe, compose_config
from mixerlab.errors import ConfigError
from mixerlab.pretrained import apply_init, load_pretrained
from scripts.make_fixture_imagenet import main as make_fixture
from tests.conftest import REPO

SPECTRAL_FIRST_4 = "backbone.schedule=[{layers: 4, mixer: spectral}]"  # conf/mixer/spectral.yaml's mixer


@cache
def timm_deit(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(f"deit_{name}_patch16_224", pretrained=False).eval()


@cache
def images(size: int = 224) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pretrained")


def saved(files: Path, name: str) -> Path:
    path = files / f"deit_{name}.pth"
    if not path.exists():
        torch.save(timm_deit(name).state_dict(), path)
    return path


def ours(*overrides: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone(compose_config(list(overrides))).eval()


# ---------------------------------------------------------------- identical logits
@pytest.mark.parametrize("name", ["tiny", "small", "base"])
def test_timm_deit_state_dict_gives_identical_logits_in_our_preset(files, name):
    model = ours(f"experiment=deit_{name}")  # the preset as shipped: LayerNorm eps 1e-6
    report = load_pretrained(model, saved(files, name))
    assert report.source == "timm_vit" and not report.initialised and not report.ignored
    assert report.loaded == list(model.state_dict())
    with torch.no_grad():
        diff = (model(images()) - timm_deit(name)(images())).abs().max().item()
    assert diff == 0.0


def test_our_preset_with_torchs_default_eps_is_not_bit_faithful(files):
    """What the 1e-6 is for: with LayerNorm's default 1e-5 the same weights give other logits."""
    model = ours("experiment=deit_tiny", "backbone.norm_eps=1e-5")
    load_pretrained(model, saved(files, "tiny"))
    with torch.no_grad():
        assert (model(images()) - timm_deit("tiny")(images())).abs().max().item() > 0


def test_every_imagenet_preset_uses_the_papers_layernorm_eps():
    for preset in ["deit_small", "gfnet_s", "spectformer_s", "ffonly_tiny", "fibottention_vit_s",
                   "attnonly_tiny", "tost_tiny"]:
        with torch.device("meta"):  # structure only
            model = build_backbone(compose_config([f"experiment={preset}"]))
        norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
        assert norms and {m.eps for m in norms} == {1e-6}, preset  # mixers' own token norms included
    digits = [m.eps for m in ours().modules() if isinstance(m, torch.nn.LayerNorm)]
    assert set(digits) == {1e-5}  # the digits backbone keeps the eps its measured results were run with


@pytest.mark.parametrize("fmt", ["pth_plain", "pth_model", "bin", "safetensors", "pth_ddp"])
def test_file_formats_load_with_identical_logits(files, fmt):
    state = timm_deit("tiny").state_dict()
    path = files / f"tiny_{fmt}.{ {'bin': 'bin', 'safetensors': 'safetensors'}.get(fmt, 'pth') }"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif fmt == "pth_model":
        torch.save({"model": state, "epoch": 299}, path)  # DeiT's checkpoint layout
    elif fmt == "pth_ddp":
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        torch.save(state, path)
    model = ours("experiment=deit_tiny")
    assert not load_pretrained(model, path).initialised
    with torch.no_grad():
        assert (model(images()) - timm_deit("tiny")(images())).abs().max().item() == 0.0


def test_ema_weights_are_chosen_with_init_ema(files):
    raw, ema = timm_deit("tiny").state_dict(), {k: v + 1 for k, v in timm_deit("tiny").state_dict().items()}
    path = files / "with_ema.pth"
    torch.save({"model": raw, "model_ema": ema}, path)
    model = ours("experiment=deit_tiny")
    assert load_pretrained(model, path, ema=True).weights == "ema"
    assert torch.equal(model.head.weight, ema["head.weight"])
    load_pretrained(model, path)
    assert torch.equal(model.head.weight, raw["head.weight"])
    torch.save({"model": raw}, files / "no_ema.pth")
    with pytest.raises(ConfigError, match="EMA"):
        load_pretrained(model, files / "no_ema.pth", ema=True)


def test_a_pickled_object_in_the_file_is_refused_by_weights_only(files):
    import argparse

    path = files / "with_args.pth"
    torch.save({"model": timm_deit("tiny").state_dict(), "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(ConfigError, match="weights_only"):
        load_pretrained(ours("experiment=deit_tiny"), path)


def test_missing_file_and_foreign_state_dict_are_config_errors(files):
    with pytest.raises(ConfigError, match="no such file"):
        load_pretrained(ours("experiment=deit_tiny"), files / "nope.pth")
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, files / "resnet.pth")
    with pytest.raises(ConfigError, match=r"not a checkpoint this converter reads \(keys: conv1\.weight "
                                          r"\(64, 3, 7, 7\)"):
        load_pretrained(ours("experiment=deit_tiny"), files / "resnet.pth")


# ---------------------------------------------------------------- every preset with a timm counterpart
def timm_counterparts() -> dict[str, str]:
    """conf/eval.yaml's preset -> timm model table (eval.py reads timm's data config through it)."""
    from omegaconf import OmegaConf

    return dict(OmegaConf.load(REPO / "conf" / "eval.yaml").timm_counterparts)


def test_the_presets_with_a_timm_counterpart_are_deit_convit_and_tnt():
    """timm has no GFNet, SpectFormer, FF-only, Fibottention, ToST or axial ViT; Fibottention and the axial
    ViT hold DeiT's parameters but mix other tokens, so their logits are not a timm model's."""
    table = timm_counterparts()
    sizes = ("tiny", "small", "base")
    assert table == {**{f"deit_{s}": f"deit_{s}_patch16_224" for s in sizes},
                     **{f"convit_{s}": f"convit_{s}" for s in sizes},
                     "tnt_s_patch16_224": "tnt_s_patch16_224"}
    assert all((REPO / "conf" / "experiment" / f"{preset}.yaml").is_file() for preset in table)
    assert set(table.values()) <= set(timm.list_models())
    docs = (REPO / "docs" / "evaluation.md").read_text()
    assert all(f"`{preset}`" in docs and f"`{name}`" in docs for preset, name in table.items())


@pytest.mark.parametrize("preset", sorted(timm_counterparts()))
def test_every_timm_counterpart_loads_through_init_checkpoint_with_identical_logits(preset, tmp_path):
    """Random-init timm model -> its state dict in a file -> the preset built with init.checkpoint=FILE (as
    train.py and eval.py build it) -> the same logits. At 64 px (a 4x4 grid) on both sides: cheap on a CPU."""
    torch.manual_seed(0)
    reference = timm.create_model(timm_counterparts()[preset], pretrained=False, img_size=64).eval()
    torch.save(reference.state_dict(), tmp_path / "timm.pth")
    cfg = compose_config([f"experiment={preset}", "data.img_size=64",
                          f"init.checkpoint={tmp_path / 'timm.pth'}"])
    model = build_backbone(cfg).eval()
    report = apply_init(cfg.init, model)
    assert report["source"] == next(f"timm_{family}" for family in ("convit", "tnt", "vit")
                                    if preset.startswith(family) or family == "vit")
    assert not report["initialised"] and not report["ignored"] and not report["resampled"]
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max().item() <= 1e-5


def test_convit_and_deit_files_cross_load_with_surgery_and_the_right_position_embedding(tmp_path):
    """A DeiT file in ConViT-Ti: GPSA blocks initialised, the MHSA blocks' attention loaded, the CLS position
    dropped (ConViT's embedding covers the patches); a ConViT file in DeiT-Ti: the reverse."""
    torch.manual_seed(0)
    deit = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=64)
    convit = timm.create_model("convit_tiny", pretrained=False, img_size=64)
    torch.save(deit.state_dict(), tmp_path / "deit.pth")
    torch.save(convit.state_dict(), tmp_path / "convit.pth")
    model = ours("experiment=convit_tiny", "data.img_size=64")
    report = load_pretrained(model, tmp_path / "deit.pth")
    assert "blocks.0.mixer.gating_param" in report.initialised
    assert "blocks.0.mixer.qkv.weight" in report.ignored  # DeiT's attention has no place in a GPSA block
    assert torch.equal(model.blocks[10].mixer.qkv.weight, deit.blocks[10].attn.qkv.weight)
    assert torch.equal(model.pos_embed, deit.pos_embed.detach()[:, 1:])
    assert "1 -> 0" in report.resampled["pos_embed"]
    model = ours("experiment=deit_tiny", "data.img_size=64")
    report = load_pretrained(model, tmp_path / "convit.pth")
    assert report.source == "timm_convit" and "blocks.0.mixer.qkv.weight" in report.initialised
    assert torch.equal(model.blocks[11].mixer.proj.weight, convit.blocks[11].attn.proj.weight)
    assert torch.equal(model.pos_embed[:, 1:], convit.pos_embed.detach())  # its CLS position initialised


@pytest.mark.parametrize(
    ("file", "preset", "message"),
    [
        ("convit_small", "convit_tiny",
         r"cls_token has shape \(1, 1, 432\) in the checkpoint but \(1, 1, 192\) in the model"),
        ("deit_small_patch16_224", "deit_tiny", r"cls_token has shape \(1, 1, 384\) in the checkpoint but "),
        ("resnet18", "convit_tiny", r"converter reads \(keys: conv1\.weight \(64, 3, 7, 7\)"),
    ],
)
def test_a_file_the_converter_cannot_map_is_a_config_error_naming_key_and_shapes(file, preset, message,
                                                                                 tmp_path):
    torch.manual_seed(0)
    kwargs = {} if file == "resnet18" else {"img_size": 64}
    torch.save(timm.create_model(file, pretrained=False, **kwargs).state_dict(), tmp_path / "w.pth")
    with pytest.raises(ConfigError, match=message):
        load_pretrained(ours(f"experiment={preset}", "data.img_size=64"), tmp_path / "w.pth")


# ---------------------------------------------------------------- what differs
def test_distilled_deit_drops_distillation_token_and_head_and_its_position(files):
    torch.manual_seed(0)
    ref = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False).eval()
    torch.save(ref.state_dict(), files / "distilled.pth")
    model = ours("experiment=deit_tiny")
    report = load_pretrained(model, files / "distilled.pth")
    assert set(report.ignored) == {"dist_token", "head_dist.weight", "head_dist.bias"}
    assert not report.initialised and "prefix positions 2 -> 1" in report.resampled["pos_embed"]
    pos = ref.pos_embed.detach()
    assert torch.equal(model.pos_embed, torch.cat([pos[:, :1], pos[:, 2:]], dim=1))  # CLS kept, dist out
    assert torch.equal(model.head.weight, ref.head.weight) and torch.equal(model.cls_token, ref.cls_token)


def test_resampled_grid_runs_and_everything_else_loads_unchanged(files):
    model = ours("experiment=deit_tiny", "data.img_size=160")  # 14x14 -> 10x10 patches
    report = load_pretrained(model, saved(files, "tiny"))
    assert report.resampled["pos_embed"].startswith("grid 14x14 -> 10x10")
    assert not report.initialised and not report.ignored
    ref = timm_deit("tiny").state_dict()
    for key, value in model.state_dict().items():
        if key != "pos_embed":
            assert torch.equal(value, ref[key.replace(".mixer.", ".attn.")]), key
    # DeiT's fine-tuning formula: CLS position kept, the grid bicubic (align_corners=False)
    grid = ref["pos_embed"][:, 1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(10, 10), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    expected = torch.cat([ref["pos_embed"][:, :1], grid.reshape(1, 100, -1)], dim=1)
    torch.testing.assert_close(model.pos_embed.detach(), expected, rtol=0, atol=1e-6)
    with torch.no_grad():
        assert model(images(160)).shape == (2, 1000) and torch.isfinite(model(images(160))).all()


def test_a_gap_model_drops_the_cls_token_and_its_position(files):
    model = ours("experiment=deit_tiny", "backbone.head=gap")
    report = load_pretrained(model, saved(files, "tiny"))
    assert set(report.ignored) == {"cls_token"} and "1 -> 0" in report.resampled["pos_embed"]
    assert torch.equal(model.pos_embed, timm_deit("tiny").pos_embed.detach()[:, 1:])


def test_another_number_of_classes_gets_a_new_head_and_says_so(files):
    model = ours("experiment=deit_tiny", "data.num_classes=10")
    head = model.head.weight.detach().clone()
    report = load_pretrained(model, saved(files, "tiny"))
    assert report.initialised == ["head.weight", "head.bias"]
    assert set(report.ignored) == {"head.weight", "head.bias"}
    assert "1000 classes" in report.ignored["head.bias"]
    assert torch.equal(model.head.weight, head)
    assert torch.equal(model.blocks[11].mlp.fc2.weight, timm_deit("tiny").blocks[11].mlp.fc2.weight)


def test_any_other_shape_mismatch_is_an_error_naming_the_key(files):
    with pytest.raises(ConfigError, match=r"blocks\.0\.mlp\.fc1\.weight has shape \(768, 192\)"):
        load_pretrained(ours("experiment=deit_tiny", "backbone.mlp_ratio=2"), saved(files, "tiny"))


def test_mixer_surgery_loads_shared_parts_and_initialises_the_new_mixers(files):
    """DeiT-S with global filters in its first four layers: their norms and MLPs are DeiT's."""
    model = ours("experiment=deit_small", SPECTRAL_FIRST_4)
    filters = [model.blocks[i].mixer.complex_weight.detach().clone() for i in range(4)]
    report = load_pretrained(model, saved(files, "small"))
    ref = timm_deit("small").state_dict()
    assert report.initialised == [f"blocks.{i}.mixer.complex_weight" for i in range(4)]
    assert set(report.ignored) == {f"blocks.{i}.mixer.{p}" for i in range(4)
                                   for p in ("qkv.weight", "qkv.bias", "proj.weight", "proj.bias")}
    state = model.state_dict()
    for i in range(4):
        assert torch.equal(model.blocks[i].mixer.complex_weight, filters[i])  # as built, not overwritten
        for part in ("norm1.weight", "norm1.bias", "norm2.weight", "mlp.fc1.weight", "mlp.fc2.bias"):
            assert torch.equal(state[f"blocks.{i}.{part}"], ref[f"blocks.{i}.{part}"])
    assert torch.equal(state["blocks.4.mixer.qkv.weight"], ref["blocks.4.attn.qkv.weight"])


@pytest.mark.slow
def test_mixerlab_checkpoint_round_trip_and_surgery_by_recorded_family(train_run, tmp_path):
    _, summary = train_run("trainer.max_steps=3", "callbacks.checkpoint.every_n_steps=0")
    ckpt_path = Path(summary["run_dir"]) / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert ckpt["mixer_families"] == ["attention"] * 4
    model = ours()
    report = load_pretrained(model, ckpt_path)
    assert report.source == "mixerlab" and not report.initialised and not report.ignored
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][f"backbone.{key}"]), key
    with pytest.raises(ConfigError, match="no EMA weights"):  # the digits recipe keeps no EMA
        load_pretrained(model, ckpt_path, ema=True)
    # XCA has qkv and proj of attention's shapes, but not its weights: the recorded family keeps them apart
    xca = ours("backbone.schedule=[{layers: 1, mixer: xca}]")
    report = load_pretrained(xca, ckpt_path)
    assert "blocks.0.mixer.qkv.weight" in report.ignored and "blocks.0.mixer.qkv.weight" in report.initialised
    assert "blocks.1.mixer.qkv.weight" in report.loaded


# ---------------------------------------------------------------- recipe: freeze, layer decay, finetune
def recipe_for(*overrides: str):
    cfg = compose_config(list(overrides))
    return build_recipe(cfg, build_backbone(cfg))


def test_freeze_stops_named_parts_and_an_unknown_prefix_is_a_config_error():
    recipe = recipe_for("recipe.freeze=[patch_embed,pos_embed,blocks.0]")
    frozen = {n for n, p in recipe.backbone.named_parameters() if not p.requires_grad}
    assert frozen == {n for n in dict(recipe.backbone.named_parameters())
                      if n.split(".")[0] in ("patch_embed", "pos_embed") or n.startswith("blocks.0.")}
    optimized = {id(p) for g in recipe.build_optimizer().param_groups for p in g["params"]}
    assert not optimized & {id(p) for n, p in recipe.backbone.named_parameters() if n in frozen}
    with pytest.raises(ConfigError, match="recipe.freeze: 'blocks.9' names no parameter"):
        recipe_for("recipe.freeze=[blocks.9]")


def test_layer_decay_scales_each_depth_and_is_off_by_default():
    recipe = recipe_for("recipe.layer_decay=0.5")  # vit_micro: stem 0, blocks 1-4 (norm with 4), head 5
    scale_of = {}
    for group in recipe.build_optimizer().param_groups:
        for p in group["params"]:
            scale_of[id(p)] = group.get("lr_scale", 1.0)  # no key: the full LR
    named = dict(recipe.backbone.named_parameters())
    assert scale_of[id(named["patch_embed.proj.weight"])] == 0.5**5
    assert scale_of[id(named["blocks.0.mlp.fc1.weight"])] == 0.5**4
    assert scale_of[id(named["blocks.3.norm1.weight"])] == 0.5**1
    assert scale_of[id(named["norm.weight"])] == 0.5 and scale_of[id(named["head.weight"])] == 1.0  # timm
    assert all("lr_scale" not in g for g in recipe_for().build_optimizer().param_groups)
    with pytest.raises(ConfigError, match="recipe.layer_decay=1.5"):
        recipe_for("recipe.layer_decay=1.5")


def test_finetune_recipe_carries_deits_fine_tuning_settings():
    cfg = compose_config(["experiment=deit_base", "recipe=finetune", "data.img_size=384"])
    r = cfg.recipe
    assert (r.lr, r.lr_batch_base, r.min_lr, r.weight_decay, r.warmup_epochs) == (5e-6, 512, 5e-6, 1e-8, 5)
    assert r.mixup.mixup_alpha == 0.8 and r.label_smoothing == 0.1 and cfg.data.img_size == 384


@pytest.mark.slow
def test_deit_s_file_fine_tunes_with_spectral_mixers_in_its_first_four_layers(files, train_run, tmp_path):
    """recipe=finetune from a DeiT-S file, global filters in layers 0-3, at 112 px (a 7x7 grid, as cheap
    as a CPU test allows): the run completes and summary.json says what was loaded."""
    make_fixture(["--out", str(tmp_path / "imagenet"), "--classes", "4", "--train-per-class", "2",
                  "--val-per-class", "1"])
    _, summary = train_run(
        "experiment=deit_small", "recipe=finetune", f"init.checkpoint={saved(files, 'small')}",
        SPECTRAL_FIRST_4, f"data.root={tmp_path / 'imagenet'}", "data.num_classes=4", "data.img_size=112",
        "data.batch_size=2", "data.num_workers=0", "data.persistent_workers=false", "data.pin_memory=false",
        "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
        "callbacks.checkpoint.every_n_steps=0",
    )
    assert summary["status"] == "completed" and summary["steps"] == 2 and summary["top1"] is not None
    init = summary["init"]
    assert init["source"] == "timm_vit" and init["checkpoint"].endswith("deit_small.pth")
    assert init["initialised"] == [f"blocks.{i}.mixer.complex_weight" for i in range(4)] + ["head.weight",
                                                                                          "head.bias"]
    assert init["num_ignored"] == 16 + 2 and init["num_loaded"] == 152 - 16 - 2
    assert init["resampled"]["pos_embed"].startswith("grid 14x14 -> 7x7")  # fine-tuned at 112 px
    assert summary["lr"] == pytest.approx(5e-6 * 2 / 512)


def test_layer_decay_multiplies_a_mixers_own_lr_scale():
    """Hyena marks its filter position embedding with lr_scale 0.01 (mark_optim); layer-wise decay scales
    that parameter's LR by its layer's factor as well, and keeps its weight decay at 0."""
    recipe = recipe_for("mixer=hyena", "recipe.layer_decay=0.5")  # vit_micro: block 0 is layer 1 of 5
    pos_emb = recipe.backbone.blocks[0].mixer.pos_emb
    group = next(g for g in recipe.build_optimizer().param_groups if any(p is pos_emb for p in g["params"]))
    assert group["lr_scale"] == pytest.approx(0.01 * 0.5**4) and group["weight_decay"] == 0.0


def test_a_mixerlab_checkpoint_that_recorded_class_paths_still_loads_its_mixers(tmp_path):
    """ConViT runs written before GPSA declared its family recorded class paths: they resolve to today's
    families, so the GPSA and MHSA blocks load rather than being initialised afresh."""
    model = ours("experiment=convit_tiny", "data.img_size=64")
    paths = ["mixers.gpsa.GPSA"] * 10 + ["mixers.gpsa.ConViTMHSA"] * 2
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in model.state_dict().items()},
                "pytorch-lightning_version": "2.5", "mixer_families": paths}, tmp_path / "last.ckpt")
    report = load_pretrained(ours("experiment=convit_tiny", "data.img_size=64"), tmp_path / "last.ckpt")
    assert report.source == "mixerlab" and not report.initialised and not report.ignored
