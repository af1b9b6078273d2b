"""The mixer zoo: every mixer honours the contract, and each computes its paper's formula."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from torch.utils._python_dispatch import TorchDispatchMode

from mixerlab.backbone import Block, BlockSpec
from mixerlab.build import CONF_DIR, build_backbone, compose_config
from mixerlab.costs import count_parameters
from mixerlab.errors import ConfigError
from mixers.afno import AFNO
from mixers.contract import TokenLayout, pop_aux_losses
from mixers.feedforward import FeatureAttention, TokenMLP
from mixers.fnet import FourierMixing
from mixers.metaformer import Pooling, RandomMixing
from mixers.spectral import GlobalFilter
from mixers.xca import XCA

# Every conf/mixer/*.yaml is a mixer: a new one (.py + .yaml) is covered by the contract tests below with no
# other edit. Extra cases: options that switch a mixer to another code path.
MIXERS = sorted(p.stem for p in (CONF_DIR / "mixer").glob("*.yaml"))
CASES = {m: [f"mixer={m}"] for m in MIXERS}
CASES["fibottention_sparse"] = ["mixer=fibottention", "mixer.variant=sparse"]
CLS_GRID = TokenLayout(grid=(4, 4), num_prefix=1)
GRID = TokenLayout(grid=(4, 4), num_prefix=0)
# Under bf16 autocast these ops must see float32 inputs: FFTs, exponentials (random features), inverses and
# factorisations. A mixer's own fp32 parts built from plain matmuls (Nystrom's iterative pseudo-inverse) are
# checked in its family's tests.
FP32_OPS = {"exp", "exp_", "pinverse", "linalg_pinv", "linalg_inv_ex", "linalg_solve_ex", "linalg_qr"}
FP32_OP_PREFIXES = ("_fft_",)


def test_mixers_are_discovered_from_their_yaml_files():
    assert {"attention", "spectral", "identity"} <= set(MIXERS)
    for name in MIXERS:
        target = compose_config([f"mixer={name}"]).mixer["_target_"]
        module, cls = target.rsplit(".", 1)
        assert module.startswith("mixers.") and hasattr(importlib.import_module(module), cls), name


def build(overrides: list[str], head: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_backbone(compose_config([*overrides, f"backbone.head={head}"]))


@pytest.mark.parametrize("head", ["cls", "gap"])
@pytest.mark.parametrize("case", list(CASES))
def test_every_mixer_trains_in_the_backbone_with_either_head(case, head):
    model = build(CASES[case], head)
    mixer = model.blocks[0].mixer
    tokens = torch.randn(3, model.layout.num_tokens, 64)
    assert mixer(tokens).shape == tokens.shape  # (B, N, C) -> (B, N, C)
    logits = model(torch.randn(3, 1, 16, 16))
    (logits.logsumexp(-1).sum() + (pop_aux_losses(model) or 0)).backward()
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient reaches {missing}"


class DtypeLog(TorchDispatchMode):
    """Records the ops that ran on half-precision inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.half_ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        leaves = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        if any(t.dtype in (torch.bfloat16, torch.float16) for t in leaves):
            self.half_ops.add(func._overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("case", list(CASES))
def test_every_mixer_keeps_its_float32_parts_in_float32_under_bf16_autocast(case):
    mixer = build(CASES[case], "cls").blocks[0].mixer
    x = torch.randn(2, 17, 64).bfloat16()
    for training in (True, False):
        mixer.train(training)
        with torch.autocast("cpu", dtype=torch.bfloat16), DtypeLog() as log:
            out = mixer(x)
        assert out.dtype == torch.bfloat16 and out.shape == x.shape and torch.isfinite(out.float()).all()
        in_half = sorted(op for op in log.half_ops if op in FP32_OPS or op.startswith(FP32_OP_PREFIXES))
        assert not in_half, f"{case} runs {in_half} in half precision"
    pop_aux_losses(mixer)


@pytest.mark.parametrize("case", list(CASES))
def test_every_mixers_state_survives_a_checkpoint_round_trip(case):
    model = build(CASES[case], "cls")
    images = torch.randn(4, 1, 16, 16)
    for _ in range(3):  # training forwards move any data-driven or step-driven state
        model(images)
    pop_aux_losses(model)
    fresh = build(CASES[case], "cls", seed=1)
    fresh.load_state_dict(model.state_dict())
    for training in (False, True, True):
        model.train(training)
        fresh.train(training)
        torch.manual_seed(2)
        expected = model(images)
        torch.manual_seed(2)
        torch.testing.assert_close(fresh(images), expected, rtol=0, atol=0)
    ours, theirs = model.state_dict(), fresh.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), "state after further training forwards"
    pop_aux_losses(model)
    pop_aux_losses(fresh)


