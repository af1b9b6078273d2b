"""TNT (mixerlab/tnt.py): timm's tnt_s_patch16_224 count and logits through init.checkpoint, the pixel stream
feeding the patch tokens but not the CLS token, any outer mixer through the contract, config errors."""

from __future__ import annotations

import pytest
import timm
import torch

from mixerlab.build import build_backbone, compose_config
from mixerlab.costs import count_parameters
from mixerlab.errors import ConfigError
from mixerlab.pretrained import apply_init, load_pretrained
from mixerlab.schema import validate
from mixerlab.tnt import TNTBlock
from mixers.contract import pop_aux_losses
from tests.test_mixers import CASES


def tnt(*overrides: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_backbone(compose_config(["backbone=tnt", *overrides]))


def test_timm_tnt_state_dict_gives_timms_logits_in_the_preset(tmp_path):
    """Random-init timm TNT-S -> its state dict in a file -> experiment=tnt_s_patch16_224 with init.checkpoint
    (qk and v fused into our attention's qkv) -> timm's logits. At 64 px (4x4 patches): cheap on a CPU."""
    torch.manual_seed(0)
    reference = timm.create_model("tnt_s_patch16_224", pretrained=False, img_size=64).eval()
    torch.save(reference.state_dict(), tmp_path / "timm.pth")
    cfg = compose_config(["experiment=tnt_s_patch16_224", "data.img_size=64",
                          f"init.checkpoint={tmp_path / 'timm.pth'}"])
    model = build_backbone(cfg).eval()
    report = apply_init(cfg.init, model)
    assert report["source"] == "timm_tnt"
    assert not report["initialised"] and not report["ignored"] and not report["resampled"]
    assert count_parameters(model) == count_parameters(reference)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max().item() <= 1e-5  # SDPA vs timm's explicit softmax


def test_the_preset_has_timms_tnt_s_parameter_count():
    with torch.device("meta"):
        model = build_backbone(compose_config(["experiment=tnt_s_patch16_224"]))
    assert count_parameters(model) == 23_768_584  # timm.create_model("tnt_s_patch16_224")
    assert model.layout.num_tokens == 197 and model.pixel_pos.shape == (1, 24, 4, 4)


class Zero(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def test_the_pixel_stream_feeds_the_patch_tokens_and_never_the_cls_token():
    torch.manual_seed(0)
    block = TNTBlock(dim=16, inner_dim=4, num_pixel=4, mixer=Zero(), inner_heads=2)
    torch.nn.init.zeros_(block.mlp.fc2.weight)  # outer sub-blocks add nothing: what changes is the fusion
    torch.nn.init.zeros_(block.mlp.fc2.bias)
    pixels, patches = torch.randn(2 * 9, 4, 4), torch.randn(2, 1 + 9, 16)
    new_pixels, out = block(pixels, patches)
    assert torch.equal(out[:, 0], patches[:, 0])  # CLS: untouched
    assert (out[:, 1:] - patches[:, 1:]).abs().min() > 0  # every patch took its pixels' projection
    assert not torch.allclose(new_pixels, pixels)  # the inner sub-blocks moved the pixels
    other = pixels.clone()
    other[4] += 1.0  # patch 4 of sample 0 only
    _, moved = block(other, patches)
    changed = (moved - out).abs().amax(-1) > 0  # (B, 1 + 9)
    assert changed.nonzero().tolist() == [[0, 5]]  # the pixels of a patch feed that patch alone


@pytest.mark.parametrize("case", list(CASES))
def test_every_mixer_is_the_outer_mixer_with_gradients_everywhere(case):
    """conf/mixer/*.yaml x TNT's patch stream (a CLS token and a 4x4 grid): a new mixer is covered with no
    test edit; one that cannot run there must say so with a ConfigError."""
    overrides = [o for o in CASES[case] if not o.startswith("backbone.")]
    try:
        model = tnt(*overrides, "backbone.head=cls")
    except ConfigError:
        return
    logits = model(torch.randn(2, 1, 16, 16))
    (logits.logsumexp(-1).sum() + (pop_aux_losses(model) or 0)).backward()
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and
               (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not missing, f"no finite gradient reaches {missing}"


@pytest.mark.parametrize("mixer", ["pooling", "spectral"])
def test_a_non_attention_outer_mixer_trains_a_step(mixer):
    model = tnt(f"mixer={mixer}")
    assert all(type(block.mixer).__name__ != "Attention" for block in model.blocks)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 1, 16, 16), torch.randint(0, 10, (4,))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    moved = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert {"pixel_embed.proj.weight", "blocks.0.attn_in.qk.weight", "blocks.0.proj.weight"} <= moved
    assert torch.isfinite(loss)


@pytest.mark.parametrize("head, prefix", [("cls", 1), ("gap", 0), ("lama", 0)])
def test_every_read_out_gives_logits(head, prefix):
    model = tnt(f"backbone.head={head}", "mixer=pooling")
    assert model.layout.num_prefix == prefix and model.patch_pos.shape[1] == 16 + prefix
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)


@pytest.mark.parametrize("override, key", [
    ("backbone.pixel_stride=0", "backbone.pixel_stride"),
    ("backbone.inner_heads=3", "backbone.inner_heads"),
    ("backbone.head=pool", "backbone.head"),
])
def test_bad_tnt_options_are_config_errors_naming_the_key(override, key):
    cfg = compose_config(["backbone=tnt", override])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_backbone(cfg)


def test_the_digits_tnt_config_validates():
    validate(compose_config(["backbone=tnt", "mixer=pooling"]))


def test_tnt_trains_on_digits_and_its_checkpoint_loads_back(train_run, tmp_path):
    """A run with a non-attention outer mixer with weights (spectral): the recipe, EMA and checkpointing
    take the two-stream backbone as they take the ViT; the mixerlab checkpoint loads back as it was."""
    proc, summary = train_run("backbone=tnt", "mixer=spectral", "trainer.max_epochs=1",
                              "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=1",
                              "recipe.ema_decay=0.9", "callbacks.checkpoint.every_n_steps=0")
    assert summary["status"] == "completed" and summary["top1"] is not None
    assert summary["backbone"] == "tnt"
    checkpoint = next(tmp_path.glob("run*")) / "checkpoints" / "last.ckpt"
    stored = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert summary["params"] == count_parameters(tnt("mixer=spectral"))
    for ema in (False, True):
        model = tnt("mixer=spectral", seed=1)
        report = load_pretrained(model, checkpoint, ema=ema)
        assert report.source == "mixerlab" and not report.initialised and not report.ignored
        prefix = "ema.module." if ema else "backbone."
        for key, value in model.state_dict().items():
            assert torch.equal(value, stored["state_dict"][prefix + key]), key
    assert len(set(stored["mixer_families"])) == 1 and len(stored["mixer_families"]) == 4


def test_receptive_fields_read_the_patch_stream_of_a_tnt_block():
    from mixerlab.erf import effective_receptive_fields

    model = tnt("mixer=pooling", "backbone.head=cls").eval()
    maps = effective_receptive_fields(model, torch.randn(2, 1, 16, 16), [0, -1])
    # block 0: the centre patch (2, 2) pooled with its 3x3 neighbours; per-patch pixel convs add no halo
    assert maps[0].shape == (16, 16) and maps[0][4:].max() > 0 and maps[0][:4].max() == 0
    assert maps[3].min() > 0  # four 3x3 poolings cover the 4x4 grid


def test_layer_decay_groups_the_pixel_embedding_with_the_stem_and_the_final_norm_with_the_last_block():
    from mixerlab.recipe import layer_decay_scales

    scales = layer_decay_scales(tnt("mixer=pooling", "backbone.head=cls"), 0.5)
    stem = {scales[n] for n in ("cls_token", "patch_pos", "pixel_pos", "pixel_embed.proj.weight",
                                "norm1_proj.weight", "proj.weight", "norm2_proj.weight")}
    assert stem == {0.5 ** 5}
    assert scales["blocks.0.attn_in.qk.weight"] == scales["blocks.0.proj.weight"] == 0.5 ** 4
    assert scales["blocks.3.mlp.fc2.weight"] == scales["norm.weight"] == 0.5 and scales["head.weight"] == 1.0
