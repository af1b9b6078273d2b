"""ToST TSSA against its formula, its CLS rule and precision, and the ToST presets' parameter counts
(with the XCiT-style backbone options they need)."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.optim import create_optimizer_v2

import mixers.tost
from mixerlab.backbone import count_parameters
from mixerlab.build import build_backbone, compose_config
from mixerlab.costs import weights_sha256
from mixerlab.errors import ConfigError
from mixers.contract import TokenLayout
from mixers.tost import TSSA
from scripts.model_info import model_info

GRID = TokenLayout(grid=(2, 3), num_prefix=0)
CLS_GRID = TokenLayout(grid=(2, 3), num_prefix=1)


def naive_tssa(mixer: TSSA, x: torch.Tensor) -> torch.Tensor:
    """The paper's equations written token by token, head by head (official AttentionTSSA semantics)."""
    B, N, C = x.shape
    H = mixer.num_heads
    d = C // H
    w = (x @ mixer.qkv.weight.T + mixer.qkv.bias).reshape(B, N, H, d)
    out = torch.zeros(B, N, H, d)
    for b in range(B):
        energy = torch.zeros(H, N)
        for k in range(H):
            norms = torch.stack([w[b, :, k, c].pow(2).sum().sqrt() for c in range(d)])  # over tokens
            for i in range(N):
                energy[k, i] = mixer.temp[k, 0] * sum((w[b, i, k, c] / norms[c]) ** 2 for c in range(d))
        Pi = torch.exp(energy) / torch.exp(energy).sum(0, keepdim=True)  # softmax over the HEADS
        for k in range(H):
            pi = Pi[k] / (Pi[k].sum() + 1e-8)
            D = torch.stack([1 / (1 + sum(pi[i] * w[b, i, k, c] ** 2 for i in range(N))) for c in range(d)])
            for i in range(N):
                out[b, i, k] = -Pi[k, i] * w[b, i, k] * D
    return out.reshape(B, N, C) @ mixer.proj.weight.T + mixer.proj.bias


def test_tssa_is_the_official_formula_with_the_softmax_over_heads():
    torch.manual_seed(0)
    mixer = TSSA(8, GRID, num_heads=2)
    with torch.no_grad():
        mixer.temp.copy_(torch.tensor([[0.7], [1.9]]))  # distinct per-head temperatures
    x = torch.randn(2, 6, 8)
    torch.testing.assert_close(mixer(x), naive_tssa(mixer, x), atol=1e-5, rtol=1e-4)
    assert count_parameters(mixer) == 2 * 8 * 8 + 2 * 8 + 2  # 2C^2 + 2C + H


def test_tssa_passes_cls_through_and_leaves_it_out_of_the_statistics():
    torch.manual_seed(0)
    with_cls, patches_only = TSSA(8, CLS_GRID, num_heads=2), TSSA(8, GRID, num_heads=2)
    patches_only.load_state_dict(with_cls.state_dict())
    x = torch.randn(2, 7, 8)
    out = with_cls(x)
    torch.testing.assert_close(out[:, 0], x[:, 0])
    torch.testing.assert_close(out[:, 1:], patches_only(x[:, 1:]))
    y = x.clone()
    y[:, 0] += 10.0  # the CLS token changes no patch output
    torch.testing.assert_close(with_cls(y)[:, 1:], out[:, 1:])


def test_tssa_statistics_run_in_float32_under_bf16_autocast(monkeypatch):
    seen = []
    core = mixers.tost.token_statistics
    monkeypatch.setattr(mixers.tost, "token_statistics", lambda w, *a: seen.append(w.dtype) or core(w, *a))
    mixer = TSSA(8, GRID, num_heads=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mixer(torch.randn(2, 6, 8))
    assert seen == [torch.float32] and out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_tssa_temperature_is_kept_out_of_weight_decay():
    model = build_backbone(compose_config(["mixer=tost"]))
    assert "blocks.0.mixer.temp" in model.no_weight_decay()
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05)
    temp = model.blocks[0].mixer.temp
    group = next(g for g in optimizer.param_groups if any(p is temp for p in g["params"]))
    assert group["weight_decay"] == 0.0


def test_tssa_yaml_reads_out_with_gap_and_builds_at_224_with_cls():
    assert build_backbone(compose_config(["mixer=tost"])).head_type == "gap"
    cfg = ["mixer=tost", "backbone=vit_tiny", "backbone.depth=1", "backbone.head=cls", "data.img_size=224"]
    model = build_backbone(compose_config([*cfg, "data.in_chans=3", "data.num_classes=1000"]))
    assert model.blocks[0].mixer.layout.num_tokens == 197
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    with pytest.raises(ConfigError, match=r"mixer\.num_heads=3"):
        build_backbone(compose_config(["mixer=tost", "mixer.num_heads=3"]))


def xcit_minus_lpi_with_tssa(name: str) -> int:
    """Count from timm's XCiT: drop each block's local patch interaction, swap XCA for TSSA (2C^2+2C+H)."""
    with torch.device("meta"):
        xcit = timm.create_model(name)
    C, H = xcit.embed_dim, xcit.blocks[0].attn.num_heads
    per_block = sum(
        count_parameters(m) for m in (xcit.blocks[0].local_mp, xcit.blocks[0].norm3, xcit.blocks[0].attn)
    ) + xcit.blocks[0].gamma3.numel()
    return count_parameters(xcit) - len(xcit.blocks) * (per_block - (2 * C * C + 2 * C + H))


@pytest.mark.parametrize(
    ("preset", "xcit", "params"),
    [("tost_tiny", "xcit_tiny_12_p16_224", 5_769_328), ("tost_small", "xcit_small_12_p16_224", 22_589_944)],
)
def test_tost_presets_have_the_official_parameter_count(preset, xcit, params):
    assert model_info([f"experiment={preset}"])["params"] == params == xcit_minus_lpi_with_tssa(xcit)


def test_class_attention_layers_see_cls_only_after_the_mixer_blocks():
    cfg = compose_config(
        ["mixer=tost", "backbone.head=cls", "backbone.class_attention_layers=2", "backbone.patch_size=8",
         "backbone.patch_embed=conv", "backbone.pos_embed=fourier", "backbone.drop_path_rate=0.1",
         "backbone.drop_path_schedule=constant"]
    )
    model = build_backbone(cfg)
    assert model.layout == TokenLayout(grid=(2, 2), num_prefix=0) and model.pos_embed is None
    assert len(model.class_blocks) == 2 and all(b.drop_path.drop_prob == 0.1 for b in model.blocks)
    seen = []
    model.blocks[-1].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    model.class_blocks[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    assert model(torch.randn(3, 1, 16, 16)).shape == (3, 10)
    assert seen == [(3, 4, 64), (3, 5, 64)]  # 2x2 patches, then CLS + patches
    digest = weights_sha256(model)  # the conv stem's BatchNorm has a 0-d buffer (num_batches_tracked)
    model.patch_embed.proj[0][1].num_batches_tracked += 1
    assert weights_sha256(model) != digest


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["backbone.patch_embed=conv"], "backbone.patch_embed=conv"),  # digits: patch 4
        (["backbone.class_attention_layers=2"], "backbone.head=cls"),  # digits: GAP head
        (["backbone.pos_embed=sine"], "backbone.pos_embed='sine'"),
        (["backbone.drop_path_schedule=cosine"], "backbone.drop_path_schedule='cosine'"),
    ],
)
def test_backbone_token_options_fail_at_config_time_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_backbone(compose_config(overrides))
