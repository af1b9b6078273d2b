"""ConViT's GPSA: the paper's formula, local init, CLS pass-through; the presets are timm's ConViT exactly."""

from __future__ import annotations

import pytest
import timm
import torch
from omegaconf import OmegaConf

from mixerlab.backbone import count_parameters
from mixerlab.build import build_backbone, compose_config
from mixerlab.errors import ConfigError
from mixerlab.pretrained import load_pretrained
from mixers.contract import TokenLayout
from mixers.gpsa import GPSA, ConViTMHSA


def explicit_gpsa(m: GPSA, patches: torch.Tensor) -> torch.Tensor:
    """The paper's equation, written out with explicit offsets r_ij = (dx, dy, dx^2 + dy^2)."""
    B, n, C = patches.shape
    H, side = m.num_heads, int(n**0.5)
    rows, cols = torch.arange(n) // side, torch.arange(n) % side
    dx = (cols[None, :] - cols[:, None]).float()  # column offset of key j from query i
    dy = (rows[None, :] - rows[:, None]).float()
    r = torch.stack([dx, dy, dx**2 + dy**2], dim=-1)  # (n, n, 3)
    position = (r @ m.pos_proj.weight.T + m.pos_proj.bias).permute(2, 0, 1).softmax(-1)  # (H, n, n)
    q, k = m.qk(patches).reshape(B, n, 2, H, C // H).permute(2, 0, 3, 1, 4)
    content = (q @ k.transpose(-1, -2) / (C // H) ** 0.5).softmax(-1)  # (B, H, n, n)
    gate = torch.sigmoid(m.gating_param).view(1, H, 1, 1)
    attn = (1 - gate) * content + gate * position
    attn = attn / attn.sum(-1, keepdim=True)
    v = m.v(patches).reshape(B, n, H, C // H).transpose(1, 2)
    return m.proj((attn @ v).transpose(1, 2).reshape(B, n, C))


def test_gpsa_is_the_papers_formula_and_passes_cls_through():
    torch.manual_seed(0)
    m = GPSA(16, TokenLayout(grid=(3, 3), num_prefix=1), num_heads=4)
    torch.nn.init.normal_(m.gating_param)  # away from the init, so both terms matter
    torch.nn.init.normal_(m.pos_proj.weight)
    x = torch.randn(2, 10, 16)
    out = m(x)
    assert torch.equal(out[:, 0], x[:, 0])
    torch.testing.assert_close(out[:, 1:], explicit_gpsa(m, x[:, 1:]), rtol=1e-5, atol=1e-6)


def test_backbone_runs_convits_local_init_after_its_own_and_marks_the_gate():
    model = build_backbone(compose_config(["mixer=gpsa", "backbone.num_heads=4"]))
    m = model.blocks[0].mixer
    assert torch.equal(m.v.weight, torch.eye(64))  # the backbone's trunc-normal init did not overwrite it
    expected = torch.tensor([[-1.0, -1, -1], [1, -1, -1], [-1, 1, -1], [1, 1, -1]])  # 2x2 offsets, alpha 1
    torch.testing.assert_close(m.pos_proj.weight, expected[:, [1, 0, 2]])
    assert torch.equal(m.gating_param, torch.ones(4)) and m.gating_param._optim == {"weight_decay": 0.0}


def test_gpsa_refuses_a_non_square_grid():
    with pytest.raises(ConfigError, match="square patch grid.*2x4"):
        GPSA(16, TokenLayout(grid=(2, 4)), num_heads=2)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("backbone.head=gap", "needs backbone.head=cls"),
        ("backbone.pos_embed=learned", "use backbone.pos_embed=learned_patches"),
        ("backbone.cls_from_layer=4", r"in \[0, backbone.depth=4\)"),
    ],
)
def test_cls_from_layer_names_impossible_combinations(override, message):
    base = ["mixer=gpsa", "backbone.head=cls", "backbone.pos_embed=learned_patches",
            "backbone.cls_from_layer=2"]
    build_backbone(compose_config(base))
    with pytest.raises(ConfigError, match=message):
        build_backbone(compose_config([*base, override]))


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_convit_preset_is_timms_convit_parameter_for_parameter_and_logit_for_logit(size, tmp_path):
    """timm's ConViT file through the converter (its timm_convit source), not a hand-written key map."""
    torch.manual_seed(0)
    reference = timm.create_model(f"convit_{size}", pretrained=False).eval()
    torch.save(reference.state_dict(), tmp_path / f"convit_{size}.pth")
    ours = build_backbone(compose_config([f"experiment=convit_{size}"])).eval()
    assert count_parameters(ours) == count_parameters(reference)
    report = load_pretrained(ours, tmp_path / f"convit_{size}.pth")
    assert report.source == "timm_convit" and not report.ignored and not report.resampled
    assert report.loaded == list(ours.state_dict())  # every tensor, none initialised
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(ours(images), reference(images))  # max abs difference 0 in float32


def test_convit_presets_take_convits_mhsa_from_its_own_yaml_without_attentions_ssa_keys():
    for size in ("tiny", "small", "base"):
        cfg = compose_config([f"experiment=convit_{size}"])
        shipped = compose_config(["mixer=convit_mhsa"]).mixer
        assert OmegaConf.to_container(cfg.mixer) == OmegaConf.to_container(shipped)  # unresolved: the yaml
        assert cfg.mixer._target_ == "mixers.gpsa.ConViTMHSA" and not {"ssa", "seed"} & set(cfg.mixer)
    with pytest.raises(TypeError, match="ssa"):  # the option is not one of this mixer's
        ConViTMHSA(8, TokenLayout(grid=(2, 2), num_prefix=1), num_heads=2, ssa={"factor": 2})