@pytest.mark.parametrize("case", list(CASES))
def test_every_mixers_flops_and_parameters_are_reported(case):
    from scripts.model_info import model_info

    info = model_info(CASES[case])
    assert info["params"] == count_parameters(build(CASES[case], "gap"))
    attention = model_info(["mixer=identity"])
    assert info["flops"] >= attention["flops"] > 0  # the mixer's cost comes on top of the identity model's
    assert info["tokens"] == 16


@pytest.mark.parametrize(
    ("mixer", "key", "value"),
    [
        ("feedforward", "mixer.num_tokens", 17),
        ("random", "mixer.num_tokens", 17),
        ("spectral", "mixer.filter_size", "[4,4]"),
    ],
)
def test_fixed_token_mixers_reject_another_resolution_at_config_time(mixer, key, value):
    head = ["backbone.head=cls"] if key.endswith("num_tokens") else []  # 16 px: 4x4 patches + CLS = 17
    build_backbone(compose_config([f"mixer={mixer}", f"{key}={value}", *head]))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_backbone(compose_config([f"mixer={mixer}", f"{key}={value}", "data.img_size=32", *head]))


@pytest.mark.parametrize("mixer", ["attention", "xca", "fibottention"])
def test_multi_head_mixers_name_a_head_count_that_does_not_divide_the_width(mixer):
    with pytest.raises(ConfigError, match=r"embed_dim=64 is not divisible by mixer.num_heads=3: choose"):
        build_backbone(compose_config([f"mixer={mixer}", "mixer.num_heads=3"]))
    with pytest.raises(ConfigError, match=r"by backbone.num_heads=3: choose"):
        build_backbone(compose_config(["backbone.num_heads=3"]))


def test_block_without_mixer_norm_feeds_the_raw_stream_to_a_self_normalising_mixer():
    mixer = TokenMLP(8, CLS_GRID)
    block = Block(8, mixer, BlockSpec(order="mlp_first", mixer_norm=False))
    assert isinstance(block.norm1, torch.nn.Identity)
    assert mixer.norm.normalized_shape == (17,)  # LayerNorm over the tokens, CLS included
    x = torch.randn(2, 17, 8)
    expected = block._mlp(x)
    expected = expected + mixer(expected)  # the feature MLP runs first, then the token MLP
    torch.testing.assert_close(block(x), expected)


def test_token_mlp_is_shared_across_channels_and_mixes_tokens():
    torch.manual_seed(0)
    mixer = TokenMLP(6, CLS_GRID).eval()
    x = torch.randn(2, 17, 6)
    perm = torch.randperm(6)
    torch.testing.assert_close(mixer(x[..., perm]), mixer(x)[..., perm])
    y = x.clone()
    y[:, 3] += 1.0
    assert not torch.allclose(mixer(y)[:, 7], mixer(x)[:, 7])


def test_feature_attention_attends_over_channels():
    torch.manual_seed(0)
    mixer = FeatureAttention(6, CLS_GRID)
    x = torch.randn(2, 17, 6)
    perm = torch.randperm(6)  # channels are the sequence: permuting them permutes the output
    torch.testing.assert_close(mixer(x[..., perm]), mixer(x)[..., perm], atol=1e-5, rtol=1e-5)
    assert mixer.qkv.in_features == 17


def test_global_filter_is_the_gfnet_formula_and_leaves_cls_out():
    torch.manual_seed(0)
    mixer = GlobalFilter(8, CLS_GRID)
    assert mixer.complex_weight.shape == (4, 3, 8, 2)
    x = torch.randn(2, 17, 8)
    grid = x[:, 1:].reshape(2, 4, 4, 8)
    spectrum = torch.fft.rfft2(grid, dim=(1, 2), norm="ortho") * torch.view_as_complex(mixer.complex_weight)
    expected = torch.fft.irfft2(spectrum, s=(4, 4), dim=(1, 2), norm="ortho").reshape(2, 16, 8)
    out = mixer(x)
    torch.testing.assert_close(out[:, 1:], expected)
    torch.testing.assert_close(out[:, :1], x[:, :1])


