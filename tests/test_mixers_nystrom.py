"""Nystromformer: landmarks are unequal segment means, the pseudo-inverse converges per sample in float32,
and the whole product matches a naive reference (and exact attention when every token is a landmark)."""

from __future__ import annotations

import pytest
import torch

from mixerlab.build import build_backbone, compose_config
from mixerlab.errors import ConfigError
from mixers.contract import TokenLayout
from mixers.nystrom import NystromAttention, newton_schulz_pinv, segment_means

CLS_GRID = TokenLayout(grid=(4, 4), num_prefix=1)


def test_landmarks_are_means_of_unequal_contiguous_segments_cls_in_the_first():
    x = torch.arange(17.0).reshape(1, 1, 17, 1)  # 17 tokens, 5 landmarks: segments 3, 3, 3, 4, 4
    expected = torch.tensor([1.0, 4.0, 7.0, 10.5, 14.5]).reshape(1, 1, 5, 1)
    torch.testing.assert_close(segment_means(x, 5), expected)
    torch.testing.assert_close(segment_means(x, 17), x)


def test_newton_schulz_reaches_the_pseudo_inverse_per_sample():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 6)
    logits[1] *= 4  # a batch mixing well- and ill-conditioned matrices: the init must be per matrix
    a = torch.softmax(logits, dim=-1).double()
    torch.testing.assert_close(newton_schulz_pinv(a, 30), torch.linalg.pinv(a), atol=1e-6, rtol=1e-6)
    alone = newton_schulz_pinv(a[:1], 6)
    torch.testing.assert_close(newton_schulz_pinv(a, 6)[:1], alone)  # independent of the other samples


def naive(mixer: NystromAttention, x: torch.Tensor) -> torch.Tensor:
    B, N, C = x.shape
    h, m = mixer.num_heads, mixer.num_landmarks
    q, k, v = mixer.qkv(x).reshape(B, N, 3, h, C // h).permute(2, 0, 3, 1, 4)
    sizes = [N // m] * (m - N % m) + [N // m + 1] * (N % m)
    starts = [sum(sizes[:i]) for i in range(m)]
    q_l = torch.stack([q[:, :, s : s + n].mean(2) for s, n in zip(starts, sizes, strict=True)], 2)
    k_l = torch.stack([k[:, :, s : s + n].mean(2) for s, n in zip(starts, sizes, strict=True)], 2)
    scale = (C // h) ** -0.5
    a = torch.softmax(q_l @ k_l.transpose(-2, -1) * scale, -1)
    out = torch.softmax(q @ k_l.transpose(-2, -1) * scale, -1) @ torch.linalg.pinv(a)
    out = out @ (torch.softmax(q_l @ k.transpose(-2, -1) * scale, -1) @ v)
    return mixer.proj(out.transpose(1, 2).reshape(B, N, C))


def test_forward_matches_the_naive_nystrom_formula():
    torch.manual_seed(0)
    mixer = NystromAttention(16, CLS_GRID, num_heads=2, num_landmarks=5, pinv_iterations=20).double()
    x = 0.5 * torch.randn(2, 17, 16, dtype=torch.double)
    torch.testing.assert_close(mixer(x), naive(mixer, x), atol=1e-6, rtol=1e-5)


def test_with_every_token_a_landmark_it_is_softmax_attention():
    torch.manual_seed(0)
    mixer = NystromAttention(16, CLS_GRID, num_heads=2, num_landmarks=17, pinv_iterations=30).double()
    x = 0.2 * torch.randn(2, 17, 16, dtype=torch.double)
    q, k, v = mixer.qkv(x).reshape(2, 17, 3, 2, 8).permute(2, 0, 3, 1, 4)
    exact = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 17, 16)
    torch.testing.assert_close(mixer(x), mixer.proj(exact), atol=1e-6, rtol=1e-5)


def test_conv_residual_is_one_kernel_per_head_along_the_tokens():
    mixer = NystromAttention(16, CLS_GRID, num_heads=2, conv_kernel_size=3)
    assert mixer.conv.weight.shape == (2, 1, 3, 1) and mixer.conv.bias is None  # H x k parameters
    default = build_backbone(compose_config(["mixer=nystrom"])).blocks[0].mixer
    assert default.conv is None and default.num_landmarks == 8  # the shipped yaml at 4x4 patches, no CLS


def test_pseudo_inverse_runs_in_float32_under_bf16_autocast(monkeypatch):
    import mixers.nystrom as module

    seen = []
    original = module.newton_schulz_pinv
    monkeypatch.setattr(module, "newton_schulz_pinv", lambda a, n: seen.append(a.dtype) or original(a, n))
    mixer = NystromAttention(16, CLS_GRID, num_heads=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mixer(torch.randn(2, 17, 16).bfloat16())
    assert seen == [torch.float32] and out.dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("key", "value"),
    [("mixer.num_landmarks", 18), ("mixer.num_landmarks", 0), ("mixer.pinv_iterations", 0),
     ("mixer.conv_kernel_size", 4)],
)
def test_impossible_options_fail_at_config_time_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_backbone(compose_config(["mixer=nystrom", "backbone.head=cls", f"{key}={value}"]))
