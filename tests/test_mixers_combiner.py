"""Combiner-Fixed (non-causal) against its formula, its CLS rule and its segment-length check."""

from __future__ import annotations

import pytest
import torch

from mixerlab.backbone import count_parameters
from mixerlab.build import build_backbone, compose_config
from mixerlab.errors import ConfigError
from mixers.combiner import Combiner
from mixers.contract import TokenLayout
from scripts.model_info import model_info

GRID = TokenLayout(grid=(3, 4), num_prefix=0)
CLS_GRID = TokenLayout(grid=(3, 4), num_prefix=1)


def naive_combiner(m: Combiner, x: torch.Tensor) -> torch.Tensor:
    """Query by query: list the keys and values it sees, then one softmax over all of them."""
    B, N, C = x.shape
    P, H, s = m.layout.num_prefix, m.num_heads, m.segment_len
    d = C // H
    q, k, v = (x @ m.qkv.weight.T).chunk(3, dim=-1)
    out = torch.zeros(B, N, C)
    for b in range(B):
        for head in range(H):
            hs = slice(head * d, (head + 1) * d)
            qh, kh, vh = q[b, :, hs] / d**0.5, k[b, :, hs], v[b, :, hs]
            segments = [list(range(P + r * s, P + (r + 1) * s)) for r in range((N - P) // s)]
            summaries = []  # (max-pooled key, attention-pooled value) per segment
            for seg in segments:
                pooled_q = qh[seg].amax(0)
                a = torch.softmax(torch.stack([pooled_q @ kh[j] for j in seg]), 0)
                summaries.append((kh[seg].amax(0), sum(a[n] * vh[j] for n, j in enumerate(seg))))
            for i in range(N):
                if i < P:  # CLS: dense attention over every token
                    keys, values = list(kh), list(vh)
                else:
                    own = (i - P) // s
                    keys = [kh[j] for j in segments[own]] + [kh[c] for c in range(P)]
                    values = [vh[j] for j in segments[own]] + [vh[c] for c in range(P)]
                    keys += [sk for r, (sk, _) in enumerate(summaries) if r != own]
                    values += [sv for r, (_, sv) in enumerate(summaries) if r != own]
                a = torch.softmax(torch.stack([qh[i] @ key for key in keys]), 0)
                out[b, i, hs] = sum(w * val for w, val in zip(a, values, strict=True))
    return out @ m.proj.weight.T


@pytest.mark.parametrize("layout", [GRID, CLS_GRID], ids=["gap", "cls"])
@pytest.mark.parametrize("segment_len", [None, 2, 12])
def test_combiner_is_one_joint_softmax_over_own_keys_and_other_summaries(layout, segment_len):
    torch.manual_seed(0)
    mixer = Combiner(8, layout, num_heads=2, segment_len=segment_len)
    assert mixer.segment_len == (segment_len or 4)  # default: one grid row
    x = torch.randn(2, layout.num_tokens, 8)
    torch.testing.assert_close(mixer(x), naive_combiner(mixer, x), atol=1e-5, rtol=1e-4)
    assert count_parameters(mixer) == 4 * 8 * 8  # no biases, as the official layer


def test_a_far_segment_counts_once_however_many_tokens_repeat_in_it():
    torch.manual_seed(0)
    mixer = Combiner(8, GRID, num_heads=1)
    x = torch.randn(1, 12, 8)
    x[:, 8:] = x[:, 8:9]  # the last row: four copies of one token, so its summary is that token exactly
    k, v = (x[0] @ mixer.qkv.weight.T).chunk(3, dim=-1)[1:]
    q = (x[0] @ mixer.qkv.weight.T)[:, :8] / 8**0.5
    keys, values = torch.cat([k[:4], k[8:9]]), torch.cat([v[:4], v[8:9]])  # own row + the far row ONCE
    keys = torch.cat([keys, k[4:8].amax(0, keepdim=True)])  # the middle row's max-pooled key
    pooled = torch.softmax(q[4:8].amax(0) @ k[4:8].T, 0) @ v[4:8]
    values = torch.cat([values, pooled[None]])
    expected = torch.softmax(q[:4] @ keys.T, -1) @ values @ mixer.proj.weight.T  # dense would count it 4x
    torch.testing.assert_close(mixer(x)[0, :4], expected, atol=1e-5, rtol=1e-4)


def test_segment_length_must_divide_the_patches_after_cls_is_split():
    with pytest.raises(ConfigError, match=r"mixer\.segment_len=3 does not divide the 16 patch tokens"):
        build_backbone(compose_config(["mixer=combiner", "mixer.segment_len=3", "backbone.head=cls"]))
    with pytest.raises(ConfigError, match=r"mixer\.num_heads=3"):
        build_backbone(compose_config(["mixer=combiner", "mixer.num_heads=3"]))
    cfg = ["mixer=combiner", "backbone=vit_tiny", "backbone.depth=1", "data.img_size=224", "data.in_chans=3"]
    model = build_backbone(compose_config(cfg))  # N = 197 (prime): CLS + 14 rows of 14
    assert model.blocks[0].mixer.layout.num_tokens == 197 and model.blocks[0].mixer.segment_len == 14
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = Combiner(8, CLS_GRID, num_heads=2)(torch.randn(2, 13, 8))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_combiner_counts_on_the_meta_device_at_224():
    info = model_info(["mixer=combiner", "backbone=vit_tiny", "data.img_size=224", "data.in_chans=3"])
    C, head_1000_to_10 = 192, -990 * 192 - 990  # DeiT-Ti with 12 x 4C^2 (no biases) for 4C^2 + 4C
    assert info["tokens"] == 197 and info["params"] == 5_717_416 + head_1000_to_10 - 12 * 4 * C