def test_fft_mixers_run_in_float32_under_bf16_autocast():
    x = torch.randn(2, 16, 16)
    for mixer in (GlobalFilter(16, GRID), AFNO(16, GRID, num_blocks=4), FourierMixing(16, GRID)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = mixer(x.bfloat16())
        assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_pooling_is_avgpool_minus_input_and_gives_cls_no_update():
    mixer = Pooling(8, CLS_GRID)
    x = torch.randn(2, 17, 8)
    grid = x[:, 1:].transpose(1, 2).reshape(2, 8, 4, 4)
    pooled = F.avg_pool2d(grid, 3, 1, 1, count_include_pad=False) - grid
    out = mixer(x)
    torch.testing.assert_close(out[:, 1:], pooled.flatten(2).transpose(1, 2))
    assert (out[:, 0] == 0).all()


def test_random_mixing_is_a_frozen_row_stochastic_matrix():
    mixer = RandomMixing(8, CLS_GRID)
    assert list(mixer.parameters()) == [] and "random_matrix" in mixer.state_dict()
    torch.testing.assert_close(mixer.random_matrix.sum(-1), torch.ones(17))
    x = torch.randn(2, 17, 8)
    torch.testing.assert_close(mixer(x), mixer.random_matrix @ x)


def test_fnet_is_the_real_part_of_a_2d_fft():
    x = torch.randn(2, 17, 8)
    torch.testing.assert_close(FourierMixing(8, CLS_GRID)(x), torch.fft.fft2(x).real, atol=1e-5, rtol=1e-5)


def test_afno_adds_its_input_back_and_splits_channels_into_blocks():
    mixer = AFNO(16, CLS_GRID, num_blocks=8)
    assert mixer.w1.shape == (2, 8, 2, 2) and mixer.b2.shape == (2, 8, 2)
    for p in mixer.parameters():
        torch.nn.init.zeros_(p)
    x = torch.randn(2, 17, 16)
    torch.testing.assert_close(mixer(x), x)  # zero spectral MLP: only the "+ x" remains
    with pytest.raises(ConfigError, match="mixer.num_blocks"):
        AFNO(12, GRID, num_blocks=8)


def test_xca_attention_is_channel_by_channel_and_token_permutation_equivariant():
    torch.manual_seed(0)
    mixer = XCA(8, CLS_GRID, num_heads=2)
    x = torch.randn(2, 17, 8)
    perm = torch.randperm(17)
    torch.testing.assert_close(mixer(x[:, perm]), mixer(x)[:, perm], atol=1e-5, rtol=1e-5)


def test_xca_temperature_is_kept_out_of_weight_decay():
    model = build_backbone(compose_config(["mixer=xca"]))
    assert "blocks.0.mixer.temperature" in model.no_weight_decay()
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05)
    temperature = model.blocks[0].mixer.temperature
    group = next(g for g in optimizer.param_groups if any(p is temperature for p in g["params"]))
    assert group["weight_decay"] == 0.0


@pytest.mark.parametrize(
    ("mixer", "ffts"), [("spectral", {"_fft_r2c", "_fft_c2r"}), ("fnet", {"_fft_c2c"}),
                        ("afno", {"_fft_r2c", "_fft_c2r"})]
)
def test_fft_mixers_count_their_transforms_and_model_info_names_the_formulas(mixer, ffts):
    from mixerlab.costs import REGISTERED, flop_breakdown
    from scripts.model_info import model_info

    model = build_backbone(compose_config([f"mixer={mixer}"])).eval()
    _, per_op = flop_breakdown(model, torch.zeros(1, 1, 16, 16))
    assert all(per_op.get(op, 0) > 0 for op in ffts), per_op  # counted on any torch
    info = model_info([f"mixer={mixer}"])
    ours = ffts & set(REGISTERED)  # counted by mixerlab.costs formulas, named in the note
    assert set(info.get("flops_by_formula", {})) == ours
    assert all(op in info["flops_note"] for op in ours)
